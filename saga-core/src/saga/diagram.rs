//! A saga definition as a flowchart: steps, replies, compensations and the pivot.
//!
//! [`Diagram`] is the graph; [`Diagram::mermaid`] writes it as Mermaid text (what
//! `SagaDefinition::mermaid` prints), and the admin console draws it as SVG with the path an
//! instance took. Both come from this one graph so that they never disagree.
//!
//! Node ids are fixed by position, so that an instance's history (which names steps by index)
//! maps onto the graph: `start`, `completed`, `compensated`, `s{i}` for step `i` and `c{i}` for
//! its compensation.

use std::fmt::Write as _;

use serde::Serialize;

use super::step::{Action, StepKind};
use super::{Saga, SagaDefinition};

/// A saga's flowchart: nodes in drawing order, edges in the order Mermaid numbers them.
///
/// ```
/// # use saga_core::saga::{Saga, SagaDefinition, Step};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Go; impl saga_core::message::Message for Go { const NAME: &'static str = "go"; fn correlation_key(&self) -> Option<String> { Some("k".into()) } }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct S;
/// # impl Saga for S { const NAME: &'static str = "s"; fn definition() -> SagaDefinition<Self> {
/// #     SagaDefinition::new().start_with(|_: &Go| S).step(Step::local("work", |s: S, _| async move { Ok(s) })) } }
/// use saga_core::saga::diagram::Diagram;
/// let diagram = S::definition().diagram();
/// assert!(diagram.nodes.iter().any(|n| n.id == Diagram::step(0) && n.label == "work"));
/// assert!(diagram.edges.iter().any(|e| e.from == "start" && e.to == Diagram::step(0)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Diagram {
    /// The nodes: the start, the two ends, then each step followed by its compensation.
    pub nodes: Vec<Node>,
    /// The edges; an edge's index is its number in Mermaid's `linkStyle`.
    pub edges: Vec<Edge>,
}

/// A node of a [`Diagram`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Node {
    /// Its id (see the [module docs](self)).
    pub id: String,
    /// What it is: the step's name, or the saga and its start messages.
    pub label: String,
    /// A second line: what the step does (`sends order.charge`, `local`).
    pub detail: Option<String>,
    /// How it is drawn.
    pub shape: Shape,
}

/// How a [`Node`] is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Shape {
    /// The start and the two ends (a stadium).
    Terminal,
    /// A compensatable step (a rectangle).
    Step,
    /// The pivot (a hexagon).
    Pivot,
    /// A retriable step (a parallelogram).
    Retriable,
    /// A step's compensation (a rectangle).
    Compensation,
}

/// An edge of a [`Diagram`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Edge {
    /// The node it leaves.
    pub from: String,
    /// The node it enters.
    pub to: String,
    /// What takes it: a reply's name, `done`, `timeout`, `… : retry`.
    pub label: Option<String>,
    /// Whether it is a failure (drawn dotted) rather than the way forward.
    pub failure: bool,
}

impl Diagram {
    /// The start node's id.
    pub const START: &'static str = "start";
    /// The id of the node an instance ends at when every step succeeded.
    pub const COMPLETED: &'static str = "completed";
    /// The id of the node an instance ends at when it was compensated.
    pub const COMPENSATED: &'static str = "compensated";

    /// The id of step `i`'s node.
    pub fn step(i: u32) -> String {
        format!("s{i}")
    }

    /// The id of step `i`'s compensation's node.
    pub fn compensation(i: u32) -> String {
        format!("c{i}")
    }

    /// The node with id `id`.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The index of the first edge from `from` to `to`.
    pub fn edge(&self, from: &str, to: &str) -> Option<usize> {
        self.edges.iter().position(|e| e.from == from && e.to == to)
    }

    /// The flowchart as Mermaid text: solid arrows go forward on success replies, dotted
    /// arrows follow failures into the compensations, the pivot is a hexagon and retriable
    /// steps loop on themselves.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        for node in &self.nodes {
            let text = match &node.detail {
                Some(detail) => format!("{}<br/>{detail}", node.label),
                None => node.label.clone(),
            };
            let id = &node.id;
            let _ = match node.shape {
                Shape::Terminal => writeln!(out, "    {id}([\"{text}\"])"),
                Shape::Step | Shape::Compensation => writeln!(out, "    {id}[\"{text}\"]"),
                Shape::Pivot => writeln!(out, "    {id}{{{{\"{text}\"}}}}"),
                Shape::Retriable => writeln!(out, "    {id}[/\"{text}\"/]"),
            };
        }
        for edge in &self.edges {
            let arrow = if edge.failure { "-.->" } else { "-->" };
            let _ = match &edge.label {
                Some(label) => writeln!(out, "    {} {arrow}|\"{label}\"| {}", edge.from, edge.to),
                None => writeln!(out, "    {} {arrow} {}", edge.from, edge.to),
            };
        }
        out
    }
}

