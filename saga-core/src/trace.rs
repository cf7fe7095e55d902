//! Trace context across the bus: W3C `traceparent` and `tracestate` on every envelope.
//!
//! A message carries the trace context of whatever produced it, and the unit of work that
//! consumes it continues that trace, so one saga instance is one trace across every service it
//! touches, and a trace that an eShop service (or any W3C-instrumented producer) started goes
//! on through sagaflow.
//!
//! The invariants, and why:
//!
//! - **A message is stamped once, when it is produced**, not when a transport sends it: a
//!   unit's commands and replies are stamped as the unit commits them to the outbox, so a
//!   message relayed after a restart still continues the trace of the unit that produced it
//!   (the stored envelope carries its context). A message that already has a `traceparent` (a
//!   dead letter replayed, a message forwarded as is) keeps it.
//! - **With the `otel` feature and an OpenTelemetry layer installed**, a produced message gets
//!   a producer span of its own, child of the current span (the unit's, or the caller's for a
//!   direct publish); its context is what the message carries. The unit that consumes the
//!   message has that span as its parent, so the tree reads: unit → message → unit → …
//! - **A durable timer carries the context of the unit that scheduled it**, stored with it
//!   ([`TimerRecord::trace`]), so a step's timeout or retry that the store fires, in this
//!   process or the next, continues the instance's trace. A timer has no span of its own; the
//!   unit it fires does.
//! - **Without OpenTelemetry** (feature off, or no layer installed) the context passes through
//!   unchanged: the messages a unit produces carry the context of the message it consumed.
//!   A service that does not trace then does not break the trace of those that do.
//! - The W3C format is parsed and written by OpenTelemetry's own propagator, never by hand;
//!   a malformed `traceparent` is ignored (the unit starts a trace of its own), not an error:
//!   tracing never costs a message.

use std::collections::BTreeMap;

use crate::message::{Envelope, headers};
use crate::store::TimerRecord;

/// The W3C trace context a message carries: its `traceparent` and `tracestate` headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// The context `envelope` carries, if any.
    pub(crate) fn of(envelope: &Envelope) -> Option<Self> {
        Self::from_headers(&envelope.headers)
    }

    /// The context `timer` carries (of the unit that scheduled it), if any.
    pub(crate) fn of_timer(timer: &TimerRecord) -> Option<Self> {
        Self::from_headers(&timer.trace)
    }

    /// The context in `headers`, if its `traceparent` is well formed: a malformed one is not
    /// passed on to what the unit produces.
    fn from_headers(headers: &BTreeMap<String, String>) -> Option<Self> {
        let traceparent = headers.get(headers::TRACEPARENT).filter(|t| is_traceparent(t))?.clone();
        Some(TraceContext { traceparent, tracestate: headers.get(headers::TRACESTATE).cloned() })
    }

    fn write(&self, into: &mut BTreeMap<String, String>) {
        into.insert(headers::TRACEPARENT.to_owned(), self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            into.insert(headers::TRACESTATE.to_owned(), state.clone());
        }
    }
}

/// Whether `value` has the shape of a W3C `traceparent`: `version-traceid-spanid-flags` in
/// lowercase hex (2-32-16-2 digits), version not `ff`, ids not all zeros. Only the shape is
/// checked: with the `otel` feature, OpenTelemetry's propagator parses it.
fn is_traceparent(value: &str) -> bool {
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let mut parts = value.split('-');
    let (Some(version), Some(trace), Some(span), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let more = parts.next().is_some();
    hex(version, 2)
        && version != "ff"
        && (!more || version != "00")
        && hex(trace, 32)
        && nonzero(trace)
        && hex(span, 16)
        && nonzero(span)
        && hex(flags, 2)
}

tokio::task_local! {
    /// The context of the message the running unit of work consumed (or of the unit that
    /// scheduled its timer): what its own messages carry when no OpenTelemetry span does.
    static CONSUMED: Option<TraceContext>;
}

/// Runs `future` as the handling of a message with trace context `context`.
pub(crate) async fn within<F: Future>(context: Option<TraceContext>, future: F) -> F::Output {
    CONSUMED.scope(context, future).await
}

/// What a message produced now should carry: the current OpenTelemetry span's context, or
/// else the consumed message's.
pub(crate) fn current() -> Option<TraceContext> {
    #[cfg(feature = "otel")]
    if let Some(context) = otel::current() {
        return Some(context);
    }
    CONSUMED.try_with(Clone::clone).ok().flatten()
}

/// How a message comes to be sent, for its producer span.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Produced {
    /// Committed by a unit of work, sent once the commit is durable.
    Committed,
    /// Published straight to the bus.
    Published,
}

