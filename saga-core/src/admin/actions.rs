//! Operators' actions on instances: retry, skip, abort, resume, cancel.
//!
//! An action is not applied by the caller: it is queued on the instance's lane as a unit of
//! work of its own, next to the messages and timers of that instance, so that it never runs
//! beside one of them in this process. Like theirs, its commit is version-checked (a message
//! handled meanwhile by another process on a shared store makes it re-run on what that one
//! wrote) and deduplicated by the request's id in the instance's inbox, and the history
//! records who asked, when and why. Whether it applies is decided in that unit, on the
//! instance as it stands then; the caller gets the refusal and its reason back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Admin, InstanceSummary};
use crate::Error;
use crate::engine::driver::{Failure, Unit};
use crate::store::InstanceQuery;

/// How long [`Admin::act`] waits for its unit of work (behind the instance's queued work).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// What an operator can do to an instance.
///
/// | action | applies to | does |
/// | --- | --- | --- |
/// | `Retry` | `Failed` at a step | runs the step (or compensation) that failed again, attempts counted from 1 |
/// | `Skip` | `Failed` at a step | marks that step (or compensation) done and goes on |
/// | `Abort` | `Running`, or `Failed` at a step's action | compensates now, the current step included if it has a compensation |
/// | `Resume` | `Failed` at a step | goes on from where it was parked (for a parked step: as `Retry`) |
/// | `Cancel` | anything not finished, or `Failed` | stops it as `Cancelled`, compensating nothing |
///
/// ```
/// use saga_core::admin::Operation;
/// assert_eq!("retry".parse::<Operation>().unwrap(), Operation::Retry);
/// assert_eq!(Operation::Cancel.as_str(), "cancel");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Run the failed step or compensation again.
    Retry,
    /// Mark the failed step or compensation done and go on.
    Skip,
    /// Compensate now.
    Abort,
    /// Go on from where the instance was parked.
    Resume,
    /// Stop without compensating.
    Cancel,
}

impl Operation {
    /// Every action.
    pub const ALL: [Operation; 5] =
        [Operation::Retry, Operation::Skip, Operation::Abort, Operation::Resume, Operation::Cancel];

