use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

use super::step::{Action, ReplyHandler, Step, StepKind};
use crate::message::{Codec, DecodeError, Envelope, Message};
use crate::store::Phase;

pub(crate) type Decoded = Box<dyn Any + Send + Sync>;
pub(crate) type DecodeFn =
    Arc<dyn Fn(&dyn Codec, &Envelope) -> Result<(Option<String>, Decoded), DecodeError> + Send + Sync>;

/// Decodes an `M` and extracts its correlation key.
pub(crate) fn decoder<M: Message>() -> DecodeFn {
    Arc::new(|codec, env| {
        let m: M = env.decode(codec)?;
        Ok((m.correlation_key(), Box::new(m)))
    })
}

/// A saga: its state type, name and definition. The `#[saga]` macro implements it; by hand:
///
/// ```
/// use saga_core::message::Message;
/// use saga_core::saga::{Saga, SagaDefinition, Step};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Submitted { order: u64 }
/// impl Message for Submitted {
///     const NAME: &'static str = "order.submitted";
///     fn correlation_key(&self) -> Option<String> { Some(self.order.to_string()) }
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct Checkout { order: u64, done: bool }
///
/// impl Saga for Checkout {
///     const NAME: &'static str = "checkout";
///     fn definition() -> SagaDefinition<Self> {
///         SagaDefinition::new()
///             .start_with(|m: &Submitted| Checkout { order: m.order, done: false })
///             .step(Step::local("finish", |mut s: Checkout, _ctx| async move { s.done = true; Ok(s) }))
///     }
/// }
/// assert!(Checkout::definition().validate().is_ok());
/// ```
pub trait Saga: Serialize + DeserializeOwned + Send + Sync + Sized + 'static {
    /// The saga's stable name (instances, subscriptions and timers are keyed by it).
    const NAME: &'static str;
    /// The definition's version, recorded on every instance.
    const VERSION: u32 = 1;
    /// The definition the engine runs.
    fn definition() -> SagaDefinition<Self>;
}

/// The id of the instance of saga `saga` correlated by `key`.
///
/// Deterministic, so a start message delivered twice, or two start messages with the same
/// key, find the same instance without any lookup table. The saga name's length is part of
/// what is hashed, so that no two (saga, key) pairs share a name whatever characters they
/// hold (`("billing/refund", "42")` and `("billing", "refund/42")` differ).
///
/// ```
/// use saga_core::saga::instance_id;
/// assert_eq!(instance_id("order", "42"), instance_id("order", "42"));
/// assert_ne!(instance_id("order", "42"), instance_id("refund", "42"));
/// assert_ne!(instance_id("billing/refund", "42"), instance_id("billing", "refund/42"));
/// ```
pub fn instance_id(saga: &str, key: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("sagaflow/saga/{}/{saga}/{key}", saga.len()).as_bytes())
}

/// What an integration event does to a running saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// The state was updated; carry on.
    Continue,
    /// Stop going forward and compensate (ignored once the pivot has succeeded).
    Abort(String),
}

type InitFn<S> = Arc<dyn Fn(&Decoded) -> Option<S> + Send + Sync>;
type ReactFn<S> = Arc<dyn Fn(&mut S, &Decoded) -> EventOutcome + Send + Sync>;

pub(crate) struct Starter<S> {
    pub(crate) name: &'static str,
    pub(crate) decode: DecodeFn,
    pub(crate) init: InitFn<S>,
}

pub(crate) struct Reaction<S> {
    pub(crate) name: &'static str,
    pub(crate) decode: DecodeFn,
    pub(crate) apply: ReactFn<S>,
}