/// Stamps `envelope` with the context of what produces it (see the module docs); an envelope
/// that has one keeps it.
pub(crate) fn stamp(envelope: &mut Envelope, how: Produced) {
    if envelope.headers.contains_key(headers::TRACEPARENT) {
        return;
    }
    #[cfg(feature = "otel")]
    if otel::stamp(envelope, how) {
        return;
    }
    let _ = how;
    if let Ok(Some(context)) = CONSUMED.try_with(Clone::clone) {
        context.write(&mut envelope.headers);
    }
}

/// Stamps `timer` with the current context (the unit's that schedules it), so that the unit
/// it fires continues the trace. No span of its own: a timer is not a message.
pub(crate) fn stamp_timer(timer: &mut TimerRecord) {
    if timer.trace.is_empty()
        && let Some(context) = current()
    {
        context.write(&mut timer.trace);
    }
}

/// Makes `span`, a unit's or a handler's not yet entered, continue the trace of `context`.
pub(crate) fn continue_trace(span: &tracing::Span, context: Option<&TraceContext>) {
    #[cfg(feature = "otel")]
    otel::set_parent(span, context);
    let _ = (span, context);
}

/// A unit's span attributes as the OpenTelemetry messaging conventions name them (`process
/// <message>`, a consumer span; a timer or an operator's action is an internal span). Set only
/// with the `otel` feature (the fields would add nothing to plain logs), and set when the span
/// is created: recording them afterwards costs the layer a lookup and an update per field.
#[derive(Debug, Default)]
pub(crate) struct UnitAttributes<'a> {
    /// `otel.name`.
    pub name: Option<std::borrow::Cow<'a, str>>,
    /// `otel.kind`.
    pub kind: Option<&'static str>,
    /// `messaging.operation.type`.
    pub operation: Option<&'static str>,
    /// `messaging.consumer.group.name`.
    pub group: Option<&'a str>,
    /// `messaging.message.conversation_id`.
    pub conversation: Option<&'a str>,
}

impl<'a> UnitAttributes<'a> {
    pub(crate) fn new(consumes_message: bool, input: &'a str, group: &'a str, conversation: &'a str) -> Self {
        #[cfg(feature = "otel")]
        {
            let (name, kind, operation) = if consumes_message {
                (format!("process {input}").into(), "consumer", Some("process"))
            } else {
                (input.into(), "internal", None)
            };
            UnitAttributes {
                name: Some(name),
                kind: Some(kind),
                operation,
                group: Some(group),
                conversation: Some(conversation),
            }
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (consumes_message, input, group, conversation);
            UnitAttributes::default()
        }
    }
}

#[cfg(feature = "otel")]
mod otel {
    use std::collections::BTreeMap;

    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{Produced, TraceContext};
    use crate::message::Envelope;

    struct Headers<'a>(&'a mut BTreeMap<String, String>);

    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), value);
        }
    }

    struct Carried<'a>(&'a TraceContext);

    impl Extractor for Carried<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                crate::message::headers::TRACEPARENT => Some(&self.0.traceparent),
                crate::message::headers::TRACESTATE => self.0.tracestate.as_deref(),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            vec![crate::message::headers::TRACEPARENT, crate::message::headers::TRACESTATE]
        }
    }

    /// Writes `span`'s context into `headers`; false when it has none (no layer installed, or
    /// the span is disabled).
    fn inject(span: &tracing::Span, headers: &mut BTreeMap<String, String>) -> bool {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return false;
        }
        TraceContextPropagator::new().inject_context(&context, &mut Headers(headers));
        true
    }

    pub(super) fn current() -> Option<TraceContext> {
        let mut headers = BTreeMap::new();
        inject(&tracing::Span::current(), &mut headers).then(|| TraceContext::from_headers(&headers)).flatten()
    }

    pub(super) fn stamp(envelope: &mut Envelope, how: Produced) -> bool {
        let operation = match how {
            Produced::Committed => "create",
            Produced::Published => "send",
        };
        let span = tracing::info_span!(
            "message produced",
            otel.name = %format_args!("{operation} {}", envelope.name),
            otel.kind = "producer",
            messaging.operation.type = operation,
            messaging.destination.name = %envelope.name,
            messaging.message.id = %envelope.message_id,
            messaging.message.conversation_id = envelope.correlation_id.map(tracing::field::display),
        );
        inject(&span, &mut envelope.headers)
    }

    pub(super) fn set_parent(span: &tracing::Span, context: Option<&TraceContext>) {
        let Some(context) = context else { return };
        let parent = TraceContextPropagator::new().extract(&Carried(context));
        if parent.span().span_context().is_valid() {
            // Fails only when no OpenTelemetry layer is installed or the span is disabled:
            // then there is no trace to continue.
            let _ = span.set_parent(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_traceparent;

    #[test]
    fn only_a_well_formed_traceparent_is_taken() {
        assert!(is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        for bad in [
            "zz",
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
    }
}
