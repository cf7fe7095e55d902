//! A Mermaid flowchart of a saga definition: steps, replies, compensations and the pivot.

use std::fmt::Write as _;

use super::step::{Action, StepKind};
use super::{Saga, SagaDefinition};

impl<S: Saga> SagaDefinition<S> {
    /// The saga as a Mermaid flowchart: solid arrows go forward on success replies, dotted
    /// arrows follow failures into the compensations (in reverse step order), the pivot is a
    /// hexagon and retriable steps loop on themselves.
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
        let mut out = String::from("flowchart TD\n");
        let starts: Vec<&str> = self.starts.iter().map(|s| s.name).collect();
        let _ = writeln!(out, "    start([\"{}: {}\"])", S::NAME, starts.join(" | "));
        let _ = writeln!(out, "    completed([\"Completed\"])");
        let _ = writeln!(out, "    compensated([\"Compensated\"])");
        for (i, step) in self.steps.iter().enumerate() {
            let what = describe(&step.action);
            let _ = match step.kind {
                StepKind::Compensatable => writeln!(out, "    s{i}[\"{}<br/>{what}\"]", step.name),
                StepKind::Pivot => writeln!(out, "    s{i}{{{{\"{} (pivot)<br/>{what}\"}}}}", step.name),
                StepKind::Retriable => writeln!(out, "    s{i}[/\"{} (retriable)<br/>{what}\"/]", step.name),
            };
            if let Some(c) = &step.compensation {
                let _ = writeln!(out, "    c{i}[\"undo {}<br/>{}\"]", step.name, describe(c));
            }
        }
        let node = |i: usize| {
            if i < self.steps.len() { format!("s{i}") } else { "completed".to_owned() }
        };
        // Where compensation goes from step `from` downwards.
        let undo_from = |from: Option<usize>| {
            from.and_then(|f| (0..=f).rev().find(|j| self.steps[*j].compensation.is_some()))
                .map_or_else(|| "compensated".to_owned(), |j| format!("c{j}"))
        };
        let _ = writeln!(out, "    start --> s0");
        for (i, step) in self.steps.iter().enumerate() {
            let (ok, failed) = step.action.replies();
            let _ = writeln!(out, "    s{i} -->|\"{}\"| {}", ok.unwrap_or("done"), node(i + 1));
            let failure = failed.unwrap_or("error");
            match step.kind {
                StepKind::Retriable => {
                    let _ = writeln!(out, "    s{i} -.->|\"{failure}: retry\"| s{i}");
                }
                _ => {
                    let _ = writeln!(out, "    s{i} -.->|\"{failure}\"| {}", undo_from(i.checked_sub(1)));
                    if step.timeout.is_some() {
                        let target = if step.compensation.is_some() { Some(i) } else { i.checked_sub(1) };
                        let _ = writeln!(out, "    s{i} -.->|\"timeout\"| {}", undo_from(target));
                    }
                }
            }
            if let Some(c) = &step.compensation {
                let done = c.replies().0.unwrap_or("done");
                let _ = writeln!(out, "    c{i} -->|\"{done}\"| {}", undo_from(i.checked_sub(1)));
            }
        }
        out
    }
}

fn describe<S>(action: &Action<S>) -> String {
    match action.command() {
        Some(command) => format!("sends {command}"),
        None => "local".to_owned(),
    }
}