/// A definition that cannot run, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// Nothing starts the saga.
    #[error("saga {saga:?} has no start message: add .start_with(...)")]
    NoStart {
        /// The saga.
        saga: &'static str,
    },
    /// Two steps share a name.
    #[error("saga {saga:?} has two steps named {step:?}: step names must be unique")]
    DuplicateStep {
        /// The saga.
        saga: &'static str,
        /// The name.
        step: String,
    },
    /// A message name is used twice (two replies, or a reply that also starts the saga).
    #[error(
        "saga {saga:?} handles message {message:?} in two places: each message may start, answer or update it once"
    )]
    DuplicateMessage {
        /// The saga.
        saga: &'static str,
        /// The message's wire name.
        message: &'static str,
    },
    /// A command step whose success reply is never handled.
    #[error("step {step:?} of saga {saga:?} sends a command but handles no reply: add .on_success(...){extra}")]
    UnhandledReply {
        /// The saga.
        saga: &'static str,
        /// The step.
        step: String,
        /// Which reply.
        extra: &'static str,
    },
    /// More than one pivot.
    #[error("saga {saga:?} has more than one pivot ({first:?} and {second:?}): a saga has one point of no return")]
    SecondPivot {
        /// The saga.
        saga: &'static str,
        /// The first pivot.
        first: String,
        /// The second pivot.
        second: String,
    },
    /// A compensatable step after the pivot or a retriable step.
    #[error(
        "step {step:?} of saga {saga:?} is compensatable but comes after {after:?}: after the pivot, steps must be .retriable()"
    )]
    CompensatableAfterPivot {
        /// The saga.
        saga: &'static str,
        /// The step.
        step: String,
        /// The pivot or retriable step before it.
        after: String,
    },
    /// A pivot or retriable step with a compensation.
    #[error("step {step:?} of saga {saga:?} is a {kind:?} step and can never be compensated: remove its compensation")]
    CompensationNotAllowed {
        /// The saga.
        saga: &'static str,
        /// The step.
        step: String,
        /// Its kind.
        kind: StepKind,
    },
}

/// The definition of a saga: start messages, steps, and the events it reacts to.
pub struct SagaDefinition<S> {
    pub(crate) starts: Vec<Starter<S>>,
    pub(crate) steps: Vec<Step<S>>,
    pub(crate) events: Vec<Reaction<S>>,
}

impl<S: Saga> Default for SagaDefinition<S> {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a message name goes in a definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Start(usize),
    Reply { step: u32, phase: Phase, success: bool },
    Event(usize),
}

impl<S: Saga> SagaDefinition<S> {
    /// An empty definition for `S`.
    pub fn new() -> Self {
        SagaDefinition { starts: Vec::new(), steps: Vec::new(), events: Vec::new() }
    }

    /// A message that starts an instance, correlated by the message's
    /// [`Message::correlation_key`]; `init` builds the initial state. A second start message
    /// with the same key finds the existing instance and is ignored.
    pub fn start_with<M: Message>(mut self, init: impl Fn(&M) -> S + Send + Sync + 'static) -> Self {
        self.starts.push(Starter {
            name: M::NAME,
            decode: decoder::<M>(),
            init: Arc::new(move |d| d.downcast_ref::<M>().map(&init)),
        });
        self
    }

    /// Appends a step.
    pub fn step(mut self, step: Step<S>) -> Self {
        self.steps.push(step);
        self
    }

    /// An integration event that updates a running instance (found by the event's correlation
    /// key) and may abort it.
    pub fn on_event<M: Message>(mut self, apply: impl Fn(&mut S, &M) -> EventOutcome + Send + Sync + 'static) -> Self {
        self.events.push(Reaction {
            name: M::NAME,
            decode: decoder::<M>(),
            apply: Arc::new(move |s, d| match d.downcast_ref::<M>() {
                Some(m) => apply(s, m),
                None => EventOutcome::Continue,
            }),
        });
        self
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step<S>] {
        &self.steps
    }