impl<S: Saga> SagaDefinition<S> {
    /// The saga as a [`Diagram`]: the graph behind [`mermaid`](Self::mermaid) and the admin
    /// console's drawing.
    pub fn diagram(&self) -> Diagram {
        let mut nodes = Vec::new();
        let terminal = |id: &str, label: String| Node { id: id.into(), label, detail: None, shape: Shape::Terminal };
        let starts: Vec<&str> = self.starts.iter().map(|s| s.name).collect();
        nodes.push(terminal(Diagram::START, format!("{}: {}", S::NAME, starts.join(" | "))));
        nodes.push(terminal(Diagram::COMPLETED, "Completed".into()));
        nodes.push(terminal(Diagram::COMPENSATED, "Compensated".into()));
        for (i, step) in (0u32..).zip(&self.steps) {
            let (label, shape) = match step.kind {
                StepKind::Compensatable => (step.name.clone(), Shape::Step),
                StepKind::Pivot => (format!("{} (pivot)", step.name), Shape::Pivot),
                StepKind::Retriable => (format!("{} (retriable)", step.name), Shape::Retriable),
            };
            nodes.push(Node { id: Diagram::step(i), label, detail: Some(describe(&step.action)), shape });
            if let Some(c) = &step.compensation {
                nodes.push(Node {
                    id: Diagram::compensation(i),
                    label: format!("undo {}", step.name),
                    detail: Some(describe(c)),
                    shape: Shape::Compensation,
                });
            }
        }

        let steps = u32::try_from(self.steps.len()).unwrap_or(u32::MAX);
        let next = |i: u32| if i < steps { Diagram::step(i) } else { Diagram::COMPLETED.to_owned() };
        // Where compensation goes from step `from` downwards.
        let undo_from = |from: Option<u32>| {
            from.and_then(|f| (0..=f).rev().find(|j| self.steps[*j as usize].compensation.is_some()))
                .map_or_else(|| Diagram::COMPENSATED.to_owned(), Diagram::compensation)
        };
        let mut edges = Vec::new();
        let mut edge = |from: String, to: String, label: Option<String>, failure: bool| {
            edges.push(Edge { from, to, label, failure });
        };
        edge(Diagram::START.into(), next(0), None, false);
        for (i, step) in (0u32..).zip(&self.steps) {
            let (ok, failed) = step.action.replies();
            edge(Diagram::step(i), next(i + 1), Some(ok.unwrap_or("done").into()), false);
            let failure = failed.unwrap_or("error");
            match step.kind {
                StepKind::Retriable => {
                    edge(Diagram::step(i), Diagram::step(i), Some(format!("{failure}: retry")), true)
                }
                _ => {
                    edge(Diagram::step(i), undo_from(i.checked_sub(1)), Some(failure.into()), true);
                    if step.timeout.is_some() {
                        let target = if step.compensation.is_some() { Some(i) } else { i.checked_sub(1) };
                        edge(Diagram::step(i), undo_from(target), Some("timeout".into()), true);
                    }
                }
            }
            if let Some(c) = &step.compensation {
                let done = c.replies().0.unwrap_or("done");
                edge(Diagram::compensation(i), undo_from(i.checked_sub(1)), Some(done.into()), false);
            }
        }
        Diagram { nodes, edges }
    }

    /// The saga as a Mermaid flowchart (see [`Diagram::mermaid`]).
    ///
    /// ```
    /// # use saga_core::saga::{Saga, SagaDefinition, Step};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Go; impl saga_core::message::Message for Go { const NAME: &'static str = "go"; fn correlation_key(&self) -> Option<String> { Some("k".into()) } }
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct S;
    /// # impl Saga for S { const NAME: &'static str = "s"; fn definition() -> SagaDefinition<Self> {
    /// #     SagaDefinition::new().start_with(|_: &Go| S).step(Step::local("work", |s: S, _| async move { Ok(s) })) } }
    /// let chart = S::definition().mermaid();
    /// assert!(chart.starts_with("flowchart TD"));
    /// assert!(chart.contains("work"));
    /// ```
    pub fn mermaid(&self) -> String {
        self.diagram().mermaid()
    }
}

fn describe<S>(action: &Action<S>) -> String {
    match action.command() {
        Some(command) => format!("sends {command}"),
        None => "local".to_owned(),
    }
}

/// The way one instance went through its saga's [`Diagram`], read from its history and where
/// it stands: what the admin console highlights.
///
/// ```
/// use saga_core::saga::diagram::{Diagram, InstancePath};
/// use saga_core::store::{HistoryEvent, SagaStatus};
/// # use saga_core::saga::{Saga, SagaDefinition, Step};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Go; impl saga_core::message::Message for Go { const NAME: &'static str = "go"; fn correlation_key(&self) -> Option<String> { Some("k".into()) } }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct S;
/// # impl Saga for S { const NAME: &'static str = "s"; fn definition() -> SagaDefinition<Self> {
/// #     SagaDefinition::new().start_with(|_: &Go| S).step(Step::local("work", |s: S, _| async move { Ok(s) })) } }
/// let diagram = S::definition().diagram();
/// let events = [HistoryEvent::Started, HistoryEvent::StepStarted { step: 0, name: "work".into(), attempt: 1 }];
/// let path = InstancePath::trace(&diagram, events.iter(), &SagaStatus::Running { step: 0 }, None);
/// assert_eq!(path.visited, ["start", "s0"]);
/// assert_eq!(path.current.as_deref(), Some("s0"));
/// assert!(diagram.mermaid_with(&path).contains("class s0 current"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InstancePath {
    /// The nodes it reached, each once, in the order it first reached them.
    pub visited: Vec<String>,
    /// The edges it took (indexes into [`Diagram::edges`]), each once.
    pub taken: Vec<usize>,
    /// Where it is now, if it is running or compensating.
    pub current: Option<String>,
    /// Where it stopped, if it is `Failed` at a step or a compensation.
    pub failed: Option<String>,
    /// Whether only the start of a longer history was read (later nodes may be missing from
    /// `visited`; `current` and `failed` come from the instance itself and are exact).
    pub partial: bool,
}

