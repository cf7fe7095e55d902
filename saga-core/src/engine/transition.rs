//! The saga state machine: (instance, input) → new instance, outgoing messages, timer changes.
//!
//! Everything here is synchronous and deterministic in its inputs (the causing message id,
//! the clock reading, the user's state): outgoing message and timer ids are derived from the
//! cause, so re-running a transition after a crash produces the same ids and consumers
//! downstream deduplicate what the first run may already have published. User code called
//! from here (state folds, command builders) must not perform effects; effects belong to
//! participants and local steps.

use std::time::Duration;

use uuid::Uuid;

use crate::admin::Operation;
use crate::message::{Codec, CodecExt, Envelope, Timestamp, derive_id, headers};
use crate::saga::{Action, Decoded, EventOutcome, Saga, SagaDefinition, StepError, StepKind};
use crate::store::{
    Awaiting, Commit, HistoryEntry, HistoryEvent, InstanceRecord, InstanceWrite, MessageRef, Phase, SagaStatus,
    TimerKey, TimerPurpose, TimerRecord,
};

/// How far ahead a local step's lease timer is set, and how long its run may take, when the
/// step has no timeout. Within a process the run holds its lane, so the timer only matters
/// after a crash: on restart every lease timer fires at once (see `timers::run`).
pub(crate) const LOCAL_LEASE: Duration = Duration::from_secs(60);

/// Why an attempt failed; decides whether the step is retried and what is compensated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// No definitive answer (no reply in time, local code that panicked or overran): the
    /// attempt may have acted. Its step is compensated too, and a pivot is never compensated
    /// around.
    Unknown,
    /// An error worth retrying; the attempt did not act.
    Transient,
    /// A failure reply or business error: nothing happened, nothing to undo for this attempt.
    Refused,
}

pub(crate) struct Transition<'a, S: Saga> {
    def: &'a SagaDefinition<S>,
    codec: &'a dyn Codec,
    now: Timestamp,
    cause: Uuid,
    position: u32,
    pub(crate) record: InstanceRecord,
    pub(crate) state: S,
    outbox: Vec<Envelope>,
    timers_add: Vec<TimerRecord>,
    timers_remove: Vec<TimerKey>,
    pub(crate) events: Vec<HistoryEvent>,
    pub(crate) follow_up: Option<TimerRecord>,
    /// The largest command payload that may be sent (the runtime's and the bus's limit).
    pub(crate) max_payload: usize,
}

impl<'a, S: Saga> Transition<'a, S> {
    pub(crate) fn new(
        def: &'a SagaDefinition<S>,
        codec: &'a dyn Codec,
        now: Timestamp,
        cause: Uuid,
        record: InstanceRecord,
        state: S,
    ) -> Self {
        Transition {
            def,
            codec,
            now,
            cause,
            position: 0,
            record,
            state,
            outbox: Vec::new(),
            timers_add: Vec::new(),
            timers_remove: Vec::new(),
            events: Vec::new(),
            follow_up: None,
            max_payload: usize::MAX,
        }
    }

    /// The commit that records this transition (instance at `version + 1`).
    pub(crate) fn into_commit(
        mut self,
        previous: Option<(u64, crate::store::StatusKind)>,
        cause: MessageRef,
    ) -> Result<(Commit, Option<TimerRecord>, Vec<HistoryEvent>), crate::message::CodecError> {
        self.record.state = self.codec.encode(&self.state)?;
        self.record.version = previous.map_or(1, |(v, _)| v + 1);
        let previous_updated_at = previous.map(|_| self.record.updated_at);
        self.record.updated_at = self.now;
        let history = HistoryEntry {
            version: self.record.version,
            at: self.now,
            cause: Some(cause.clone()),
            events: self.events.clone(),
        };
        let commit = Commit {
            // A starting commit needs no inbox entry: a second copy of its message finds the
            // instance it creates (and the version check, expecting none, refuses a concurrent
            // copy). One random-keyed write fewer per saga, and one key fewer per parked saga.
            inbox: previous.map(|_| (self.record.id, cause.id)),
            instance: Some(InstanceWrite { record: self.record, previous, previous_updated_at }),
            outbox: self.outbox,
            timers_add: self.timers_add,
            timers_remove: self.timers_remove,
            history: Some(history),
            ..Commit::default()
        };
        Ok((commit, self.follow_up, self.events))
    }

