//! Bad input gets a clear reason (dead-lettered where it came from the bus) and nothing
//! already accepted is lost.

mod common;

use common::*;
use sagaflow::bus::InMemoryBus;
use sagaflow::message::{Envelope, JsonCodec, Message};
use sagaflow::prelude::*;
use sagaflow::store::HistoryEvent;

async fn trips(bus: &InMemoryBus) -> SagaRuntime {
    trip_runtime(&Script::default())
        .store(MemoryStore::new())
        .bus(bus.clone())
        .max_message_bytes(1024)
        .build()
        .await
        .unwrap()
}

fn reasons(bus: &InMemoryBus) -> Vec<String> {
    bus.all_dead_letters().into_iter().map(|d| d.reason).collect()
}

#[tokio::test]
async fn an_oversized_message_is_dead_lettered_before_decoding() {
    let bus = InMemoryBus::new();
    let runtime = trips(&bus).await;
    let huge = format!("{{\"trip\":1,\"padding\":\"{}\"}}", "x".repeat(4096));
    bus.inject("saga.trip", Envelope::new(BookTrip::NAME, huge.into_bytes())).unwrap();
    runtime.publish(&BookTrip { trip: 2 }).await.unwrap();
    runtime.settle().await;

    assert_eq!(reasons(&bus), ["payload of 4119 bytes exceeds the limit of 1024 bytes"]);
    assert_eq!(status(&runtime, 1).await, None);
    assert_eq!(status(&runtime, 2).await, Some(SagaStatus::Completed));
}

#[tokio::test]
async fn messages_that_cannot_find_their_saga_are_dead_lettered() {
    let bus = InMemoryBus::new();
    let runtime = trips(&bus).await;
    // A reply must carry the instance id; an event needs a correlation key.
    bus.inject("saga.trip", Envelope::encode(&JsonCodec, &FlightBooked { trip: 1 }).unwrap()).unwrap();
    bus.inject("saga.trip", Envelope::new(BookTrip::NAME, b"null".to_vec())).unwrap();
    runtime.settle().await;

    let reasons = reasons(&bus);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.contains(&"reply flight.booked carries no correlation id: it cannot find its saga".to_owned()));
    assert!(reasons.iter().any(|r| r.starts_with("undecodable trip.book")), "{reasons:?}");
}

#[tokio::test]
async fn a_message_for_a_finished_saga_changes_nothing_and_a_late_reply_is_only_recorded() {
    let bus = InMemoryBus::new();
    let runtime = trips(&bus).await;
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    runtime.settle().await;
    let done = runtime.saga::<Trip>("1").await.unwrap().unwrap();
    assert_eq!(done.status(), &SagaStatus::Completed);

    runtime.publish(&TripCancelled { trip: 1 }).await.unwrap();
    let mut late = Envelope::encode(&JsonCodec, &HotelBooked { trip: 1 }).unwrap();
    late.correlation_id = Some(done.id());
    bus.inject("saga.trip", late).unwrap();
    runtime.settle().await;

    let after = runtime.saga::<Trip>("1").await.unwrap().unwrap();
    assert_eq!(after.status(), &SagaStatus::Completed);
    assert_eq!(after.record().state, done.record().state, "the state is untouched");
    assert_eq!(after.version(), done.version() + 1, "the cancellation is skipped; the late reply is recorded");
    let last = runtime.history(done.id(), usize::MAX).await.unwrap().pop().unwrap();
    assert_eq!(
        last.events,
        [HistoryEvent::LateReply { name: HotelBooked::NAME.into(), success: true, status: StatusKind::Completed }]
    );
    assert!(bus.all_dead_letters().is_empty(), "late messages are acknowledged, not parked");
}

/// An order whose correlation key panics on a malformed order (no lines).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    lines: Vec<u32>,
}

