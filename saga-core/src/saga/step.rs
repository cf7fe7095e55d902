use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use uuid::Uuid;

use super::RetryPolicy;
use super::definition::{DecodeFn, Decoded, decoder};
use crate::message::{Codec, CodecError, CodecExt, Message};

/// Where a step stands in the saga's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Undone by its compensation when a later step fails.
    Compensatable,
    /// The point of no return: once it succeeds the saga can only go forward.
    Pivot,
    /// After the pivot: retried until it succeeds, never compensated.
    Retriable,
}

/// Why a local step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Worth retrying under the step's retry policy.
    #[error("transient: {0}")]
    Transient(String),
    /// A business failure: the saga compensates (a retriable step retries anyway).
    #[error("failed: {0}")]
    Failed(String),
}

/// What a local step's code gets besides the state.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The instance.
    pub instance_id: Uuid,
    /// The saga's name.
    pub saga: &'static str,
    /// The step's name.
    pub step: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// Stable across retries and re-runs after a crash: pass it to systems that deduplicate.
    pub idempotency_key: String,
}

pub(crate) type BuildFn<S> = Arc<dyn Fn(&S, &dyn Codec) -> Result<(&'static str, Vec<u8>), CodecError> + Send + Sync>;
pub(crate) type ApplyFn<S> = Arc<dyn Fn(&mut S, &Decoded) + Send + Sync>;
pub(crate) type LocalFn<S> = Arc<dyn Fn(S, StepContext) -> BoxFuture<'static, Result<S, StepError>> + Send + Sync>;

pub(crate) struct ReplyHandler<S> {
    pub(crate) name: &'static str,
    pub(crate) decode: DecodeFn,
    pub(crate) apply: ApplyFn<S>,
}

impl<S> Clone for ReplyHandler<S> {
    fn clone(&self) -> Self {
        ReplyHandler { name: self.name, decode: self.decode.clone(), apply: self.apply.clone() }
    }
}

/// An action or a compensation: a command to a participant awaiting a reply, or local code.
pub(crate) enum Action<S> {
    Send {
        command: &'static str,
        build: BuildFn<S>,
        success: Option<ReplyHandler<S>>,
        failure: Option<ReplyHandler<S>>,
    },
    Local(LocalFn<S>),
}

impl<S> Action<S> {
    /// The command's wire name, for a send action.
    pub(crate) fn command(&self) -> Option<&'static str> {
        match self {
            Action::Send { command, .. } => Some(command),
            Action::Local(_) => None,
        }
    }

    /// The reply names of a send action: (success, failure).
    pub(crate) fn replies(&self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Action::Send { success, failure, .. } => {
                (success.as_ref().map(|h| h.name), failure.as_ref().map(|h| h.name))
            }
            Action::Local(_) => (None, None),
        }
    }
}

fn reply_handler<S: 'static, M: Message>(f: impl Fn(&mut S, &M) + Send + Sync + 'static) -> ReplyHandler<S> {
    ReplyHandler {
        name: M::NAME,
        decode: decoder::<M>(),
        apply: Arc::new(move |state, decoded: &Decoded| {
            if let Some(m) = decoded.downcast_ref::<M>() {
                f(state, m);
            }
        }),
    }
}

fn build_fn<S: 'static, M: Message>(f: impl Fn(&S) -> M + Send + Sync + 'static) -> BuildFn<S> {
    Arc::new(move |state, codec| Ok((M::NAME, codec.encode(&f(state))?)))
}

fn local_fn<S, F, Fut>(f: F) -> LocalFn<S>
where
    F: Fn(S, StepContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<S, StepError>> + Send + 'static,
{
    Arc::new(move |s, ctx| f(s, ctx).boxed())
}

/// One step of a saga: an action, an optional compensation, a timeout and retry policies.
///
/// ```
/// use saga_core::message::Message;
/// use saga_core::saga::{RetryPolicy, Step};
/// use serde::{Deserialize, Serialize};
/// use std::time::Duration;
/// # #[derive(Serialize, Deserialize)] struct Reserve; impl Message for Reserve { const NAME: &'static str = "reserve"; }
/// # #[derive(Serialize, Deserialize)] struct Reserved; impl Message for Reserved { const NAME: &'static str = "reserved"; }
/// # #[derive(Serialize, Deserialize)] struct Rejected; impl Message for Rejected { const NAME: &'static str = "rejected"; }
/// # #[derive(Serialize, Deserialize)] struct Release; impl Message for Release { const NAME: &'static str = "release"; }
/// # #[derive(Serialize, Deserialize)] struct Released; impl Message for Released { const NAME: &'static str = "released"; }
/// #[derive(Serialize, Deserialize)]
/// struct Order { reserved: bool }
///
/// let step = Step::<Order>::send("reserve_stock", |_| Reserve)
///     .on_success(|o: &mut Order, _: &Reserved| o.reserved = true)
///     .on_failure(|_, _: &Rejected| {})
///     .compensate_send(|_| Release)
///     .on_compensated(|o: &mut Order, _: &Released| o.reserved = false)
///     .timeout(Duration::from_secs(30))
///     .retry(RetryPolicy::exponential(3, Duration::from_secs(1)));
/// # let _ = step;
/// ```
pub struct Step<S> {
    pub(crate) name: String,
    pub(crate) kind: StepKind,
    pub(crate) action: Action<S>,
    pub(crate) compensation: Option<Action<S>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) compensation_timeout: Option<Duration>,
    pub(crate) compensation_retry: RetryPolicy,
}

