//! Tables for people, from the endpoint's JSON.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;

use crate::Request;

/// A field as a cell: strings bare, nothing as `-`, the rest as compact JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A timestamp (milliseconds since the epoch) as RFC 3339, UTC.
fn time(value: &Value) -> String {
    match value.as_u64() {
        Some(ms) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        None => cell(value),
    }
}

fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = Table::new();
    // Wrapped to the terminal's width (long reasons), or left whole when piped.
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    format!("{table}\n")
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn instances(page: &Value) -> String {
    let rows = items(&page["instances"]).iter().map(|i| {
        vec![
            cell(&i["id"]),
            cell(&i["saga"]),
            cell(&i["key"]),
            cell(&i["status"]),
            cell(&i["step"]),
            time(&i["updated_at"]),
            cell(&i["reason"]),
        ]
    });
    let mut out = table(&["id", "saga", "key", "status", "step", "updated", "reason"], rows);
    if let Some(next) = page["next"].as_str() {
        let _ = writeln!(out, "more: --after {next}");
    }
    out
}

fn history(entries: &Value) -> String {
    let rows = items(entries).iter().map(|e| {
        let events = items(&e["events"]).iter().map(cell).collect::<Vec<_>>().join("; ");
        vec![cell(&e["version"]), time(&e["at"]), cell(&e["cause"]["name"]), events]
    });
    table(&["version", "at", "cause", "events"], rows)
}

fn messages(list: &Value) -> String {
    let rows = items(list).iter().map(|m| {
        vec![
            cell(m.get("seq").unwrap_or(&Value::Null)),
            cell(&m["name"]),
            cell(&m["message_id"]),
            cell(&m["instance"]),
            cell(&m["subscription"]),
            time(&m["at"]),
            cell(&m["reason"]),
        ]
    });
    table(&["seq", "name", "message id", "instance", "subscription", "at", "reason"], rows)
}

fn detail(d: &Value) -> String {
    let mut out = String::new();
    for (label, field) in [
        ("id", "id"),
        ("saga", "saga"),
        ("key", "key"),
        ("status", "status"),
        ("step", "step"),
        ("reason", "reason"),
        ("failure", "failure"),
        ("version", "version"),
    ] {
        let _ = writeln!(out, "{label:>9}: {}", cell(&d[field]));
    }
    let _ = writeln!(out, "{:>9}: {}", "created", time(&d["created_at"]));
    let _ = writeln!(out, "{:>9}: {}", "updated", time(&d["updated_at"]));
    let _ = writeln!(out, "{:>9}: {}", "awaiting", cell(&d["awaiting"]));
    let state = match &d["state"] {
        Value::Null => cell(&d["state_error"]),
        state => serde_json::to_string_pretty(state).unwrap_or_default(),
    };
    let _ = writeln!(out, "\nstate:\n{state}\n\nhistory:");
    out.push_str(&history(&d["history"]));
    if d["more_history"] == true {
        out.push_str("(more: sagaflow instances history ID --after VERSION)\n");
    }
    for (title, field) in [("outbox", "outbox"), ("parked", "parked"), ("dead letters", "dead_letters")] {
        if !items(&d[field]).is_empty() {
            let _ = writeln!(out, "\n{title}:");
            out.push_str(&messages(&d[field]));
        }
    }
    out
}

fn dead_letter(d: &Value) -> String {
    let mut out = String::new();
    for (label, field) in [
        ("message", "message_id"),
        ("name", "name"),
        ("subscription", "subscription"),
        ("instance", "correlation_id"),
        ("caused by", "causation_id"),
        ("attempt", "attempt"),
        ("created", "created_at"),
        ("dead since", "at"),
        ("reason", "reason"),
    ] {
        let value = if field.ends_with("_at") || field == "at" { time(&d[field]) } else { cell(&d[field]) };
        let _ = writeln!(out, "{label:<13} {value}");
    }
    if let Some(headers) = d["headers"].as_object().filter(|h| !h.is_empty()) {
        let _ = writeln!(out, "\nheaders:");
        for (k, v) in headers {
            let _ = writeln!(out, "  {k}: {}", cell(v));
        }
    }
    let payload = match &d["payload"] {
        Value::Null => cell(&d["payload_text"]),
        json => serde_json::to_string_pretty(json).unwrap_or_default(),
    };
    let _ = writeln!(out, "\npayload:\n{payload}");
    out
}

pub(crate) fn render(request: &Request, answer: &Value) -> String {
    match request {
        Request::List { .. } => instances(answer),
        Request::Counts { .. } => {
            let rows = items(answer).iter().map(|c| vec![cell(&c["saga"]), cell(&c["status"]), cell(&c["count"])]);
            table(&["saga", "status", "count"], rows)
        }
        Request::Show { .. } => detail(answer),
        Request::History { .. } => history(answer),
        Request::Act { id: Some(id), operation, .. } => {
            format!("{operation}: instance {id} is now {} ({})\n", cell(&answer["status"]), cell(&answer["step"]))
        }
        Request::Act { .. } => {
            let rows = items(answer).iter().map(|r| {
                let applied = if r["applied"] == true { "applied" } else { "refused" };
                vec![cell(&r["id"]), applied.to_owned(), cell(&r["reason"])]
            });
            table(&["id", "result", "reason"], rows)
        }
        Request::Parked { .. } | Request::DeadLetters { .. } => messages(answer),
        Request::ShowDeadLetter { .. } => dead_letter(answer),
        Request::ReplayParked { seq } => format!("parked entry #{seq} is back in the outbox\n"),
        Request::DiscardParked { seq } => format!("parked entry #{seq} is discarded\n"),
        Request::SettleDeadLetter { replay, subscription, message_id, .. } => {
            let done = if *replay { "sent back to" } else { "discarded from" };
            format!("message {message_id}: {} dead letter(s) {done} {subscription}\n", cell(&answer["count"]))
        }
        Request::Ready => {
            let mut out = format!(
                "ready: {}\nstore: {} (probe {} ms)\nbus connected: {}\nrelay backlog: {}{}\nparked: {}\n",
                cell(&answer["ready"]),
                cell(&answer["store"]),
                cell(&answer["store_probe_ms"]),
                cell(&answer["bus_connected"]),
                cell(&answer["relay_backlog"]),
                if answer["relay_backlog_more"] == true { "+" } else { "" },
                cell(&answer["parked"]),
            );
            for problem in items(&answer["problems"]) {
                let _ = writeln!(out, "problem: {}", cell(problem));
            }
            out
        }
    }
}
