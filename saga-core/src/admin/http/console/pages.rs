//! The console's pages as maud markup: every string from an instance, a message or the query
//! goes through maud's escaping, so a state holding `<script>` shows as text.

use std::time::{Duration, UNIX_EPOCH};

use maud::{DOCTYPE, Markup, html};

use super::svg;
use crate::admin::{
    DeadLetterDetail, DeadMessage, FilterText, InstanceDetail, InstancePage, InstanceSummary, MessageSummary,
    Operation, ParkedMessage,
};
use crate::message::Timestamp;
use crate::saga::diagram::Diagram;
use crate::store::{InstanceCount, InstanceCursor, Phase, StatusKind};

/// Where the console's routes are mounted, so that links work when the endpoint is nested.
pub(super) struct Root<'a>(pub &'a str);

impl Root<'_> {
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    fn instance(&self, id: impl std::fmt::Display) -> String {
        self.at(&format!("/console/instances/{id}"))
    }

    fn dead_letter(&self, subscription: &str, message_id: impl std::fmt::Display) -> String {
        self.at(&format!("/console/dead-letters/{}/{message_id}", encode_segment(subscription)))
    }
}

fn time(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t.0)).to_string()
}

fn status(kind: StatusKind) -> Markup {
    html! { span class=(format!("status {kind}")) { (kind) } }
}

/// The frame every page shares: navigation, the operator's token and name (kept in the
/// browser's session storage, sent only with an action), and where an action's answer shows.
pub(super) fn page(root: &Root, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sagaflow" }
                link rel="stylesheet" href=(root.at("/console/assets/console.css"));
                script src=(root.at("/console/assets/console.js")) defer {}
            }
            body data-root=(root.0) {
                header {
                    a.brand href=(root.at("/console")) { "sagaflow" }
                    nav {
                        a href=(root.at("/console")) { "Instances" }
                        a href=(root.at("/console/dead-letters")) { "Dead letters" }
                        a href=(root.at("/console/parked")) { "Parked messages" }
                    }
                    // Not a form: nothing here is ever submitted, so the token cannot end up in a URL.
                    div.operator {
                        label { "Name " input #operator size="10" placeholder="you" autocomplete="off"; }
                        label { "Token " input #token type="password" size="14" placeholder="for actions" autocomplete="off"; }
                    }
                }
                main {
                    p #flash hidden {}
                    (body)
                }
            }
        }
    }
}

/// A button the script turns into a confirmed `POST` with the token.
fn action(post: String, label: &str, confirm: String, class: &str) -> Markup {
    html! {
        button type="button" class=(class) data-post=(post) data-confirm=(confirm) { (label) }
    }
}

pub(super) fn error(message: &str) -> Markup {
    html! { h1 { "Something went wrong" } p.error-text { (message) } }
}

pub(super) struct Listing<'a> {
    pub filter: &'a FilterText,
    pub key: Option<&'a str>,
    pub counts: &'a [InstanceCount],
    pub page: &'a InstancePage,
}