    fn next_id(&mut self) -> Uuid {
        let id = derive_id(self.record.id, self.cause, self.position);
        self.position += 1;
        id
    }

    fn step_name(&self, step: u32) -> String {
        self.def.steps.get(step as usize).map_or_else(|| format!("#{step}"), |s| s.name.clone())
    }

    fn set_status(&mut self, status: SagaStatus) {
        if status.kind() != self.record.status.kind() {
            self.events.push(HistoryEvent::StatusChanged { to: status.clone() });
        }
        self.record.status = status;
    }

    fn schedule(&mut self, after: Duration, purpose: TimerPurpose) -> TimerRecord {
        let timer = TimerRecord {
            key: TimerKey { due: self.now.plus(after), instance_id: self.record.id, timer_id: self.next_id() },
            saga: S::NAME.to_owned(),
            purpose: purpose.clone(),
            // Stamped as the unit commits, with the rest of what it produces.
            trace: Default::default(),
        };
        self.events.push(HistoryEvent::TimerScheduled { key: timer.key, purpose });
        self.timers_add.push(timer.clone());
        timer
    }

    fn clear_awaiting(&mut self) {
        if let Some(timer) = self.record.awaiting.take().and_then(|a| a.timer) {
            self.timers_remove.push(timer);
            if self.follow_up.as_ref().is_some_and(|f| f.key == timer) {
                self.follow_up = None;
            }
        }
    }

    /// Waits on an attempt of `(step, phase)`. Whether an earlier attempt of the same step and
    /// phase may have acted carries over: that does not stop being true when a retry starts.
    fn await_(&mut self, step: u32, phase: Phase, attempt: u32, timer: Option<TimerKey>, command: Option<Uuid>) {
        let outcome_unknown = self.outcome_unknown(step, phase);
        self.clear_awaiting();
        self.record.awaiting = Some(Awaiting { step, phase, attempt, timer, command, outcome_unknown });
    }

    fn outcome_unknown(&self, step: u32, phase: Phase) -> bool {
        self.record.awaiting.as_ref().is_some_and(|a| a.step == step && a.phase == phase && a.outcome_unknown)
    }

    /// A new instance: record it and enter the first step.
    pub(crate) fn start(&mut self) {
        self.events.push(HistoryEvent::Started);
        self.enter_step(0);
    }

    fn enter_step(&mut self, step: u32) {
        if step as usize >= self.def.steps.len() {
            self.clear_awaiting();
            self.set_status(SagaStatus::Completed);
        } else {
            self.begin(step, Phase::Action, 1);
        }
    }

    /// Starts an attempt of a step's action or compensation.
    pub(crate) fn begin(&mut self, step: u32, phase: Phase, attempt: u32) {
        let def = self.def;
        let Some(s) = def.steps.get(step as usize) else {
            self.fail(format!("the definition has no step #{step}: was the saga changed while instances ran?"));
            return;
        };
        let name = s.name.clone();
        let action = match phase {
            Phase::Action => {
                self.set_status(SagaStatus::Running { step });
                self.events.push(HistoryEvent::StepStarted { step, name, attempt });
                &s.action
            }
            Phase::Compensation => {
                self.set_status(SagaStatus::Compensating { step });
                self.events.push(HistoryEvent::CompensationStarted { step, name, attempt });
                match &s.compensation {
                    Some(c) => c,
                    None => {
                        self.compensation_succeeded(step);
                        return;
                    }
                }
            }
        };
        let timeout = s.phase_timeout(phase);
        match action {
            Action::Send { build, .. } => match build(&self.state, self.codec) {
                Ok((message, payload)) if payload.len() > self.max_payload => self.fail_at(
                    step,
                    phase,
                    attempt,
                    format!(
                        "the command {message} of step {} is {} bytes, more than the {} bytes a message may have \
                     (the runtime's max_message_bytes, or what the bus carries): send a reference to the data \
                     instead of the data",
                        s.name,
                        payload.len(),
                        self.max_payload
                    ),
                ),
                Ok((message, payload)) => {
                    let envelope = self.command(message, payload, step, phase);
                    let command = envelope.message_id;
                    self.events
                        .push(HistoryEvent::MessageSent(MessageRef { id: command, name: envelope.name.clone() }));
                    self.outbox.push(envelope);
                    let timer = timeout.map(|t| self.schedule(t, TimerPurpose::Timeout { step, phase, attempt }).key);
                    self.await_(step, phase, attempt, timer, Some(command));
                }
                Err(e) => {
                    self.fail_at(step, phase, attempt, format!("cannot encode the command of step {}: {e}", s.name))
                }
            },
            Action::Local(_) => {
                let lease = timeout.map_or(LOCAL_LEASE, |t| t + Duration::from_secs(1));
                let timer = self.schedule(lease, TimerPurpose::RunLocal { step, phase, attempt });
                self.await_(step, phase, attempt, Some(timer.key), None);
                self.follow_up = Some(timer);
            }
        }
    }