    /// Its name in lower case, as the history, the HTTP endpoint and the CLI write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Retry => "retry",
            Operation::Skip => "skip",
            Operation::Abort => "abort",
            Operation::Resume => "resume",
            Operation::Cancel => "cancel",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action name that is none of [`Operation::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}: retry, skip, abort, resume or cancel")]
pub struct UnknownOperation(pub String);

impl std::str::FromStr for Operation {
    type Err = UnknownOperation;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|o| o.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownOperation(s.into()))
    }
}

/// How a request ended, as its unit of work tells the caller.
enum Answer {
    Applied,
    /// Nothing to do: the request was applied before.
    Skipped,
    Refused(String),
    Failed(String),
}

/// An action on its way through an instance's lane.
pub(crate) struct OperatorRequest {
    /// Its id: the instance's inbox entry for it, and the cause of what it sends.
    pub(crate) id: Uuid,
    pub(crate) operation: Operation,
    pub(crate) by: String,
    pub(crate) reason: String,
    reply: Mutex<Option<oneshot::Sender<Answer>>>,
}

impl OperatorRequest {
    fn send(&self, answer: Answer) {
        if let Some(tx) = self.reply.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(answer);
        }
    }

    /// Refuses the request with `reason`; the unit does nothing.
    pub(crate) fn refuse(&self, reason: &str) -> Unit {
        self.send(Answer::Refused(reason.to_owned()));
        Unit::Skipped(format!("operator's {} refused: {reason}", self.operation))
    }

    /// Tells the caller how the unit ended, unless it is to run again (a conflict, an outage).
    pub(crate) fn answer(&self, unit: &Result<Unit, Failure>) {
        match unit {
            Ok(Unit::Committed { .. }) => self.send(Answer::Applied),
            Ok(Unit::Skipped(_)) => self.send(Answer::Skipped),
            Err(Failure::Retry(reason) | Failure::DeadLetter(reason)) => self.send(Answer::Failed(reason.clone())),
            Err(Failure::Conflict | Failure::Store(..)) => {}
        }
    }
}

/// What happened to one instance in a bulk action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ActionResult {
    /// The instance.
    pub id: Uuid,
    /// Whether the action was applied.
    pub applied: bool,
    /// Why not, when it was not.
    pub reason: Option<String>,
}

impl Admin {
    /// Applies `operation` to instance `id`, recorded in its history as done by `by` for
    /// `reason`, and returns the instance as it stands after it (durably). An action that
    /// does not apply to the instance's status is refused with [`Error::Refused`], naming
    /// why; so is one for a saga this runtime does not run. No such instance:
    /// [`Error::NotFound`].
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{admin::Operation, engine::SagaRuntime, store::MemoryStore};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// let err = runtime.admin().act(uuid::Uuid::nil(), Operation::Retry, "ops", "card fixed").await.unwrap_err();
    /// assert!(matches!(err, saga_core::Error::NotFound(_)), "{err}");
    /// # });
    /// ```
    pub async fn act(&self, id: Uuid, operation: Operation, by: &str, reason: &str) -> Result<InstanceSummary, Error> {
        let refused = |reason: String| Error::Refused { action: operation.as_str(), instance: id, reason };
        let Some(record) = self.core.store.instance(id).await? else {
            return Err(Error::NotFound(format!("instance {id}")));
        };
        let (tx, rx) = oneshot::channel();
        let request = Arc::new(OperatorRequest {
            id: Uuid::now_v7(),
            operation,
            by: by.to_owned(),
            reason: reason.to_owned(),
            reply: Mutex::new(Some(tx)),
        });
        if !self.core.dispatch_operator(&record.saga, id, request).await {
            return Err(refused(format!("this runtime does not run saga {}: ask one that does", record.saga)));
        }
        let answer = match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                return Err(refused("its unit of work ended without an answer (see the runtime's log)".into()));
            }
            Err(_) => return Err(refused(format!("no answer within {ANSWER_WITHIN:?}: the instance's lane is busy"))),
        };
        match answer {
            Answer::Applied | Answer::Skipped => {
                self.core.store.barrier().await?;
                let record = self.core.store.instance(id).await?.ok_or_else(|| refused("it is gone".into()))?;
                Ok(self.summary(&record))
            }
            Answer::Refused(reason) => Err(refused(reason)),
            Answer::Failed(reason) => Err(refused(format!("its unit of work failed: {reason}"))),
        }
    }

    /// Applies `operation` to every instance that matches `query` (up to `limit` of them),
    /// one after the other, and says for each whether it applied.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use saga_core::{admin::Operation, engine::SagaRuntime, store::{InstanceQuery, MemoryStore, StatusKind}};
    /// let runtime = SagaRuntime::builder().store(MemoryStore::new()).build().await.unwrap();
    /// let failed = InstanceQuery::default().status(StatusKind::Failed);
    /// let results = runtime.admin().act_on(&failed, Operation::Abort, "ops", "supplier gone", 100).await.unwrap();
    /// assert!(results.is_empty());
    /// # });
    /// ```
    pub async fn act_on(
        &self,
        query: &InstanceQuery,
        operation: Operation,
        by: &str,
        reason: &str,
        limit: usize,
    ) -> Result<Vec<ActionResult>, Error> {
        // The ids first: acting changes statuses, which would move instances within the
        // listing being walked.
        let mut ids = Vec::new();
        let mut query = query.clone();
        while ids.len() < limit {
            let page = self.list(&query, limit - ids.len()).await?;
            ids.extend(page.instances.iter().map(|i| i.id));
            match page.next {
                Some(next) => query = query.after(Some(next)),
                None => break,
            }
        }
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            let result = match self.act(id, operation, by, reason).await {
                Ok(_) => ActionResult { id, applied: true, reason: None },
                Err(Error::Refused { reason, .. }) => ActionResult { id, applied: false, reason: Some(reason) },
                // Gone since it was listed (retention deleted it, say).
                Err(Error::NotFound(what)) => {
                    ActionResult { id, applied: false, reason: Some(format!("{what} is gone")) }
                }
                Err(other) => return Err(other),
            };
            results.push(result);
        }
        Ok(results)
    }
}
