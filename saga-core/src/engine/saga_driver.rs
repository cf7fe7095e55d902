//! Runs the units of work of one saga definition.

use std::collections::HashMap;

use uuid::Uuid;

use super::Core;
use super::driver::{Driver, Failure, Input, PendingCommit, Routed, Unit};
use super::transition::{LOCAL_LEASE, Transition};
use crate::admin::OperatorRequest;
use crate::message::{Codec, CodecExt, Envelope, Timestamp};
use crate::saga::{Action, DefinitionError, Route, Saga, SagaDefinition, StepContext, StepError, instance_id};
use crate::store::{
    Commit, HistoryEntry, HistoryEvent, InstanceRecord, InstanceWrite, MessageRef, Phase, QueueEntry, SagaStatus,
    StatusKind, StoreError, TimerKey, TimerPurpose, TimerRecord,
};

pub(crate) struct SagaDriver<S: Saga> {
    def: SagaDefinition<S>,
    routes: HashMap<&'static str, Route>,
}

impl<S: Saga> SagaDriver<S> {
    pub(crate) fn new() -> Result<Self, DefinitionError> {
        let def = S::definition();
        def.validate()?;
        let routes = def.routes()?;
        Ok(SagaDriver { def, routes })
    }

    /// The step and phase a stored record refers to, if the current definition still has it.
    fn step_exists(&self, step: u32) -> bool {
        (step as usize) < self.def.steps.len()
    }