impl InstancePath {
    /// Traces `events` (an instance's history events, oldest first) through `diagram`, and marks
    /// where the instance stands by its `status` and, for a failed one, what it `awaits`.
    pub fn trace<'a>(
        diagram: &Diagram,
        events: impl IntoIterator<Item = &'a crate::store::HistoryEvent>,
        status: &crate::store::SagaStatus,
        awaiting: Option<&crate::store::Awaiting>,
    ) -> Self {
        use crate::store::{HistoryEvent as E, Phase, SagaStatus as S, StatusKind};
        let mut path = InstancePath::default();
        let mut last: Option<String> = None;
        // An operator's abort goes from a step into compensation by no edge of the chart.
        let mut aborted = false;
        for event in events {
            let (node, retried) = match event {
                E::Operator { action, .. } => {
                    aborted = action == "abort";
                    continue;
                }
                E::Started => (Diagram::START.to_owned(), false),
                E::StepStarted { step, attempt, .. } => (Diagram::step(*step), *attempt > 1),
                E::CompensationStarted { step, .. } => (Diagram::compensation(*step), false),
                E::StatusChanged { to } if to.kind() == StatusKind::Completed => (Diagram::COMPLETED.to_owned(), false),
                E::StatusChanged { to } if to.kind() == StatusKind::Compensated => {
                    (Diagram::COMPENSATED.to_owned(), false)
                }
                _ => continue,
            };
            let from = if aborted { None } else { last.as_deref() };
            path.reach(diagram, from, &node, retried);
            aborted = false;
            last = Some(node);
        }
        let here = match (status, awaiting) {
            (S::Running { step }, _) => Some((Diagram::step(*step), false)),
            (S::Compensating { step }, _) => Some((Diagram::compensation(*step), false)),
            (S::Failed { .. }, Some(a)) => match a.phase {
                Phase::Action => Some((Diagram::step(a.step), true)),
                Phase::Compensation => Some((Diagram::compensation(a.step), true)),
            },
            _ => None,
        };
        if let Some((node, failed)) = here.filter(|(node, _)| diagram.node(node).is_some()) {
            if !path.visited.contains(&node) {
                path.reach(diagram, last.as_deref(), &node, false);
            }
            if failed { path.failed = Some(node) } else { path.current = Some(node) }
        }
        path
    }

    fn reach(&mut self, diagram: &Diagram, from: Option<&str>, to: &str, retried: bool) {
        if diagram.node(to).is_none() {
            return;
        }
        if let Some(edge) = from.filter(|f| *f != to || retried).and_then(|from| diagram.edge(from, to)) {
            if !self.taken.contains(&edge) {
                self.taken.push(edge);
            }
        }
        if !self.visited.iter().any(|v| v == to) {
            self.visited.push(to.to_owned());
        }
    }
}

impl Diagram {
    /// [`mermaid`](Self::mermaid) with `path` highlighted: visited nodes and taken edges in
    /// blue, the current node in amber, a failed one in red.
    pub fn mermaid_with(&self, path: &InstancePath) -> String {
        let mut out = self.mermaid();
        out.push_str("    classDef visited fill:#dbeafe,stroke:#1d4ed8\n");
        out.push_str("    classDef current fill:#fef3c7,stroke:#b45309,stroke-width:3px\n");
        out.push_str("    classDef failed fill:#fee2e2,stroke:#b91c1c,stroke-width:3px\n");
        let plain: Vec<&str> = path
            .visited
            .iter()
            .map(String::as_str)
            .filter(|v| Some(*v) != path.current.as_deref() && Some(*v) != path.failed.as_deref())
            .collect();
        if !plain.is_empty() {
            let _ = writeln!(out, "    class {} visited", plain.join(","));
        }
        if let Some(current) = &path.current {
            let _ = writeln!(out, "    class {current} current");
        }
        if let Some(failed) = &path.failed {
            let _ = writeln!(out, "    class {failed} failed");
        }
        if !path.taken.is_empty() {
            let taken: Vec<String> = path.taken.iter().map(usize::to_string).collect();
            let _ = writeln!(out, "    linkStyle {} stroke:#1d4ed8,stroke-width:3px", taken.join(","));
        }
        out
    }
}
