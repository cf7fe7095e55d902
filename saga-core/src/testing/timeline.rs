//! An instance's history as a readable timeline, for failure messages.

use std::fmt::Write as _;

use crate::message::Timestamp;
use crate::store::{HistoryEntry, HistoryEvent, Phase, TimerPurpose};

fn purpose(p: &TimerPurpose) -> String {
    let (what, step, phase, attempt) = match p {
        TimerPurpose::Timeout { step, phase, attempt } => ("timeout", step, phase, attempt),
        TimerPurpose::Retry { step, phase, attempt } => ("retry", step, phase, attempt),
        TimerPurpose::RunLocal { step, phase, attempt } => ("local run", step, phase, attempt),
    };
    let side = if *phase == Phase::Compensation { " compensation" } else { "" };
    format!("{what} of step #{step}{side}, attempt {attempt}")
}

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
                HistoryEvent::Started => "started".to_owned(),
                HistoryEvent::StepStarted { name, attempt, .. } => format!("step {name} started (attempt {attempt})"),
                HistoryEvent::StepSucceeded { name, .. } => format!("step {name} succeeded"),
                HistoryEvent::StepFailed { name, reason, .. } => format!("step {name} failed: {reason}"),
                HistoryEvent::CompensationStarted { name, attempt, .. } => {
                    format!("compensation of {name} started (attempt {attempt})")
                }
                HistoryEvent::StepCompensated { name, .. } => format!("step {name} compensated"),
                HistoryEvent::CompensationFailed { name, reason, .. } => {
                    format!("compensation of {name} failed: {reason}")
                }
                HistoryEvent::EventHandled { name } => format!("event {name} applied"),
                HistoryEvent::MessageSent(m) => format!("sent {}", m.name),
                HistoryEvent::TimerScheduled { key, purpose: p } => {
                    let due = key.due.0.saturating_sub(start.0) as f64 / 1000.0;
                    format!("timer set for +{due:.3}s: {}", purpose(p))
                }
                HistoryEvent::TimerFired { .. } => "timer fired".to_owned(),
                HistoryEvent::Ignored { reason } => format!("ignored: {reason}"),
                HistoryEvent::StatusChanged { to } => format!("status -> {to:?}"),
                HistoryEvent::LateReply { name, status, .. } => format!("late reply {name} (the saga had {status:?})"),
                HistoryEvent::Operator { action, by, reason } => format!("operator {by}: {action} ({reason})"),
            };
            let _ = writeln!(out, "                     {line}");
        }
    }
    out
}