    fn transition<'a>(
        &'a self,
        core: &'a Core,
        now: Timestamp,
        cause: Uuid,
        record: InstanceRecord,
        state: S,
    ) -> Transition<'a, S> {
        let mut t = Transition::new(&self.def, &*core.codec, now, cause, record, state);
        t.max_payload = core.max_outgoing;
        t
    }

    fn decode_state(&self, codec: &dyn Codec, record: &InstanceRecord) -> Result<S, Failure> {
        codec.decode(&record.state).map_err(|e| {
            Failure::DeadLetter(format!(
                "the stored state of saga instance {} does not decode as {}: {e}",
                record.id,
                std::any::type_name::<S>()
            ))
        })
    }

    fn commit_transition(
        &self,
        t: Transition<'_, S>,
        previous: Option<(u64, crate::store::StatusKind)>,
        cause: MessageRef,
    ) -> Result<(Commit, Option<TimerRecord>), Failure> {
        if let SagaStatus::Running { step } | SagaStatus::Compensating { step } = t.record.status {
            if let Some(s) = self.def.steps.get(step as usize) {
                tracing::Span::current().record("step", s.name.as_str());
            }
        }
        let (commit, follow_up, events) = t
            .into_commit(previous, cause)
            .map_err(|e| Failure::DeadLetter(format!("cannot encode the state of saga {}: {e}", S::NAME)))?;
        for event in &events {
            log_event(event);
        }
        Ok((commit, follow_up))
    }

    async fn on_message(
        &self,
        core: &Core,
        id: Uuid,
        envelope: &Envelope,
        decoded: &crate::saga::Decoded,
        key: &str,
        queue_entry: Option<&QueueEntry>,
    ) -> Result<Unit, Failure> {
        let route = self
            .routes
            .get(envelope.name.as_str())
            .copied()
            .ok_or_else(|| Failure::DeadLetter(format!("saga {} does not handle {}", S::NAME, envelope.name)))?;
        let existing = core.store.instance(id).await?;
        let now = core.clock.now();
        let cause = MessageRef { id: envelope.message_id, name: envelope.name.clone() };
        let (t, previous) = match (route, existing) {
            (Route::Start(i), None) => {
                if let Some(t) = super::retention::deleted_recently(core, S::NAME, id, now).await? {
                    return Ok(Unit::Skipped(format!(
                        "instance {id} already ran (it ended {} and retention deleted it; its tombstone is kept until {})",
                        t.status, t.until.0
                    )));
                }
                let Some(state) = (self.def.starts[i].init)(decoded) else {
                    return Err(Failure::DeadLetter(format!("{} did not decode as a start message", envelope.name)));
                };
                let record = InstanceRecord {
                    id,
                    saga: S::NAME.to_owned(),
                    saga_version: S::VERSION,
                    key: key.to_owned(),
                    status: SagaStatus::Running { step: 0 },
                    version: 0,
                    state: Vec::new(),
                    awaiting: None,
                    failure: None,
                    created_at: now,
                    updated_at: now,
                };
                let mut t = self.transition(core, now, envelope.message_id, record, state);
                t.start();
                (t, None)
            }
            (Route::Start(_), Some(_)) => return Ok(Unit::Skipped(format!("instance {id} already started"))),
            (_, None) => {
                return Ok(Unit::Skipped(format!("no instance {id} of saga {} for {}", S::NAME, envelope.name)));
            }
            (_, Some(record)) if record.saga != S::NAME => {
                return Ok(Unit::Skipped(format!("instance {id} belongs to saga {}", record.saga)));
            }
            (Route::Reply { step, success, .. }, Some(record)) if record.status.is_terminal() => {
                if super::already_processed(core, id, envelope, queue_entry).await? {
                    return Ok(Unit::Skipped(format!("{} {} already processed", envelope.name, envelope.message_id)));
                }
                return self.record_late_reply(core, record, cause, step, success, now).await;
            }
            (_, Some(record)) if record.status.is_terminal() => {
                return Ok(Unit::Skipped(format!("instance {id} has finished ({:?})", record.status.kind())));
            }
            (route, Some(record)) => {
                if super::already_processed(core, id, envelope, queue_entry).await? {
                    return Ok(Unit::Skipped(format!("{} {} already processed", envelope.name, envelope.message_id)));
                }
                let previous = Some((record.version, record.status.kind()));
                let state = self.decode_state(&*core.codec, &record)?;
                let mut t = self.transition(core, now, envelope.message_id, record, state);
                match route {
                    Route::Reply { step, phase, success } => {
                        t.on_reply(step, phase, success, &envelope.name, decoded, envelope.causation_id)
                    }
                    Route::Event(i) => t.on_event(i, &envelope.name, decoded),
                    Route::Start(_) => {}
                }
                (t, previous)
            }
        };
        self.commit_keeping(core, t, previous, cause, false, super::only_copy(core, queue_entry)).await
    }

    async fn commit(
        &self,
        core: &Core,
        t: Transition<'_, S>,
        previous: Option<(u64, crate::store::StatusKind)>,
        cause: MessageRef,
    ) -> Result<Unit, Failure> {
        self.commit_keeping(core, t, previous, cause, false, None).await
    }

    /// Commits a transition; with `keep`, a commit the store cannot take now is handed back to
    /// be tried again as it is (its unit ran a local step, which must not run again for it).
    async fn commit_keeping(
        &self,
        core: &Core,
        t: Transition<'_, S>,
        previous: Option<(u64, crate::store::StatusKind)>,
        cause: MessageRef,
        keep: bool,
        consumes: Option<(String, u64)>,
    ) -> Result<Unit, Failure> {
        let (mut commit, follow_up) = self.commit_transition(t, previous, cause)?;
        // Only a commit with an inbox entry can take the queue entry for it (a starting
        // commit has none: the instance it creates is its dedupe record).
        commit.consumes = consumes.filter(|_| commit.inbox.is_some());
        let timers_added = !commit.timers_add.is_empty();
        crate::crash_points::crash_point!("saga.before_commit");
        if commit.instance.as_ref().is_some_and(|w| w.record.status.kind() == crate::store::StatusKind::Compensating) {
            crate::crash_points::crash_point!("saga.during_compensation");
        }
        let kept = keep.then(|| commit.clone());
        match core.commit(commit).await {
            Ok(committed) => Ok(Unit::Committed { committed, follow_up, timers_added }),
            Err(crate::store::StoreError::Duplicate { message_id, .. }) => {
                Ok(Unit::Skipped(format!("{message_id} already processed")))
            }
            Err(e) if e.is_unavailable() => {
                let pending = kept.map(|commit| Box::new(PendingCommit { commit, follow_up, timers_added }));
                Err(Failure::Store(e, pending))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// An operator's action: a unit of work like a message's, deduplicated by the request's id
    /// in the instance's inbox and version-checked, so that it and a message racing it on
    /// another process serialize (the loser re-runs on what the winner wrote).
    async fn on_operator(&self, core: &Core, id: Uuid, request: &OperatorRequest) -> Result<Unit, Failure> {
        let action = request.operation.as_str();
        let Some(record) = core.store.instance(id).await? else {
            return Ok(request.refuse("there is no such instance"));
        };
        if record.saga != S::NAME {
            return Ok(request.refuse(&format!("it belongs to saga {}", record.saga)));
        }
        if core.store.processed(id, request.id).await? {
            return Ok(Unit::Skipped(format!("operator request {} already applied", request.id)));
        }
        let previous = Some((record.version, record.status.kind()));
        let state = match self.decode_state(&*core.codec, &record) {
            Ok(state) => state,
            Err(Failure::DeadLetter(reason)) => return Ok(request.refuse(&reason)),
            Err(other) => return Err(other),
        };
        let now = core.clock.now();
        let mut t = self.transition(core, now, request.id, record, state);
        if let Err(reason) = t.operate(request.operation, &request.by, &request.reason) {
            return Ok(request.refuse(&reason));
        }
        let cause = MessageRef { id: request.id, name: format!("operator:{action}") };
        self.commit(core, t, previous, cause).await
    }

    async fn on_timer(&self, core: &Core, timer: &TimerRecord) -> Result<Unit, Failure> {
        let id = timer.key.instance_id;
        let cause = MessageRef { id: timer.key.timer_id, name: timer.purpose.cause_name().to_owned() };
        let record = match core.store.instance(id).await? {
            Some(r) if !r.status.is_terminal() && r.saga == S::NAME => r,
            _ => return self.drop_timer(core, timer).await,
        };
        if record.awaiting.as_ref().and_then(|a| a.timer) != Some(timer.key) {
            return self.drop_timer(core, timer).await;
        }
        let (step, phase, attempt) = match timer.purpose {
            TimerPurpose::Timeout { step, phase, attempt }
            | TimerPurpose::Retry { step, phase, attempt }
            | TimerPurpose::RunLocal { step, phase, attempt } => (step, phase, attempt),
        };
        let previous = Some((record.version, record.status.kind()));
        let now = core.clock.now();
        let state = match self.decode_state(&*core.codec, &record) {
            Ok(state) => state,
            // A timer cannot be dead-lettered: park the instance, or it would fire forever.
            Err(Failure::DeadLetter(reason)) => return self.park(core, record, timer, reason, now).await,
            Err(other) => return Err(other),
        };
        if !self.step_exists(step) {
            let mut t = self.transition(core, now, timer.key.timer_id, record, state);
            t.fail(format!("the definition has no step #{step}: was the saga changed while instances ran?"));
            return self.commit(core, t, previous, cause).await;
        }
        if let TimerPurpose::RunLocal { .. } = timer.purpose {
            let run = self.run_local(core, &record, step, phase, attempt);
            let Some(ran) = super::timers::keep_claimed(core, timer.key, run).await else {
                return Ok(Unit::Skipped(format!("another process holds the lease of local step #{step}")));
            };
            let (result, outcome_unknown) = ran?;
            let mut t = self.transition(core, core.clock.now(), timer.key.timer_id, record, state);
            t.events.push(HistoryEvent::TimerFired { key: timer.key });
            t.on_local_result(step, phase, attempt, result, outcome_unknown);
            return self.commit_keeping(core, t, previous, cause, true, None).await;
        }
        let mut t = self.transition(core, now, timer.key.timer_id, record, state);
        t.on_timer(timer);
        self.commit(core, t, previous, cause).await
    }

    async fn run_local(
        &self,
        core: &Core,
        record: &InstanceRecord,
        step: u32,
        phase: Phase,
        attempt: u32,
    ) -> Result<(Result<S, StepError>, bool), Failure> {
        let s = &self.def.steps[step as usize];
        let action = match phase {
            Phase::Action => Some(&s.action),
            Phase::Compensation => s.compensation.as_ref(),
        };
        let Some(Action::Local(run)) = action else {
            let reason = format!("step {} has no local code to run", s.name);
            return Ok((Err(StepError::Failed(reason)), false));
        };
        let state = self.decode_state(&*core.codec, record)?;
        let ctx = StepContext {
            instance_id: record.id,
            saga: S::NAME,
            step: s.name.clone(),
            attempt,
            idempotency_key: format!("{}/{step}/{phase:?}", record.id),
        };
        // Local code runs in real time, whatever the runtime's clock: it does real work. It
        // holds its lane while it runs, so it is always bounded (by the lease without a timeout).
        // A panic is a failed attempt like any other, under the step's retry policy, and one
        // whose outcome is unknown: the code may have acted before it panicked.
        let limit = s.phase_timeout(phase).unwrap_or(LOCAL_LEASE);
        let run = crate::panics::catch(|| run(state, ctx)).map(|run| tokio::time::timeout(limit, run));
        Ok(match run {
            Ok(run) => match crate::panics::catch_async(run).await {
                Ok(Ok(result)) => (result, false),
                Ok(Err(_)) => (Err(StepError::Transient(format!("did not finish within {limit:?}"))), true),
                Err(panic) => (Err(StepError::Transient(format!("panicked: {panic}"))), true),
            },
            Err(panic) => (Err(StepError::Transient(format!("panicked: {panic}"))), true),
        })
    }

    /// Records, in history only, a reply that reached an instance after it finished.
    async fn record_late_reply(
        &self,
        core: &Core,
        record: InstanceRecord,
        cause: MessageRef,
        step: u32,
        success: bool,
        now: Timestamp,
    ) -> Result<Unit, Failure> {
        let status = record.status.kind();
        let step_name = self.def.steps.get(step as usize).map_or("?", |s| s.name.as_str());
        if success && status == StatusKind::Failed {
            tracing::warn!(
                instance = %record.id,
                step = %step_name,
                reply = %cause.name,
                "a success reply reached an instance parked as failed: the step did act (see its history)"
            );
        } else {
            tracing::info!(instance = %record.id, step = %step_name, reply = %cause.name, ?status, "late reply recorded");
        }
        let event = HistoryEvent::LateReply { name: cause.name.clone(), success, status };
        let previous = (record.version, status);
        self.commit_record(core, record, previous, cause, vec![event], Vec::new(), now).await
    }

    /// Commits `record` (already changed, apart from its version) with a history entry of
    /// `events`, without running the state machine (whose state may not even decode).
    #[allow(clippy::too_many_arguments)]
    async fn commit_record(
        &self,
        core: &Core,
        mut record: InstanceRecord,
        previous: (u64, StatusKind),
        cause: MessageRef,
        events: Vec<HistoryEvent>,
        timers_remove: Vec<TimerKey>,
        now: Timestamp,
    ) -> Result<Unit, Failure> {
        let previous_updated_at = Some(record.updated_at);
        record.version = previous.0 + 1;
        record.updated_at = now;
        let history = HistoryEntry { version: record.version, at: now, cause: Some(cause.clone()), events };
        let commit = Commit {
            inbox: Some((record.id, cause.id)),
            instance: Some(InstanceWrite { record, previous: Some(previous), previous_updated_at }),
            timers_remove,
            history: Some(history),
            ..Commit::default()
        };
        match core.commit(commit).await {
            Ok(committed) => Ok(Unit::Committed { committed, follow_up: None, timers_added: false }),
            Err(StoreError::Duplicate { message_id, .. }) => {
                Ok(Unit::Skipped(format!("{message_id} already processed")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Marks an instance `Failed` without touching its state (which may not decode).
    async fn park(
        &self,
        core: &Core,
        mut record: InstanceRecord,
        timer: &TimerRecord,
        reason: String,
        now: Timestamp,
    ) -> Result<Unit, Failure> {
        tracing::error!(saga = S::NAME, instance = %record.id, %reason, "parking a saga instance as failed");
        let previous = (record.version, record.status.kind());
        let mut timers_remove = vec![timer.key];
        timers_remove.extend(record.awaiting.take().and_then(|a| a.timer).filter(|k| *k != timer.key));
        record.status = SagaStatus::Failed { reason };
        let events = vec![HistoryEvent::StatusChanged { to: record.status.clone() }];
        let cause = MessageRef { id: timer.key.timer_id, name: timer.purpose.cause_name().to_owned() };
        self.commit_record(core, record, previous, cause, events, timers_remove, now).await
    }

    async fn drop_timer(&self, core: &Core, timer: &TimerRecord) -> Result<Unit, Failure> {
        let committed = core.commit(Commit { timers_remove: vec![timer.key], ..Commit::default() }).await?;
        Ok(Unit::Committed { committed, follow_up: None, timers_added: false })
    }
}

fn log_event(event: &HistoryEvent) {
    match event {
        HistoryEvent::StepStarted { step, name, attempt } => {
            tracing::info!(step = %name, index = step, attempt, "step started")
        }
        HistoryEvent::StepSucceeded { name, .. } => tracing::info!(step = %name, "step succeeded"),
        HistoryEvent::StepFailed { name, reason, .. } => tracing::info!(step = %name, %reason, "step failed"),
        HistoryEvent::CompensationStarted { name, attempt, .. } => {
            tracing::info!(step = %name, attempt, "compensation started")
        }
        HistoryEvent::StepCompensated { name, .. } => tracing::info!(step = %name, "step compensated"),
        HistoryEvent::CompensationFailed { name, reason, .. } => {
            tracing::info!(step = %name, %reason, "compensation failed")
        }
        HistoryEvent::StatusChanged { to: to @ SagaStatus::Failed { .. } } => {
            tracing::warn!(status = ?to, "saga parked as failed: it needs an operator")
        }
        HistoryEvent::StatusChanged { to } => tracing::info!(status = ?to, "saga status changed"),
        HistoryEvent::Ignored { reason } => tracing::debug!(%reason, "message ignored"),
        HistoryEvent::Operator { action, by, reason } => tracing::info!(%action, %by, %reason, "operator action"),
        _ => tracing::trace!(?event, "saga history"),
    }
}

#[async_trait::async_trait]
impl<S: Saga> Driver for SagaDriver<S> {
    fn name(&self) -> &str {
        S::NAME
    }

    fn is_saga(&self) -> bool {
        true
    }

    fn subscription(&self) -> String {
        format!("saga.{}", S::NAME)
    }

    fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.routes.keys().copied().collect();
        names.sort_unstable();
        names
    }

    fn route(&self, codec: &dyn Codec, envelope: &Envelope) -> Result<Routed, String> {
        let route =
            self.routes.get(envelope.name.as_str()).copied().ok_or_else(|| {
                format!("unknown message name {:?}: saga {} does not handle it", envelope.name, S::NAME)
            })?;
        let decode = match route {
            Route::Start(i) => &self.def.starts[i].decode,
            Route::Event(i) => &self.def.events[i].decode,
            Route::Reply { step, phase, success } => match self.def.reply_handler(step, phase, success) {
                Some(h) => &h.decode,
                None => return Err(format!("saga {} has no handler for reply {}", S::NAME, envelope.name)),
            },
        };
        let (key, decoded) = decode(codec, envelope).map_err(|e| format!("undecodable {}: {e}", envelope.name))?;
        let (lane_key, key) = match route {
            Route::Reply { .. } => match envelope.correlation_id {
                Some(id) => (id, String::new()),
                None => {
                    return Err(format!("reply {} carries no correlation id: it cannot find its saga", envelope.name));
                }
            },
            Route::Start(_) | Route::Event(_) => match key {
                Some(key) => (instance_id(S::NAME, &key), key),
                None => {
                    return Err(format!("{} has no correlation key: it cannot find its saga", envelope.name));
                }
            },
        };
        let input = Input::Message { envelope: envelope.clone(), decoded: Some(decoded), key, queue_entry: None };
        Ok(Routed { lane_key, input })
    }

    async fn process(&self, core: &Core, lane_key: Uuid, input: &Input) -> Result<Unit, Failure> {
        match input {
            Input::Message { envelope, decoded: Some(decoded), key, queue_entry } => {
                self.on_message(core, lane_key, envelope, decoded, key, queue_entry.as_ref()).await
            }
            Input::Message { envelope, decoded: None, .. } => {
                Err(Failure::DeadLetter(format!("{} reached saga {} undecoded", envelope.name, S::NAME)))
            }
            Input::Timer(timer) => self.on_timer(core, timer).await,
            Input::Operator(request) => {
                let unit = self.on_operator(core, lane_key, request).await;
                request.answer(&unit);
                unit
            }
        }
    }

    fn diagram(&self) -> Option<crate::saga::diagram::Diagram> {
        Some(self.def.diagram())
    }

    fn step_name(&self, step: u32) -> Option<String> {
        self.def.steps.get(step as usize).map(|s| s.name.clone())
    }

    fn sends(&self) -> Vec<(String, &'static str)> {
        let mut sends = Vec::new();
        for step in &self.def.steps {
            for action in std::iter::once(&step.action).chain(step.compensation.as_ref()) {
                if let Some(command) = action.command() {
                    sends.push((step.name.clone(), command));
                }
            }
        }
        sends
    }

    async fn park_timer(&self, core: &Core, timer: &TimerRecord, reason: String) -> Result<Unit, Failure> {
        match core.store.instance(timer.key.instance_id).await? {
            Some(record) if !record.status.is_terminal() && record.saga == S::NAME => {
                let reason = format!("a timer's unit of work failed: {reason}");
                self.park(core, record, timer, reason, core.clock.now()).await
            }
            _ => self.drop_timer(core, timer).await,
        }
    }
}