    /// Checks the definition: a start message, unique step and message names, handled
    /// replies, one pivot at most, and compensatable steps only before the pivot.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let saga = S::NAME;
        if self.starts.is_empty() {
            return Err(DefinitionError::NoStart { saga });
        }
        let mut names = std::collections::HashSet::new();
        let mut pivot: Option<&str> = None;
        let mut forward_only: Option<&str> = None;
        for step in &self.steps {
            if !names.insert(step.name.as_str()) {
                return Err(DefinitionError::DuplicateStep { saga, step: step.name.clone() });
            }
            let unanswered = [
                (Some(&step.action), ""),
                (step.compensation.as_ref(), " (for the compensation: .on_compensated(...))"),
            ];
            for (action, extra) in unanswered {
                if let Some(Action::Send { success: None, .. }) = action {
                    return Err(DefinitionError::UnhandledReply { saga, step: step.name.clone(), extra });
                }
            }
            match step.kind {
                StepKind::Pivot => {
                    if let Some(first) = pivot {
                        return Err(DefinitionError::SecondPivot {
                            saga,
                            first: first.to_owned(),
                            second: step.name.clone(),
                        });
                    }
                    if let Some(after) = forward_only {
                        return Err(DefinitionError::CompensatableAfterPivot {
                            saga,
                            step: step.name.clone(),
                            after: after.to_owned(),
                        });
                    }
                    pivot = Some(&step.name);
                    forward_only = Some(&step.name);
                }
                StepKind::Retriable => forward_only = Some(forward_only.unwrap_or(&step.name)),
                StepKind::Compensatable => {
                    if let Some(after) = forward_only {
                        return Err(DefinitionError::CompensatableAfterPivot {
                            saga,
                            step: step.name.clone(),
                            after: after.to_owned(),
                        });
                    }
                }
            }
            if step.kind != StepKind::Compensatable && step.compensation.is_some() {
                return Err(DefinitionError::CompensationNotAllowed { saga, step: step.name.clone(), kind: step.kind });
            }
        }
        self.routes().map(|_| ())
    }

    /// Every message name the saga consumes and where it goes.
    pub(crate) fn routes(&self) -> Result<HashMap<&'static str, Route>, DefinitionError> {
        let mut routes = HashMap::new();
        let mut add = |name: &'static str, route: Route| match routes.insert(name, route) {
            Some(_) => Err(DefinitionError::DuplicateMessage { saga: S::NAME, message: name }),
            None => Ok(()),
        };
        for (i, s) in self.starts.iter().enumerate() {
            add(s.name, Route::Start(i))?;
        }
        for (i, step) in self.steps.iter().enumerate() {
            let step_no = u32::try_from(i).unwrap_or(u32::MAX);
            for (phase, action) in
                [(Phase::Action, Some(&step.action)), (Phase::Compensation, step.compensation.as_ref())]
            {
                if let Some(Action::Send { success, failure, .. }) = action {
                    for (handler, ok) in [(success, true), (failure, false)] {
                        if let Some(h) = handler {
                            add(h.name, Route::Reply { step: step_no, phase, success: ok })?;
                        }
                    }
                }
            }
        }
        for (i, e) in self.events.iter().enumerate() {
            add(e.name, Route::Event(i))?;
        }
        Ok(routes)
    }

    pub(crate) fn reply_handler(&self, step: u32, phase: Phase, success: bool) -> Option<&ReplyHandler<S>> {
        let step = self.steps.get(step as usize)?;
        let action = match phase {
            Phase::Action => Some(&step.action),
            Phase::Compensation => step.compensation.as_ref(),
        }?;
        match action {
            Action::Send { success: s, failure: f, .. } => {
                if success {
                    s.as_ref()
                } else {
                    f.as_ref()
                }
            }
            Action::Local(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::instance_id;

    #[test]
    fn instance_ids_differ_for_every_saga_and_key_pair_whatever_their_characters() {
        let pairs =
            [("billing/refund", "42"), ("billing", "refund/42"), ("a/", "b"), ("a", "/b"), ("", "a/b"), ("a/b", "")];
        let ids: std::collections::HashSet<_> = pairs.iter().map(|(saga, key)| instance_id(saga, key)).collect();
        assert_eq!(ids.len(), pairs.len());
    }
}