impl<S: Send + 'static> Step<S> {
    fn with_action(name: impl Into<String>, action: Action<S>) -> Self {
        Step {
            name: name.into(),
            kind: StepKind::Compensatable,
            action,
            compensation: None,
            timeout: None,
            retry: None,
            compensation_timeout: None,
            compensation_retry: RetryPolicy::default(),
        }
    }

    /// A step that sends the command `build(state)` to a participant and waits for a reply.
    /// Register the success reply with [`Step::on_success`] (required) and the failure reply
    /// with [`Step::on_failure`].
    pub fn send<M: Message>(name: impl Into<String>, build: impl Fn(&S) -> M + Send + Sync + 'static) -> Self {
        Self::with_action(name, Action::Send { command: M::NAME, build: build_fn(build), success: None, failure: None })
    }

    /// A step that runs local async code on the state. It runs at least once: after a crash
    /// mid-run it runs again with the same [`StepContext::idempotency_key`].
    pub fn local<F, Fut>(name: impl Into<String>, run: F) -> Self
    where
        F: Fn(S, StepContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<S, StepError>> + Send + 'static,
    {
        Self::with_action(name, Action::Local(local_fn(run)))
    }

    /// The reply that means the command succeeded; `apply` folds it into the state.
    pub fn on_success<M: Message>(mut self, apply: impl Fn(&mut S, &M) + Send + Sync + 'static) -> Self {
        if let Action::Send { success, .. } = &mut self.action {
            *success = Some(reply_handler(apply));
        }
        self
    }

    /// The reply that means the command failed (a business refusal); the saga compensates.
    pub fn on_failure<M: Message>(mut self, apply: impl Fn(&mut S, &M) + Send + Sync + 'static) -> Self {
        if let Action::Send { failure, .. } = &mut self.action {
            *failure = Some(reply_handler(apply));
        }
        self
    }

    /// Undoes the step by sending a command; register its reply with [`Step::on_compensated`].
    pub fn compensate_send<M: Message>(mut self, build: impl Fn(&S) -> M + Send + Sync + 'static) -> Self {
        self.compensation =
            Some(Action::Send { command: M::NAME, build: build_fn(build), success: None, failure: None });
        self
    }

    /// Undoes the step with local code.
    pub fn compensate_local<F, Fut>(mut self, run: F) -> Self
    where
        F: Fn(S, StepContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<S, StepError>> + Send + 'static,
    {
        self.compensation = Some(Action::Local(local_fn(run)));
        self
    }

    /// The reply that confirms the compensation.
    pub fn on_compensated<M: Message>(mut self, apply: impl Fn(&mut S, &M) + Send + Sync + 'static) -> Self {
        if let Some(Action::Send { success, .. }) = &mut self.compensation {
            *success = Some(reply_handler(apply));
        }
        self
    }

    /// The reply that means the compensation failed; it is retried per
    /// [`Step::compensation_retry`], then the instance is parked as `Failed`.
    pub fn on_compensation_failed<M: Message>(mut self, apply: impl Fn(&mut S, &M) + Send + Sync + 'static) -> Self {
        if let Some(Action::Send { failure, .. }) = &mut self.compensation {
            *failure = Some(reply_handler(apply));
        }
        self
    }

    /// Makes this step the pivot.
    pub fn pivot(mut self) -> Self {
        self.kind = StepKind::Pivot;
        self
    }

    /// Makes this step retriable (it must come after the pivot, or after every
    /// compensatable step).
    pub fn retriable(mut self) -> Self {
        self.kind = StepKind::Retriable;
        self
    }

    /// How long to wait for the reply (or the local run) before the attempt counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How timed-out or transiently failed attempts are retried (a retry re-sends the command
    /// under the same idempotency key). Defaults: no retry for compensatable steps; the pivot
    /// retries until it gets a definitive answer (1 s doubling to 60 s, forever), because a
    /// pivot whose outcome is unknown can be neither compensated around nor skipped; retriable
    /// steps retry forever (100 ms doubling to 60 s). When a pivot's finite policy runs out
    /// without a definitive answer, the instance is parked as `Failed` ("pivot outcome unknown").
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// How long to wait for the compensation's reply (defaults to the step's timeout).
    pub fn compensation_timeout(mut self, timeout: Duration) -> Self {
        self.compensation_timeout = Some(timeout);
        self
    }

    /// How a failed compensation is retried before the instance is parked as `Failed`
    /// (default: [`RetryPolicy::default`]).
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = policy;
        self
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step's kind.
    pub fn kind(&self) -> StepKind {
        self.kind
    }

    /// Whether the step has a compensation.
    pub fn has_compensation(&self) -> bool {
        self.compensation.is_some()
    }

    pub(crate) fn action_retry(&self) -> RetryPolicy {
        match (&self.retry, self.kind) {
            (Some(p), _) => p.clone(),
            (None, StepKind::Retriable) => {
                RetryPolicy::forever(Duration::from_millis(100)).max_delay(Duration::from_secs(60))
            }
            (None, StepKind::Pivot) => RetryPolicy::forever(Duration::from_secs(1)).max_delay(Duration::from_secs(60)),
            (None, StepKind::Compensatable) => RetryPolicy::never(),
        }
    }

    pub(crate) fn phase_timeout(&self, phase: crate::store::Phase) -> Option<Duration> {
        match phase {
            crate::store::Phase::Action => self.timeout,
            crate::store::Phase::Compensation => self.compensation_timeout.or(self.timeout),
        }
    }
}