    fn command(&mut self, name: &str, payload: Vec<u8>, step: u32, phase: Phase) -> Envelope {
        let id = self.record.id;
        Envelope {
            message_id: self.next_id(),
            name: name.to_owned(),
            payload,
            created_at: self.now,
            correlation_id: Some(id),
            causation_id: Some(self.cause),
            reply_to: Some(S::NAME.to_owned()),
            headers: [
                (headers::CONTENT_TYPE.to_owned(), self.codec.content_type().to_owned()),
                (headers::IDEMPOTENCY_KEY.to_owned(), format!("{id}/{step}/{phase:?}")),
            ]
            .into_iter()
            .collect(),
            attempt: 1,
        }
    }

    fn action_succeeded(&mut self, step: u32) {
        self.clear_awaiting();
        let name = self.step_name(step);
        self.events.push(HistoryEvent::StepSucceeded { step, name });
        self.enter_step(step + 1);
    }

    fn compensation_succeeded(&mut self, step: u32) {
        self.clear_awaiting();
        let name = self.step_name(step);
        self.events.push(HistoryEvent::StepCompensated { step, name });
        self.compensate_from(step.checked_sub(1));
    }

    /// Begins the compensation of the highest step at or below `from` that has one.
    fn compensate_from(&mut self, from: Option<u32>) {
        let next = from.and_then(|from| (0..=from).rev().find(|j| self.def.steps[*j as usize].compensation.is_some()));
        match next {
            Some(j) => self.begin(j, Phase::Compensation, 1),
            None => {
                self.clear_awaiting();
                self.set_status(SagaStatus::Compensated);
            }
        }
    }

    fn start_compensation(&mut self, from: Option<u32>, reason: String) {
        self.record.failure = Some(reason);
        self.compensate_from(from);
    }

    /// Parks the instance for an operator.
    pub(crate) fn fail(&mut self, reason: String) {
        self.clear_awaiting();
        self.set_status(SagaStatus::Failed { reason });
    }

    /// Parks the instance for an operator where `(step, phase)` failed. The position stays in
    /// `awaiting` (without a timer or a command, so nothing fires and no reply matches), so
    /// that an operator's retry or skip knows what to run again or pass over.
    fn fail_at(&mut self, step: u32, phase: Phase, attempt: u32, reason: String) {
        let outcome_unknown = self.outcome_unknown(step, phase);
        self.fail(reason);
        self.record.awaiting = Some(Awaiting { step, phase, attempt, timer: None, command: None, outcome_unknown });
    }

    /// An operator's action (see [`crate::admin`]); `Err` says why it does not apply to the
    /// instance as it stands, and then nothing changed.
    pub(crate) fn operate(&mut self, operation: Operation, by: &str, reason: &str) -> Result<(), String> {
        let failed_at = match (&self.record.status, &self.record.awaiting) {
            (SagaStatus::Failed { .. }, Some(a)) => Some((a.step, a.phase)),
            _ => None,
        };
        if let Some((step, _)) = failed_at.filter(|(step, _)| *step as usize >= self.def.steps.len()) {
            return Err(format!("the definition has no step #{step} any more: cancel it"));
        }
        let status = self.record.status.kind();
        let note = HistoryEvent::Operator { action: operation.as_str().into(), by: by.into(), reason: reason.into() };
        match (operation, &self.record.status) {
            (Operation::Retry | Operation::Resume, SagaStatus::Failed { .. }) => {
                let (step, phase) = failed_at.ok_or_else(no_failed_step)?;
                self.events.push(note);
                self.begin(step, phase, 1);
            }
            (Operation::Skip, SagaStatus::Failed { .. }) => {
                let (step, phase) = failed_at.ok_or_else(no_failed_step)?;
                self.events.push(note);
                self.clear_awaiting();
                match phase {
                    Phase::Action => self.action_succeeded(step),
                    Phase::Compensation => self.compensation_succeeded(step),
                }
            }
            (Operation::Abort, SagaStatus::Running { step }) => {
                let step = *step;
                self.events.push(note);
                self.abort_from(step, by, reason);
            }
            (Operation::Abort, SagaStatus::Failed { .. }) => match failed_at.ok_or_else(no_failed_step)? {
                (step, Phase::Action) => {
                    self.events.push(note);
                    self.abort_from(step, by, reason);
                }
                (_, Phase::Compensation) => {
                    return Err("it failed while compensating: retry or skip the compensation".into());
                }
            },
            (Operation::Cancel, s) if !s.is_terminal() || matches!(s, SagaStatus::Failed { .. }) => {
                self.events.push(note);
                self.clear_awaiting();
                self.set_status(SagaStatus::Cancelled { reason: format!("cancelled by {by}: {reason}") });
            }
            (Operation::Abort, SagaStatus::Compensating { .. }) => return Err("it is compensating already".into()),
            (_, SagaStatus::Running { .. } | SagaStatus::Compensating { .. }) => {
                return Err(format!("it is {status}, not failed: abort or cancel it instead"));
            }
            (_, _) => return Err(format!("it is {status}: it will not move again")),
        }
        Ok(())
    }

