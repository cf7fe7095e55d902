//! Operators' actions (`Admin::act`, `Admin::act_on`) on the trip saga: retry, skip, abort,
//! resume and cancel where they apply, refused with the reason where they do not, in bulk by
//! filter, racing the participants' replies, and a dead letter replayed; on the memory, sled and PostgreSQL stores
//! (the last when `SAGA_TEST_POSTGRES_URL` is set, feature `postgres`).

mod common;

use std::time::Duration;

use common::*;
use sagaflow::Error;
use sagaflow::admin::Operation;
use sagaflow::prelude::*;
use sagaflow::saga::instance_id;
use sagaflow::store::{HistoryEvent, InstanceQuery, Store};

const WAIT: Duration = Duration::from_secs(60);

fn id(trip: u32) -> uuid::Uuid {
    instance_id(Trip::NAME, &trip.to_string())
}

async fn book(runtime: &SagaRuntime, trips: std::ops::Range<u32>) {
    for trip in trips {
        runtime.publish(&BookTrip { trip }).await.unwrap();
    }
}

/// Waits until `trip` has a status of `kind`.
async fn reaches(runtime: &SagaRuntime, trip: u32, kind: StatusKind) -> SagaStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = status(runtime, trip).await.filter(|s| s.kind() == kind) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "trip {trip} never became {kind}: {:?}",
            status(runtime, trip).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn refused(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn operator_actions_apply_where_they_make_sense(store: impl Store) {
    let script = Script::default();
    // Trips 0 and 1: the hotel refuses and so does the flight's cancellation: parked as failed
    // while compensating. Trip 2: the hotel never answers (the saga waits on it).
    for trip in [0, 1] {
        script.answer(BookHotel::NAME, trip, Answer::Refuse).answer(CancelFlight::NAME, trip, Answer::Refuse);
    }
    script.answer(BookHotel::NAME, 2, Answer::Ignore);
    script.answer(BookHotel::NAME, 3, Answer::Ignore);
    let runtime = trip_runtime(&script).store(store).build().await.unwrap();
    let admin = runtime.admin();
    let store = runtime.store();
    book(&runtime, 0..5).await;
    for trip in [0, 1] {
        reaches(&runtime, trip, StatusKind::Failed).await;
    }
    runtime.wait_until_terminal(&[id(4)], WAIT).await.unwrap();

    // Refusals: nothing to retry on a running or a completed instance; a compensation that
    // failed cannot be aborted.
    reaches(&runtime, 2, StatusKind::Running).await;
    assert!(refused(admin.act(id(2), Operation::Retry, "ann", "why not").await).contains("not failed"));
    assert!(refused(admin.act(id(4), Operation::Retry, "ann", "why not").await).contains("completed"));
    assert!(refused(admin.act(id(0), Operation::Abort, "ann", "why not").await).contains("compensating"));
    let missing = admin.act(uuid::Uuid::nil(), Operation::Cancel, "ann", "x").await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Retry: the cancellation is fixed, run again (once), and the trip ends compensated. (A
    // participant counts every command it handled, the refused ones too.)
    let tries = effects(&*store, CancelFlight::NAME, 0).await;
    script.answer(CancelFlight::NAME, 0, Answer::Succeed);
    let after = admin.act(id(0), Operation::Retry, "ann", "airline fixed its API").await.unwrap();
    // It compensates again (and may be done already: the airline answers at once).
    assert!(matches!(after.status, StatusKind::Compensating | StatusKind::Compensated), "{after:?}");
    runtime.wait_until_terminal(&[id(0)], WAIT).await.unwrap();
    assert_eq!(status(&runtime, 0).await, Some(SagaStatus::Compensated));
    assert_eq!(effects(&*store, CancelFlight::NAME, 0).await, tries + 1);
    let history = runtime.history(id(0), usize::MAX).await.unwrap();
    assert!(history.iter().flat_map(|h| &h.events).any(|e| matches!(e,
        HistoryEvent::Operator { action, by, reason } if action == "retry" && by == "ann" && reason == "airline fixed its API")));

    // Skip: trip 1's cancellation is done by hand; the saga is told so and finishes, sending
    // nothing more.
    let tries = effects(&*store, CancelFlight::NAME, 1).await;
    admin.act(id(1), Operation::Skip, "bob", "cancelled by phone").await.unwrap();
    assert_eq!(status(&runtime, 1).await, Some(SagaStatus::Compensated));
    runtime.settle().await;
    assert_eq!(effects(&*store, CancelFlight::NAME, 1).await, tries);

    // Abort: trip 2 waits on the hotel; it is compensated now, the hotel's booking included.
    admin.act(id(2), Operation::Abort, "ann", "customer called").await.unwrap();
    runtime.wait_until_terminal(&[id(2)], WAIT).await.unwrap();
    assert_eq!(status(&runtime, 2).await, Some(SagaStatus::Compensated));
    assert_eq!(effects(&*store, CancelHotel::NAME, 2).await, 1);
    assert_eq!(effects(&*store, CancelFlight::NAME, 2).await, 1);

    // Cancel: trip 3 stops where it is, nothing compensated, its timeout gone.
    let cancelled = admin.act(id(3), Operation::Cancel, "ann", "duplicate order").await.unwrap();
    assert_eq!(cancelled.status, StatusKind::Cancelled);
    assert_eq!(cancelled.reason.as_deref(), Some("cancelled by ann: duplicate order"));
    assert_eq!(effects(&*store, CancelFlight::NAME, 3).await, 0);
    assert!(runtime.pending_timers(10).await.unwrap().iter().all(|t| t.key.instance_id != id(3)));
    assert!(refused(admin.act(id(3), Operation::Resume, "ann", "oops").await).contains("cancelled"));
    runtime.shutdown().await.unwrap();
}

async fn a_bulk_retry_by_filter_resumes_every_failed_instance(store: impl Store) {
    let script = Script::default();
    for trip in 0..6 {
        script.answer(BookHotel::NAME, trip, Answer::Refuse).answer(CancelFlight::NAME, trip, Answer::Refuse);
    }
    let runtime = trip_runtime(&script).store(store).build().await.unwrap();
    book(&runtime, 0..8).await;
    let mut tries = Vec::new();
    for trip in 0..6 {
        reaches(&runtime, trip, StatusKind::Failed).await;
        script.answer(CancelFlight::NAME, trip, Answer::Succeed);
        tries.push(effects(&*runtime.store(), CancelFlight::NAME, trip).await);
    }
    runtime.wait_until_terminal(&[id(6), id(7)], WAIT).await.unwrap();
    let failed = InstanceQuery::default().saga(Trip::NAME).status(StatusKind::Failed);
    let results = runtime.admin().act_on(&failed, Operation::Retry, "ops", "airline back", 100).await.unwrap();
    assert_eq!(results.len(), 6);
    assert!(results.iter().all(|r| r.applied), "{results:?}");
    let ids: Vec<_> = (0..8).map(id).collect();
    runtime.wait_until_terminal(&ids, WAIT).await.unwrap();
    for trip in 0..6 {
        assert_eq!(status(&runtime, trip).await, Some(SagaStatus::Compensated), "trip {trip}");
        let ran = effects(&*runtime.store(), CancelFlight::NAME, trip).await;
        assert_eq!(ran, tries[trip as usize] + 1, "trip {trip}: the cancellation ran once more");
    }
    // Nothing failed is left: a second bulk retry finds nothing to do.
    assert!(runtime.admin().act_on(&failed, Operation::Retry, "ops", "again", 100).await.unwrap().is_empty());
    runtime.shutdown().await.unwrap();
}

/// Aborts sent while the hotel's replies arrive: whichever the lane takes first, the other
/// runs on what it wrote (a reply after the abort is ignored; an abort after the reply
/// compensates from the next step, or is refused once the trip completed), and every trip
/// ends with each booking undone once or not at all.
async fn an_abort_racing_the_replies_undoes_each_booking_once(store: impl Store) {
    const TRIPS: u32 = 30;
    let script = Script::default();
    for trip in 0..TRIPS {
        script.answer(BookHotel::NAME, trip, Answer::Ignore);
    }
    let runtime = trip_runtime(&script).store(store).build().await.unwrap();
    let admin = runtime.admin();
    book(&runtime, 0..TRIPS).await;
    for trip in 0..TRIPS {
        reaches(&runtime, trip, StatusKind::Running).await;
    }
    runtime.settle().await;
    // Every trip waits on its hotel now: the replies (as the hotel would send them) and the
    // aborts go out together.
    let replies = async {
        for trip in 0..TRIPS {
            runtime.publish(&HotelBooked { trip }).await.unwrap();
        }
    };
    let aborts = async {
        let mut aborted = Vec::new();
        for trip in 0..TRIPS {
            match admin.act(id(trip), Operation::Abort, "ops", "race").await {
                Ok(_) => aborted.push(trip),
                Err(Error::Refused { .. }) => {} // it completed first
                Err(other) => panic!("trip {trip}: {other}"),
            }
        }
        aborted
    };
    let ((), aborted) = tokio::join!(replies, aborts);
    assert!(!aborted.is_empty(), "some aborts came first");
    let ids: Vec<_> = (0..TRIPS).map(id).collect();
    runtime.wait_until_terminal(&ids, WAIT).await.unwrap();
    runtime.settle().await;
    let store = runtime.store();
    for trip in 0..TRIPS {
        let status = status(&runtime, trip).await.unwrap();
        let undone = u32::from(aborted.contains(&trip));
        let expected = if undone == 1 { SagaStatus::Compensated } else { SagaStatus::Completed };
        assert_eq!(status, expected, "trip {trip}");
        assert_eq!(effects(&*store, CancelFlight::NAME, trip).await, undone, "trip {trip}'s flight");
        assert_eq!(effects(&*store, CancelHotel::NAME, trip).await, undone, "trip {trip}'s hotel");
    }
    runtime.shutdown().await.unwrap();
}

async fn a_dead_letter_replayed_once_its_cause_is_fixed_completes_its_saga(store: impl Store) {
    let script = Script::default();
    script.answer(BookHotel::NAME, 0, Answer::Fail);
    let runtime = trip_runtime(&script).store(store).build().await.unwrap();
    let admin = runtime.admin();
    book(&runtime, 0..1).await;
    let deadline = std::time::Instant::now() + WAIT;
    let dead = loop {
        let found = admin.dead_letters(None, 10).await.unwrap();
        if let Some(dead) = found.into_iter().find(|d| d.message.name == BookHotel::NAME) {
            break dead;
        }
        assert!(std::time::Instant::now() < deadline, "the hotel's booking was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.instance, Some(id(0)));
    assert!(dead.message.reason.as_deref().is_some_and(|r| r.contains("is down")), "{dead:?}");
    assert_eq!(status(&runtime, 0).await.map(|s| s.kind()), Some(StatusKind::Running), "the saga waits for the hotel");

    script.answer(BookHotel::NAME, 0, Answer::Succeed);
    let subscription = dead.message.subscription.clone().unwrap();
    let replayed = admin.replay_dead_letter(&subscription, dead.message.message_id, "ann", "hotel API back");
    assert_eq!(replayed.await.unwrap(), 1);
    runtime.wait_until_terminal(&[id(0)], WAIT).await.unwrap();
    assert_eq!(status(&runtime, 0).await, Some(SagaStatus::Completed));
    assert_eq!(effects(&*runtime.store(), BookHotel::NAME, 0).await, 1);
    assert!(admin.dead_letters(Some(&subscription), 10).await.unwrap().is_empty());
    let again = admin.replay_dead_letter(&subscription, dead.message.message_id, "ann", "twice").await;
    assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");
    let gone = admin.discard_dead_letter(&subscription, dead.message.message_id, "ann", "twice").await;
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    runtime.shutdown().await.unwrap();
}

macro_rules! on_every_store {
    ($($test:ident),*) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(sagaflow::store::MemoryStore::new()).await;
            })*
        }
        #[cfg(feature = "sled")]
        mod sled {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let dir = tempfile::tempdir().unwrap();
                super::$test(sagaflow::store::SledStore::open(dir.path()).unwrap()).await;
            })*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let Some(target) = sagaflow::store::PostgresTarget::from_env() else { return };
                super::$test(target.fresh_store().await).await;
            })*
        }
    };
}

on_every_store!(
    operator_actions_apply_where_they_make_sense,
    a_bulk_retry_by_filter_resumes_every_failed_instance,
    an_abort_racing_the_replies_undoes_each_booking_once,
    a_dead_letter_replayed_once_its_cause_is_fixed_completes_its_saga
);
