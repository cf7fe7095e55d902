//! The test harness itself: virtual time, phases, stubs, faults and failure messages.

mod common;

use std::time::Duration;

use common::*;
use sagaflow::message::Message;
use sagaflow::prelude::*;
use sagaflow::store::HistoryEvent;
use sagaflow::testing::{SagaTestHarness, Scenario, Stub};

/// The trip saga with every participant stubbed to succeed, except as `adjust` says.
fn trips() -> SagaTestHarness {
    SagaTestHarness::new()
        .saga::<Trip>()
        .stub(|c: &BookFlight| Stub::reply(FlightBooked { trip: c.trip }))
        .stub(|c: &BookHotel| Stub::reply(HotelBooked { trip: c.trip }))
        .stub(|c: &CancelHotel| Stub::reply(HotelCancelled { trip: c.trip }))
}

#[tokio::test]
async fn advance_fires_timers_rescheduled_on_the_way_in_due_order() {
    let h = trips()
        .stub(|c: &Charge| Stub::reply(ChargeRefused { trip: c.trip }))
        .stub(|c: &CancelFlight| Stub::reply(FlightCancelRefused { trip: c.trip }))
        .start()
        .await;
    h.publish(&BookTrip { trip: 1 }).await;
    h.settle().await;
    h.expect_saga::<Trip>("1").await.assert_status(&SagaStatus::Compensating { step: 0 });

    // Retries at +100 ms and +200 ms (no jitter), each scheduled by the one before.
    h.advance(Duration::from_secs(1)).await;
    let saga = h.expect_saga::<Trip>("1").await;
    assert!(matches!(saga.status(), SagaStatus::Failed { .. }), "{saga:?}");
    let attempts: Vec<u32> = saga
        .history()
        .iter()
        .flat_map(|h| &h.events)
        .filter_map(|e| match e {
            HistoryEvent::CompensationStarted { name, attempt, .. } if name == "book_flight" => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[tokio::test]
async fn published_and_sent_only_show_the_current_phase() {
    let h = trips().stub(|c: &Charge| Stub::reply(Charged { trip: c.trip })).start().await;
    h.publish(&BookTrip { trip: 1 }).await;
    h.settle().await;
    assert_eq!(h.sent::<BookFlight>(), [BookFlight { trip: 1 }]);
    assert_eq!(h.published::<FlightBooked>().len(), 1, "replies are published, not sent");

    h.new_phase();
    h.publish(&BookTrip { trip: 2 }).await;
    h.settle().await;
    assert_eq!(h.sent::<BookFlight>(), [BookFlight { trip: 2 }]);
}

#[tokio::test]
async fn reordered_deliveries_reach_the_same_outcome() {
    let h = trips().stub(|c: &Charge| Stub::reply(Charged { trip: c.trip })).reorder_deliveries(4, 7).start().await;
    for trip in 0..10 {
        h.publish(&BookTrip { trip }).await;
    }
    h.settle().await;
    for trip in 0..10 {
        h.expect_saga::<Trip>(&trip.to_string()).await.assert_status(&SagaStatus::Completed);
    }
    assert_eq!(h.sent::<Charge>().len(), 10);
}

#[tokio::test]
async fn a_failed_commit_is_retried_without_a_trace() {
    let h =
        trips().stub(|c: &Charge| Stub::reply(Charged { trip: c.trip })).fail_commit(2).fail_commit(5).start().await;
    h.publish(&BookTrip { trip: 1 }).await;
    h.settle().await;
    let saga = h.expect_saga::<Trip>("1").await;
    saga.assert_status(&SagaStatus::Completed);
    let versions: Vec<u64> = saga.history().iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=saga.version()).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_reply_that_arrives_after_the_saga_compensated_is_only_recorded() {
    let h = trips().stub(|c: &BookHotel| Stub::delayed(Duration::from_secs(45), HotelBooked { trip: c.trip }));
    let h = h.stub(|c: &CancelFlight| Stub::reply(FlightCancelled { trip: c.trip })).start().await;
    h.publish(&BookTrip { trip: 3 }).await;
    h.advance(Duration::from_secs(60)).await;

    let saga = h.expect_saga::<Trip>("3").await;
    saga.assert_status(&SagaStatus::Compensated);
    assert_eq!(h.published::<HotelBooked>().len(), 1, "the late reply was delivered");
    assert_eq!(saga.version(), 6, "{saga:?}");
    let last = saga.history().last().unwrap().events.clone();
    assert_eq!(
        last,
        [HistoryEvent::LateReply { name: HotelBooked::NAME.into(), success: true, status: StatusKind::Compensated }]
    );
}

#[tokio::test]
#[should_panic(expected = "step book_hotel started (attempt 1)")]
async fn a_wrong_expectation_prints_the_timeline() {
    let h = trips().stub(|_: &Charge| Stub::silence()).start().await;
    h.publish(&BookTrip { trip: 5 }).await;
    h.settle().await;
    h.expect_saga::<Trip>("5").await.assert_status(&SagaStatus::Completed);
}

#[tokio::test]
async fn given_when_then_drives_one_instance_with_replies() {
    let silent = SagaTestHarness::new().saga::<Trip>().stub(|_: &BookFlight| Stub::silence());
    let silent = silent.stub(|_: &BookHotel| Stub::silence()).stub(|_: &CancelFlight| Stub::silence());
    Scenario::<Trip>::new(silent, "8")
        .given(BookTrip { trip: 8 })
        .given(FlightBooked { trip: 8 })
        .when(HotelRefused { trip: 8 })
        .then_status(SagaStatus::Compensating { step: 0 })
        .then_state("the flight is still booked until cancelled", |t| t.flight && !t.hotel)
        .then_sent(|c: &CancelFlight| c.trip == 8)
        .then_not_sent::<CancelHotel>()
        .run()
        .await;
}

#[tokio::test]
async fn the_harness_runs_on_sled_too() {
    let harness = SagaTestHarness::with_sled().unwrap();
    let mut h = harness.saga::<Trip>().stub(|c: &BookFlight| Stub::reply(FlightBooked { trip: c.trip })).start().await;
    h.publish(&BookTrip { trip: 6 }).await;
    h.settle().await;
    h.restart().await;
    let saga = h.expect_saga::<Trip>("6").await;
    assert_eq!((saga.current_step(), saga.state().flight), (Some("book_hotel"), true));
    assert_eq!(BookHotel::NAME, "hotel.book");
}