pub(super) fn instances(root: &Root, listing: &Listing) -> Markup {
    let Listing { filter, key, counts, page: instances } = listing;
    let mut sagas: Vec<&str> = counts.iter().map(|c| c.saga.as_str()).collect();
    sagas.dedup();
    let given = |f: &Option<String>| f.clone().unwrap_or_default();
    let (saga, wanted) = (given(&filter.saga), given(&filter.status));
    let link = |saga: &str, status: Option<StatusKind>| {
        let mut query = vec![("saga", saga.to_owned())];
        query.extend(status.map(|s| ("status", s.to_string())));
        root.at(&format!("/console?{}", query_string(&query)))
    };
    let total = |saga: &str, kind: StatusKind| {
        counts.iter().find(|c| c.saga == saga && c.status == kind).map_or(0, |c| c.count)
    };
    html! {
        h1 { "Instances" }
        section.counts {
            h2 { "By saga and status" }
            @if sagas.is_empty() {
                p.empty { "No instances yet." }
            } @else {
                table {
                    thead { tr { th { "saga" } @for kind in StatusKind::ALL { th { (kind) } } } }
                    tbody {
                        @for s in &sagas {
                            tr {
                                th { a href=(link(s, None)) { (s) } }
                                @for kind in StatusKind::ALL {
                                    @let n = total(s, kind);
                                    td class=(if n > 0 { kind.as_str() } else { "zero" }) {
                                        @if n > 0 { a href=(link(s, Some(kind))) { (n) } } @else { "0" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        form.filters method="get" action=(root.at("/console")) {
            label { "Saga " select name="saga" {
                option value="" { "any" }
                @for s in &sagas { option value=(s) selected[*s == saga] { (s) } }
            } }
            label { "Status " select name="status" {
                option value="" { "any" }
                @for kind in StatusKind::ALL { option value=(kind) selected[kind.as_str() == wanted] { (kind) } }
            } }
            label { "Unchanged for " input name="older_than" size="6" placeholder="1h" value=(given(&filter.older_than)); }
            label { "Key " input name="key" size="16" value=(key.unwrap_or_default()); }
            button type="submit" { "Filter" }
            a.reset href=(root.at("/console")) { "clear" }
        }
        @if instances.instances.is_empty() {
            p.empty { "No instance matches." }
        } @else {
            table.instances {
                thead { tr { th { "instance" } th { "saga" } th { "key" } th { "status" } th { "step" } th { "updated" } th { "reason" } } }
                tbody {
                    @for i in &instances.instances {
                        tr data-instance=(i.id) {
                            td.mono { a href=(root.instance(i.id)) { (i.id) } }
                            td { (i.saga) }
                            td { (i.key) }
                            td { (status(i.status)) }
                            td { (i.step.as_deref().unwrap_or("")) }
                            td { (time(i.updated_at)) }
                            td.reason { (i.reason.as_deref().or(i.failure.as_deref()).unwrap_or("")) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &instances.next {
            p.more { a href=(next_page(root, filter, next)) { "Next page →" } }
        }
    }
}

/// The list's next page: the same filters, after `cursor`.
fn next_page(root: &Root, filter: &FilterText, cursor: &InstanceCursor) -> String {
    let mut query = vec![("after", cursor.to_string())];
    for (name, value) in [("saga", &filter.saga), ("status", &filter.status), ("older_than", &filter.older_than)] {
        query.extend(value.as_deref().filter(|v| !v.is_empty()).map(|v| (name, v.to_owned())));
    }
    root.at(&format!("/console?{}", query_string(&query)))
}

fn query_string(pairs: &[(&str, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// The actions that can apply to an instance as it stands (the runtime decides, and says why
/// when one does not).
fn offered(summary: &InstanceSummary, phase: Option<Phase>) -> &'static [Operation] {
    use Operation::*;
    match (summary.status, phase) {
        (StatusKind::Failed, Some(Phase::Action)) => &[Retry, Skip, Abort, Resume, Cancel],
        (StatusKind::Failed, Some(Phase::Compensation)) => &[Retry, Skip, Resume, Cancel],
        (StatusKind::Failed, None) => &[Cancel],
        (StatusKind::Running, _) => &[Abort, Cancel],
        (StatusKind::Compensating, _) => &[Cancel],
        _ => &[],
    }
}

fn describe(operation: Operation) -> &'static str {
    match operation {
        Operation::Retry => "run the failed step or compensation again",
        Operation::Skip => "mark the failed step or compensation done (you did it by hand) and go on",
        Operation::Abort => "compensate now",
        Operation::Resume => "go on from where it was parked",
        Operation::Cancel => "stop it as cancelled, compensating nothing",
    }
}

pub(super) fn instance(root: &Root, detail: &InstanceDetail, diagram: Option<&Diagram>) -> Markup {
    let s = &detail.summary;
    let phase = detail.awaiting.as_ref().map(|a| a.phase);
    let api = |tail: &str| format!("/api/instances/{}/{tail}", s.id);
    html! {
        h1 { (s.saga) " " span.key { (s.key) } " " (status(s.status)) }
        p.mono.subtle { (s.id) }
        @let actions = offered(s, phase);
        @if !actions.is_empty() {
            section.actions {
                @for op in actions {
                    (action(api(op.as_str()), op.as_str(), format!("{} instance {} of {} ({}): {}?", op, s.key, s.saga, s.id, describe(*op)), "act"))
                }
            }
        }
        dl.summary {
            dt { "status" } dd { (status(s.status)) }
            @if let Some(step) = &s.step { dt { "step" } dd { (step) } }
            @if let Some(a) = &detail.awaiting {
                dt { "waits on" }
                dd {
                    @let node = match a.phase { Phase::Action => Diagram::step(a.step), Phase::Compensation => Diagram::compensation(a.step) };
                    @match diagram.and_then(|d| d.node(&node)) {
                        Some(node) => (node.label),
                        None => { "step #" (a.step) }
                    }
                    @if a.phase == Phase::Compensation { " (compensating)" }
                    ", attempt " (a.attempt)
                    @if let Some(t) = &a.timer { ", timer due " (time(t.due)) }
                    @if a.outcome_unknown { " (an attempt's outcome is unknown)" }
                }
            }
            @if let Some(reason) = &s.reason { dt { "reason" } dd.reason { (reason) } }
            @if let Some(failure) = &s.failure { dt { "compensating because" } dd.reason { (failure) } }
            dt { "version" } dd { (s.version) }
            dt { "started" } dd { (time(s.created_at)) }
            dt { "updated" } dd { (time(s.updated_at)) }
        }
        @if let Some(diagram) = diagram {
            section.flow {
                h2 { "Where it went" }
                (svg::render(diagram, detail.path.as_ref()))
                p.legend {
                    span.key-visited { "passed" } span.key-current { "here now" } span.key-failed { "failed here" }
                    @if detail.path.as_ref().is_some_and(|p| p.partial) { " (from the first " (crate::admin::SCANNED) " history entries)" }
                }
                @if let Some(mermaid) = &detail.diagram {
                    details { summary { "As Mermaid" } pre { (mermaid) } }
                }
            }
        }
        section {
            h2 { "State" }
            @match (&detail.state, &detail.state_error) {
                (Some(state), _) => pre.state { (serde_json::to_string_pretty(state).unwrap_or_default()) },
                (None, Some(e)) => p.error-text { (e) },
                (None, None) => p.empty { "No state." },
            }
        }
        section {
            h2 { "History" }
            table.history {
                thead { tr { th { "version" } th { "at" } th { "caused by" } th { "what happened" } } }
                tbody {
                    @for entry in &detail.history {
                        tr {
                            td { (entry.version) }
                            td { (time(entry.at)) }
                            td { (entry.cause.as_ref().map_or("", |c| c.name.as_str())) }
                            td { ul { @for event in &entry.events { li { (event.to_string()) } } } }
                        }
                    }
                }
            }
            @if detail.more_history {
                p.more { "More history: " a href=(root.at(&format!("{}?after={}", api("history").trim_end_matches('/'), detail.history.last().map_or(0, |e| e.version)))) { "the next entries as JSON" } }
            }
        }
        (messages(root, "Commands waiting in the outbox", &detail.outbox, None))
        (messages(root, "Parked by the relay", &detail.parked, None))
        (messages(root, "Dead letters", &detail.dead_letters, Some(s)))
    }
}

fn dead_letter_actions(m: &MessageSummary, what: &str) -> Markup {
    let Some(subscription) = &m.subscription else { return html! {} };
    let post = |verb: &str| {
        let path = format!("/api/dead-letters/{}/{}/{verb}", encode_segment(subscription), m.message_id);
        (path, format!("{verb} the dead letter {} ({}) of {subscription}{what}?", m.message_id, m.name))
    };
    let (replay, replay_confirm) = post("replay");
    let (discard, discard_confirm) = post("discard");
    html! {
        (action(replay, "replay", replay_confirm, "act"))
        " "
        (action(discard, "discard", discard_confirm, "act danger"))
    }
}

fn encode_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

fn messages(root: &Root, title: &str, list: &[MessageSummary], owner: Option<&InstanceSummary>) -> Markup {
    let what = owner.map_or_else(String::new, |o| format!(", for instance {} of {}", o.key, o.saga));
    html! {
        @if !list.is_empty() {
            section {
                h2 { (title) }
                table.messages {
                    thead { tr { th { "message" } th { "name" } th { "subscription" } th { "when" } th { "reason" } @if owner.is_some() { th {} } } }
                    tbody {
                        @for m in list {
                            tr {
                                td.mono {
                                    @match &m.subscription {
                                        Some(s) => a href=(root.dead_letter(s, m.message_id)) { (m.message_id) },
                                        None => (m.message_id),
                                    }
                                }
                                td { (m.name) }
                                td { (m.subscription.as_deref().unwrap_or("")) }
                                td { (time(m.at.unwrap_or(m.created_at))) }
                                td.reason { (m.reason.as_deref().unwrap_or("")) }
                                @if owner.is_some() { td.buttons { (dead_letter_actions(m, &what)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn dead_letters(
    root: &Root,
    subscription: Option<&str>,
    subscriptions: &[&str],
    dead: &[DeadMessage],
) -> Markup {
    html! {
        h1 { "Dead letters" }
        form.filters method="get" action=(root.at("/console/dead-letters")) {
            label { "Subscription " select name="subscription" {
                option value="" { "every one of this runtime" }
                @for s in subscriptions { option value=(s) selected[Some(*s) == subscription] { (s) } }
            } }
            button type="submit" { "Show" }
        }
        @if dead.is_empty() {
            p.empty { "No dead letters." }
        } @else {
            table.messages {
                thead { tr { th { "message" } th { "name" } th { "subscription" } th { "instance" } th { "dead since" } th { "reason" } th {} } }
                tbody {
                    @for d in dead {
                        @let m = &d.message;
                        tr data-message=(m.message_id) {
                            td.mono { a href=(root.dead_letter(m.subscription.as_deref().unwrap_or(""), m.message_id)) { (m.message_id) } }
                            td { (m.name) }
                            td { (m.subscription.as_deref().unwrap_or("")) }
                            td.mono { @if let Some(i) = d.instance { a href=(root.instance(i)) { (i) } } }
                            td { (m.at.map(time).unwrap_or_default()) }
                            td.reason { (m.reason.as_deref().unwrap_or("")) }
                            td.buttons { (dead_letter_actions(m, "")) }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn dead_letter(root: &Root, dead: &DeadLetterDetail) -> Markup {
    let m = &dead.summary.message;
    let optional = |id: Option<uuid::Uuid>| id.map(|i| i.to_string()).unwrap_or_default();
    html! {
        h1 { "Dead letter " span.key { (m.name) } }
        p.mono.subtle { (m.message_id) }
        section.actions { (dead_letter_actions(m, "")) }
        dl.summary {
            dt { "subscription" } dd { (m.subscription.as_deref().unwrap_or("")) }
            dt { "reason" } dd.reason { (m.reason.as_deref().unwrap_or("")) }
            dt { "dead since" } dd { (m.at.map(time).unwrap_or_default()) }
            dt { "created" } dd { (time(m.created_at)) }
            dt { "attempt" } dd { (dead.attempt) }
            dt { "instance" } dd.mono { @if let Some(i) = dead.correlation_id { a href=(root.instance(i)) { (i) } } }
            dt { "caused by" } dd.mono { (optional(dead.causation_id)) }
            @if let Some(reply_to) = &dead.reply_to { dt { "reply to" } dd { (reply_to) } }
        }
        section {
            h2 { "Payload" }
            @match (&dead.payload, &dead.payload_text) {
                (Some(json), _) => pre.state { (serde_json::to_string_pretty(json).unwrap_or_default()) },
                (None, Some(text)) => pre.state { (text) },
                (None, None) => p.empty { "Empty." },
            }
        }
        @if !dead.headers.is_empty() {
            section {
                h2 { "Headers" }
                table { tbody { @for (k, v) in &dead.headers { tr { th { (k) } td.mono { (v) } } } } }
            }
        }
    }
}

pub(super) fn parked(root: &Root, parked: &[ParkedMessage]) -> Markup {
    html! {
        h1 { "Parked messages" }
        p.subtle { "Outbox entries the relay gave up on: replay one once its cause is fixed (its consumers drop a copy they had)." }
        @if parked.is_empty() {
            p.empty { "Nothing is parked." }
        } @else {
            table.messages {
                thead { tr { th { "seq" } th { "message" } th { "name" } th { "instance" } th { "parked" } th { "reason" } th {} } }
                tbody {
                    @for p in parked {
                        @let m = &p.message;
                        tr {
                            td { (p.seq) }
                            td.mono { (m.message_id) }
                            td { (m.name) }
                            td.mono { @if let Some(i) = p.instance { a href=(root.instance(i)) { (i) } } }
                            td { (m.at.map(time).unwrap_or_default()) }
                            td.reason { (m.reason.as_deref().unwrap_or("")) }
                            td.buttons {
                                (action(format!("/api/parked/{}/replay", p.seq), "replay", format!("replay parked message {} ({})?", p.seq, m.name), "act"))
                                " "
                                (action(format!("/api/parked/{}/discard", p.seq), "discard", format!("discard parked message {} ({})?", p.seq, m.name), "act danger"))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Nothing the console sends runs as a script but its own file.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