impl Message for OrderPlaced {
    const NAME: &'static str = "fragile.order-placed";
    fn correlation_key(&self) -> Option<String> {
        Some(self.lines[0].to_string())
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Fragile {
    order: u32,
}

impl Saga for Fragile {
    const NAME: &'static str = "fragile";
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new()
            .start_with(|m: &OrderPlaced| Fragile { order: m.lines[0] })
            .step(Step::local("finish", |s: Fragile, _| async move { Ok(s) }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_correlation_key_dead_letters_that_message_with_the_panic_and_consuming_goes_on() {
    let bus = InMemoryBus::new();
    let runtime = SagaRuntime::builder().saga::<Fragile>().store(MemoryStore::new()).bus(bus.clone()).build().await;
    let runtime = runtime.unwrap();
    runtime.publish(&OrderPlaced { lines: vec![] }).await.unwrap();
    runtime.publish(&OrderPlaced { lines: vec![7] }).await.unwrap();
    runtime.settle().await;
    let seven = runtime.saga::<Fragile>("7").await.unwrap().map(|i| i.status().clone());
    assert_eq!(seven, Some(SagaStatus::Completed), "the good order after the bad one was handled");
    let reasons = reasons(&bus);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("panicked") && reasons[0].contains("index out of bounds"), "{reasons:?}");
}

/// A bus that carries at most 64 bytes of payload.
#[derive(Clone)]
struct Small(InMemoryBus);

#[async_trait::async_trait]
impl sagaflow::bus::Bus for Small {
    async fn publish(&self, e: Envelope) -> Result<(), sagaflow::bus::BusError> {
        self.0.publish(e).await
    }
    async fn subscribe(&self, s: &str, n: &[&str]) -> Result<sagaflow::bus::Consumer, sagaflow::bus::BusError> {
        self.0.subscribe(s, n).await
    }
    async fn unsubscribe(&self, s: &str) -> Result<(), sagaflow::bus::BusError> {
        self.0.unsubscribe(s).await
    }
    fn max_payload(&self) -> Option<usize> {
        Some(64)
    }
    fn activity(&self) -> Option<std::sync::Arc<sagaflow::activity::Activity>> {
        self.0.activity()
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Note {
    trip: u32,
    text: String,
}

impl Message for Note {
    const NAME: &'static str = "trip.long-note";
}

/// Answers a BookTrip with a note longer than the bus carries.
struct Chatty;

#[async_trait::async_trait]
impl Handler for Chatty {
    type Input = TripCancelled;
    fn name(&self) -> &str {
        "chatty"
    }
    async fn handle(&self, c: TripCancelled, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        ctx.publish(&Note { trip: c.trip, text: "x".repeat(100) })
    }
}

#[tokio::test]
async fn an_outgoing_message_over_the_bus_limit_is_refused_when_it_is_committed() {
    let bus = InMemoryBus::new();
    let _notes = bus.subscribe("notes", &[Note::NAME]).await.unwrap();
    let runtime = trip_runtime(&Script::default())
        .handler(Chatty)
        .store(MemoryStore::new())
        .bus(Small(bus.clone()))
        .max_message_bytes(1024)
        .build()
        .await
        .unwrap();
    runtime.publish(&TripCancelled { trip: 9 }).await.unwrap();
    runtime.settle().await;
    let reasons = reasons(&bus);
    assert!(
        reasons.iter().any(|r| r.contains("trip.long-note is 120 bytes, more than the 64 bytes")),
        "the handler's input is dead-lettered with the reason: {reasons:?}"
    );
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Upload {
    data: String,
}

impl Message for Upload {
    const NAME: &'static str = "bulky.upload";
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Bulky {
    trip: u32,
}

impl Saga for Bulky {
    const NAME: &'static str = "bulky";
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new().start_with(|m: &BookTrip| Bulky { trip: m.trip }).step(
            Step::send("upload", |_: &Bulky| Upload { data: "x".repeat(100) })
                .on_success(|_: &mut Bulky, _: &FlightBooked| {}),
        )
    }
}

#[tokio::test]
async fn a_saga_command_over_the_bus_limit_parks_its_instance_with_the_reason() {
    let bus = InMemoryBus::new();
    let runtime = SagaRuntime::builder().saga::<Bulky>().store(MemoryStore::new()).bus(Small(bus.clone())).build();
    let runtime = runtime.await.unwrap();
    runtime.publish(&BookTrip { trip: 4 }).await.unwrap();
    runtime.settle().await;
    let instance = runtime.saga::<Bulky>("4").await.unwrap().unwrap();
    let SagaStatus::Failed { reason } = instance.status() else { panic!("{instance:?}") };
    assert!(reason.contains("the command bulky.upload of step upload is 111 bytes, more than the 64"), "{reason}");
    assert!(runtime.store().outbox(None, 10).await.unwrap().is_empty(), "nothing was sent");
}