    /// Compensates from `step` on an operator's word; the step itself too, if it has a
    /// compensation, since its command may have been carried out.
    fn abort_from(&mut self, step: u32, by: &str, reason: &str) {
        let has_compensation = self.def.steps.get(step as usize).is_some_and(|s| s.compensation.is_some());
        let from = if has_compensation { Some(step) } else { step.checked_sub(1) };
        self.clear_awaiting();
        self.start_compensation(from, format!("aborted by {by}: {reason}"));
    }

    fn attempt_failed(&mut self, step: u32, phase: Phase, attempt: u32, reason: String, cause: Cause) {
        let def = self.def;
        let s = &def.steps[step as usize];
        let id = self.record.id;
        if cause == Cause::Unknown {
            if let Some(a) = self.record.awaiting.as_mut().filter(|a| a.step == step && a.phase == phase) {
                a.outcome_unknown = true;
            }
        }
        let unknown = cause == Cause::Unknown || self.outcome_unknown(step, phase);
        match phase {
            Phase::Action => {
                self.events.push(HistoryEvent::StepFailed { step, name: s.name.clone(), reason: reason.clone() });
                let retryable = s.kind == StepKind::Retriable || cause != Cause::Refused;
                if retryable {
                    if let Some(delay) = s.action_retry().delay_before_retry(attempt, id) {
                        self.retry_later(step, phase, attempt + 1, delay);
                        return;
                    }
                }
                match s.kind {
                    StepKind::Retriable => {
                        self.fail_at(step, phase, attempt, format!("step {} failed after {attempt} attempts: {reason}", s.name))
                    }
                    // A refusal under the step's idempotency key answers for every attempt;
                    // anything less leaves open whether the point of no return was passed.
                    StepKind::Pivot if unknown && cause != Cause::Refused => self.fail_at(step, phase, attempt, format!(
                        "pivot outcome unknown: step {} got no definitive answer in {attempt} attempts (last: {reason}), \
                         so it may have been carried out and the steps before it are not compensated; find out \
                         whether it happened, then resume or compensate the instance",
                        s.name
                    )),
                    _ => {
                        let from = if unknown && s.compensation.is_some() { Some(step) } else { step.checked_sub(1) };
                        self.start_compensation(from, format!("step {} failed: {reason}", s.name));
                    }
                }
            }
            Phase::Compensation => {
                self.events.push(HistoryEvent::CompensationFailed {
                    step,
                    name: s.name.clone(),
                    reason: reason.clone(),
                });
                match s.compensation_retry.delay_before_retry(attempt, id) {
                    Some(delay) => self.retry_later(step, phase, attempt + 1, delay),
                    None => self.fail_at(
                        step,
                        phase,
                        attempt,
                        format!("compensation of step {} failed after {attempt} attempts: {reason}", s.name),
                    ),
                }
            }
        }
    }

    fn retry_later(&mut self, step: u32, phase: Phase, attempt: u32, delay: Duration) {
        let timer = self.schedule(delay, TimerPurpose::Retry { step, phase, attempt });
        self.await_(step, phase, attempt, Some(timer.key), None);
    }

