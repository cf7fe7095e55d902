//! A saga's [`Diagram`] drawn as SVG on the server, with an instance's path highlighted.
//!
//! A saga is a chain of steps with compensations, so the layout is fixed rather than
//! searched for: steps go down the left column from the start to `Completed`, each step's
//! compensation sits beside it in the right column, and compensation runs up that column to
//! `Compensated` at its top. Forward edges are then vertical, failures cross the gap between
//! the columns, and no edge passes through a node. Drawing it here (rather than shipping
//! Mermaid's script to the browser) keeps the console one small script with nothing fetched,
//! and every label goes through maud's escaping like the rest of the page.
//!
//! Every SVG element is written with a body, even an empty one (`<rect …></rect>`): inside an
//! HTML page there are no self-closing SVG tags, and a `<rect …>` left open would swallow the
//! text after it.

use maud::{Markup, html};

use crate::saga::diagram::{Diagram, InstancePath, Node, Shape};

const ROW: f64 = 96.0;
const NODE_H: f64 = 52.0;
/// Room to the left of the steps.
const LEFT: f64 = 24.0;
/// Between the columns, where failure edges and their labels go.
const GAP: f64 = 200.0;
/// Right of the compensations, for the labels of their vertical edges.
const RIGHT: f64 = 120.0;
const TOP: f64 = 16.0;
/// An estimate of a character's width at the nodes' font size (no text measuring on a server).
const CHAR_W: f64 = 7.4;

struct Placed<'a> {
    node: &'a Node,
    x: f64,
    y: f64,
    w: f64,
}

/// Which column and row a node goes in, by its id (see [`Diagram`]'s module docs).
fn slot(id: &str, steps: u32) -> (bool, u32) {
    let index = |rest: &str| rest.parse::<u32>().map_or(0, |i| i + 1);
    match id {
        Diagram::START => (false, 0),
        Diagram::COMPENSATED => (true, 0),
        Diagram::COMPLETED => (false, steps + 1),
        _ if id.starts_with('c') => (true, index(&id[1..])),
        _ => (false, index(id.get(1..).unwrap_or(""))),
    }
}

fn width(node: &Node) -> f64 {
    let chars = node.label.chars().count().max(node.detail.as_deref().map_or(0, |d| d.chars().count()));
    (chars as f64 * CHAR_W + 28.0).max(150.0)
}

/// The diagram as an `<svg>` element; nodes carry `data-node` (their id) and the class
/// `visited`, `current` or `failed` from `path`, taken edges the class `taken`.
pub(super) fn render(diagram: &Diagram, path: Option<&InstancePath>) -> Markup {
    let steps = diagram.nodes.iter().filter(|n| !matches!(n.shape, Shape::Terminal | Shape::Compensation)).count();
    let steps = u32::try_from(steps).unwrap_or(u32::MAX);
    let column_width =
        |right: bool| diagram.nodes.iter().filter(|n| slot(&n.id, steps).0 == right).map(width).fold(150.0, f64::max);
    let (left_w, right_w) = (column_width(false), column_width(true));
    let placed: Vec<Placed> = diagram
        .nodes
        .iter()
        .map(|node| {
            let (right, row) = slot(&node.id, steps);
            let x = if right { LEFT + left_w + GAP + right_w / 2.0 } else { LEFT + left_w / 2.0 };
            Placed { node, x, y: TOP + f64::from(row) * ROW + NODE_H / 2.0, w: if right { right_w } else { left_w } }
        })
        .collect();
    let at = |id: &str| placed.iter().find(|p| p.node.id == id);
    let width = LEFT + left_w + GAP + right_w + RIGHT;
    let height = TOP * 2.0 + f64::from(steps + 1) * ROW + NODE_H;

    // Edges between the same two nodes are drawn once, their labels joined.
    let mut lines: Vec<(&str, &str, Vec<&str>, bool, bool)> = Vec::new();
    for (i, edge) in diagram.edges.iter().enumerate() {
        let taken = path.is_some_and(|p| p.taken.contains(&i));
        let label = edge.label.as_deref();
        match lines.iter_mut().find(|l| l.0 == edge.from && l.1 == edge.to) {
            Some(line) => {
                line.2.extend(label);
                line.3 &= edge.failure;
                line.4 |= taken;
            }
            None => lines.push((&edge.from, &edge.to, label.into_iter().collect(), edge.failure, taken)),
        }
    }
    let state = |id: &str| match path {
        Some(p) if p.failed.as_deref() == Some(id) => "node failed",
        Some(p) if p.current.as_deref() == Some(id) => "node current",
        Some(p) if p.visited.iter().any(|v| v == id) => "node visited",
        _ => "node",
    };

    html! {
        svg.diagram xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {width:.0} {height:.0}"))
            width=(format!("{width:.0}")) height=(format!("{height:.0}")) role="img"
            aria-label="the saga's flowchart, with the path this instance took" {
            defs {
                @for (id, class) in [("arrow", "arrowhead"), ("arrow-taken", "arrowhead taken")] {
                    marker id=(id) viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse" {
                        path class=(class) d="M 0 0 L 10 5 L 0 10 z" {}
                    }
                }
            }
            @for (from, to, labels, failure, taken) in &lines {
                @if let (Some(a), Some(b)) = (at(from), at(to)) {
                    (edge(a, b, &labels.join(" / "), *failure, *taken))
                }
            }
            @for p in &placed {
                g class=(state(&p.node.id)) data-node=(p.node.id) {
                    title { (p.node.label) @if let Some(d) = &p.node.detail { " — " (d) } }
                    (shape(p))
                    @match &p.node.detail {
                        Some(detail) => {
                            text x=(format!("{:.1}", p.x)) y=(format!("{:.1}", p.y - 4.0)) { (p.node.label) }
                            text.detail x=(format!("{:.1}", p.x)) y=(format!("{:.1}", p.y + 14.0)) { (detail) }
                        }
                        None => text x=(format!("{:.1}", p.x)) y=(format!("{:.1}", p.y + 5.0)) { (p.node.label) },
                    }
                }
            }
        }
    }
}

