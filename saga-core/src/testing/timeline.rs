//! An instance's history as a readable timeline, for failure messages.

use std::fmt::Write as _;

use crate::message::Timestamp;
use crate::store::{HistoryEntry, HistoryEvent};

/// One line per event, each commit headed by its version, its time relative to the first
/// commit, and the message that caused it.
pub fn render(history: &[HistoryEntry]) -> String {
    let start = history.first().map_or(Timestamp(0), |h| h.at);
    let mut out = String::new();
    for entry in history {
        let at = entry.at.0.saturating_sub(start.0) as f64 / 1000.0;
        let cause = entry.cause.as_ref().map_or_else(|| "-".to_owned(), |c| c.name.clone());
        let _ = writeln!(out, "  v{:<3} +{at:>8.3}s  <- {cause}", entry.version);
        for event in &entry.events {
            let line = match event {
                HistoryEvent::TimerScheduled { key, purpose } => {
                    let due = key.due.0.saturating_sub(start.0) as f64 / 1000.0;
                    format!("timer set for +{due:.3}s: {purpose}")
                }
                other => other.to_string(),
            };
            let _ = writeln!(out, "                     {line}");
        }
    }
    out
}