    /// A participant's reply for `(step, phase)`, caused by the command `causation`.
    ///
    /// A reply belongs to the current attempt when its causation id is that attempt's command
    /// (a producer that sets no causation id is taken at its word). A failure reply to an
    /// earlier attempt is ignored: the current attempt is the one that counts, and it may
    /// still succeed. A success reply to an earlier attempt is taken: the step did act.
    pub(crate) fn on_reply(
        &mut self,
        step: u32,
        phase: Phase,
        success: bool,
        message: &str,
        decoded: &Decoded,
        causation: Option<Uuid>,
    ) {
        let (attempt, current) = match &self.record.awaiting {
            Some(a) if a.step == step && a.phase == phase => {
                let current = match (a.command, causation) {
                    (Some(command), Some(cause)) => command == cause,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                (a.attempt, current)
            }
            _ => {
                self.events.push(HistoryEvent::Ignored {
                    reason: format!("reply {message} arrived for step {} which is not awaited", self.step_name(step)),
                });
                return;
            }
        };
        if !current && !success {
            self.events.push(HistoryEvent::Ignored {
                reason: format!(
                    "{message} answers an earlier attempt of step {}; attempt {attempt} is the one that counts",
                    self.step_name(step)
                ),
            });
            return;
        }
        if let Some(h) = self.def.reply_handler(step, phase, success) {
            (h.apply)(&mut self.state, decoded);
        }
        match (phase, success) {
            (Phase::Action, true) => self.action_succeeded(step),
            (Phase::Compensation, true) => self.compensation_succeeded(step),
            (_, false) => self.attempt_failed(step, phase, attempt, format!("{message} received"), Cause::Refused),
        }
    }

    /// An integration event the saga reacts to.
    pub(crate) fn on_event(&mut self, index: usize, message: &str, decoded: &Decoded) {
        let Some(reaction) = self.def.events.get(index) else {
            return;
        };
        let outcome = (reaction.apply)(&mut self.state, decoded);
        self.events.push(HistoryEvent::EventHandled { name: message.to_owned() });
        if let EventOutcome::Abort(reason) = outcome {
            let SagaStatus::Running { step } = self.record.status else {
                self.events.push(HistoryEvent::Ignored {
                    reason: format!("{message} asked to abort, but the saga is already compensating"),
                });
                return;
            };
            let Some(s) = self.def.steps.get(step as usize) else {
                return;
            };
            if s.kind != StepKind::Compensatable {
                self.events.push(HistoryEvent::Ignored {
                    reason: format!("{message} asked to abort, but step {} is at or past the pivot", s.name),
                });
                return;
            }
            // The current step's command may already have been carried out: undo it too.
            let from = if s.compensation.is_some() { Some(step) } else { step.checked_sub(1) };
            self.start_compensation(from, format!("aborted by {message}: {reason}"));
        }
    }

    /// A fired timeout or retry timer (its match with `awaiting` is checked by the caller).
    pub(crate) fn on_timer(&mut self, timer: &TimerRecord) {
        self.events.push(HistoryEvent::TimerFired { key: timer.key });
        match timer.purpose {
            TimerPurpose::Timeout { step, phase, attempt } => {
                let waited = self.def.steps[step as usize].phase_timeout(phase).unwrap_or_default();
                self.attempt_failed(step, phase, attempt, format!("no reply within {waited:?}"), Cause::Unknown);
            }
            TimerPurpose::Retry { step, phase, attempt } => self.begin(step, phase, attempt),
            TimerPurpose::RunLocal { .. } => {}
        }
    }

    /// The outcome of a local step's run; `outcome_unknown` when the run overran its timeout
    /// or panicked, so that it may have acted before it failed.
    pub(crate) fn on_local_result(
        &mut self,
        step: u32,
        phase: Phase,
        attempt: u32,
        result: Result<S, StepError>,
        outcome_unknown: bool,
    ) {
        match result {
            Ok(state) => {
                self.state = state;
                match phase {
                    Phase::Action => self.action_succeeded(step),
                    Phase::Compensation => self.compensation_succeeded(step),
                }
            }
            Err(StepError::Transient(r)) if outcome_unknown => {
                self.attempt_failed(step, phase, attempt, r, Cause::Unknown)
            }
            Err(StepError::Transient(r)) => self.attempt_failed(step, phase, attempt, r, Cause::Transient),
            Err(StepError::Failed(r)) => self.attempt_failed(step, phase, attempt, r, Cause::Refused),
        }
    }
}

fn no_failed_step() -> String {
    "it failed outside any step (see its reason), so there is no step to run again or pass over: cancel it".into()
}