fn shape(p: &Placed) -> Markup {
    let (x, y, w, h) = (p.x, p.y, p.w, NODE_H);
    let (l, r, t, b) = (x - w / 2.0, x + w / 2.0, y - h / 2.0, y + h / 2.0);
    let points = |pts: &[(f64, f64)]| pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect::<Vec<_>>().join(" ");
    let rect = |rx: f64| {
        html! { rect x=(format!("{l:.1}")) y=(format!("{t:.1}")) width=(format!("{w:.1}")) height=(format!("{h:.1}")) rx=(format!("{rx:.1}")) {} }
    };
    match p.node.shape {
        Shape::Terminal => rect(h / 2.0),
        Shape::Step | Shape::Compensation => rect(6.0),
        Shape::Pivot => {
            html! { polygon points=(points(&[(l, y), (l + 16.0, t), (r - 16.0, t), (r, y), (r - 16.0, b), (l + 16.0, b)])) {} }
        }
        Shape::Retriable => html! { polygon points=(points(&[(l + 14.0, t), (r, t), (r - 14.0, b), (l, b)])) {} },
    }
}

fn edge(a: &Placed, b: &Placed, label: &str, failure: bool, taken: bool) -> Markup {
    let class = match (failure, taken) {
        (true, true) => "edge failure taken",
        (true, false) => "edge failure",
        (false, true) => "edge taken",
        (false, false) => "edge",
    };
    let marker = if taken { "url(#arrow-taken)" } else { "url(#arrow)" };
    let (d, lx, ly, anchor) = if a.node.id == b.node.id {
        // A retriable step's retry: a loop on its right side, where no failure edge leaves
        // (a retriable step is never compensated).
        let r = a.x + a.w / 2.0;
        let d = format!(
            "M {r:.1} {:.1} C {:.1} {:.1}, {:.1} {:.1}, {r:.1} {:.1}",
            a.y - 12.0,
            r + 48.0,
            a.y - 34.0,
            r + 48.0,
            a.y + 34.0,
            a.y + 12.0
        );
        (d, r + 44.0, a.y + 4.0, "start")
    } else if (a.x - b.x).abs() < 1.0 {
        // Down the left column or up the right one: from one node's edge to the other's.
        let dir = (b.y - a.y).signum();
        let (y1, y2) = (a.y + dir * NODE_H / 2.0, b.y - dir * NODE_H / 2.0);
        (format!("M {:.1} {y1:.1} L {:.1} {y2:.1}", a.x, b.x), a.x + 8.0, (y1 + y2) / 2.0 + 4.0, "start")
    } else {
        // Across the gap, side to side; the label near the start so that labels of edges
        // leaving different rows do not meet.
        let dir = (b.x - a.x).signum();
        let (x1, x2) = (a.x + dir * a.w / 2.0, b.x - dir * b.w / 2.0);
        let (lx, ly) = (x1 + (x2 - x1) * 0.3, a.y + (b.y - a.y) * 0.3 - 4.0);
        (format!("M {x1:.1} {:.1} L {x2:.1} {:.1}", a.y, b.y), lx, ly, "middle")
    };
    html! {
        g class=(class) data-from=(a.node.id) data-to=(b.node.id) {
            path d=(d) marker-end=(marker) {}
            @if !label.is_empty() {
                text.label x=(format!("{lx:.1}")) y=(format!("{ly:.1}")) text-anchor=(anchor) { (label) }
            }
        }
    }
}
