//! A trip-booking saga with scriptable participants, shared by the engine tests.
//!
//! Steps: book_flight (compensated by cancel_flight), book_hotel (30 s timeout, compensated
//! by cancel_hotel), charge. Each participant counts the commands it applied in its own
//! records, committed with its inbox, so a count above one is a duplicated effect.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagaflow::engine::SagaRuntimeBuilder;
use sagaflow::prelude::*;
use sagaflow::store::Store;
use serde::{Deserialize, Serialize};

macro_rules! trip_messages {
    ($($ty:ident => $name:literal),* $(,)?) => {$(
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $ty {
            pub trip: u32,
        }
        impl Message for $ty {
            const NAME: &'static str = $name;
            fn correlation_key(&self) -> Option<String> {
                Some(self.trip.to_string())
            }
        }
    )*};
}

trip_messages! {
    BookTrip => "trip.book",
    TripNote => "trip.note",
    TripCancelled => "trip.cancelled",
    BookFlight => "flight.book",
    FlightBooked => "flight.booked",
    FlightRefused => "flight.refused",
    CancelFlight => "flight.cancel",
    FlightCancelled => "flight.cancelled",
    FlightCancelRefused => "flight.cancel-refused",
    BookHotel => "hotel.book",
    HotelBooked => "hotel.booked",
    HotelRefused => "hotel.refused",
    CancelHotel => "hotel.cancel",
    HotelCancelled => "hotel.cancelled",
    Charge => "payment.charge",
    Charged => "payment.charged",
    ChargeRefused => "payment.refused",
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trip {
    pub trip: u32,
    pub flight: bool,
    pub hotel: bool,
    pub paid: bool,
    pub notes: u32,
}

impl Saga for Trip {
    const NAME: &'static str = "trip";

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new()
            .start_with(|m: &BookTrip| Trip { trip: m.trip, ..Trip::default() })
            .step(
                Step::send("book_flight", |t: &Trip| BookFlight { trip: t.trip })
                    .on_success(|t: &mut Trip, _: &FlightBooked| t.flight = true)
                    .on_failure(|_: &mut Trip, _: &FlightRefused| {})
                    .compensate_send(|t: &Trip| CancelFlight { trip: t.trip })
                    .on_compensated(|t: &mut Trip, _: &FlightCancelled| t.flight = false)
                    .on_compensation_failed(|_: &mut Trip, _: &FlightCancelRefused| {})
                    .compensation_retry(RetryPolicy::exponential(3, Duration::from_millis(100)).without_jitter()),
            )
            .step(
                Step::send("book_hotel", |t: &Trip| BookHotel { trip: t.trip })
                    .on_success(|t: &mut Trip, _: &HotelBooked| t.hotel = true)
                    .on_failure(|_: &mut Trip, _: &HotelRefused| {})
                    .timeout(Duration::from_secs(30))
                    .compensate_send(|t: &Trip| CancelHotel { trip: t.trip })
                    .on_compensated(|t: &mut Trip, _: &HotelCancelled| t.hotel = false),
            )
            .step(
                Step::send("charge", |t: &Trip| Charge { trip: t.trip })
                    .on_success(|t: &mut Trip, _: &Charged| t.paid = true)
                    .on_failure(|_: &mut Trip, _: &ChargeRefused| {}),
            )
            .on_event(|t: &mut Trip, _: &TripNote| {
                t.notes += 1;
                EventOutcome::Continue
            })
            .on_event(|_: &mut Trip, _: &TripCancelled| EventOutcome::Abort("customer cancelled".into()))
    }
}

/// How a participant answers one trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Succeed,
    Refuse,
    Ignore,
    /// Fail for good: the command is dead-lettered.
    Fail,
}

/// Per command name and trip, how participants answer (default: succeed).
#[derive(Clone, Default)]
pub struct Script {
    answers: Arc<Mutex<HashMap<(&'static str, u32), Answer>>>,
    log: Arc<Mutex<Vec<(&'static str, u32)>>>,
    /// Participants keep no records of their own (only their inbox), nor a log.
    forgetful: bool,
}

impl Script {
    /// A script whose participants write nothing but their inbox entries.
    pub fn forgetful() -> Self {
        Script { forgetful: true, ..Script::default() }
    }

    pub fn answer(&self, command: &'static str, trip: u32, answer: Answer) -> &Self {
        self.answers.lock().unwrap().insert((command, trip), answer);
        self
    }

    fn get(&self, command: &'static str, trip: u32) -> Answer {
        *self.answers.lock().unwrap().get(&(command, trip)).unwrap_or(&Answer::Succeed)
    }

    /// Every command handled, in order (at least once each: a re-run after a crash shows twice).
    pub fn log(&self) -> Vec<(&'static str, u32)> {
        self.log.lock().unwrap().clone()
    }
}

/// A command a participant answers with a success or a failure reply.
pub trait Command: Message {
    type Ok: Message;
    type Refused: Message;
    fn trip(&self) -> u32;
    fn ok(trip: u32) -> Self::Ok;
    fn refused(trip: u32) -> Self::Refused;
}

macro_rules! commands {
    ($($cmd:ident => $ok:ident / $refused:ident),* $(,)?) => {$(
        impl Command for $cmd {
            type Ok = $ok;
            type Refused = $refused;
            fn trip(&self) -> u32 { self.trip }
            fn ok(trip: u32) -> $ok { $ok { trip } }
            fn refused(trip: u32) -> $refused { $refused { trip } }
        }
    )*};
}

commands! {
    BookFlight => FlightBooked / FlightRefused,
    CancelFlight => FlightCancelled / FlightCancelRefused,
    BookHotel => HotelBooked / HotelRefused,
    CancelHotel => HotelCancelled / HotelRefused,
    Charge => Charged / ChargeRefused,
}

/// The participant scope holding every effect counter.
pub const EFFECTS: &str = "effects";

/// Answers `C` per the script and counts each applied command in its records.
pub struct Scripted<C> {
    script: Script,
    _command: std::marker::PhantomData<fn(C)>,
}

#[async_trait::async_trait]
impl<C: Command> Handler for Scripted<C> {
    type Input = C;

    fn name(&self) -> &str {
        C::NAME
    }

    fn scope(&self) -> &str {
        EFFECTS
    }

    async fn handle(&self, cmd: C, ctx: &mut HandlerContext) -> Result<(), HandlerError> {
        let trip = cmd.trip();
        if self.script.forgetful {
            return ctx.reply(&C::ok(trip));
        }
        self.script.log.lock().unwrap().push((C::NAME, trip));
        if let Answer::Fail = self.script.get(C::NAME, trip) {
            return Err(HandlerError::permanent(format!("{} is down", C::NAME)));
        }
        let key = effect_key(C::NAME, trip);
        let count: u32 = ctx.load(&key).await?.unwrap_or(0);
        ctx.save(&key, &(count + 1)).await?;
        match self.script.get(C::NAME, trip) {
            Answer::Succeed => ctx.reply(&C::ok(trip)),
            Answer::Refuse => ctx.reply(&C::refused(trip)),
            Answer::Ignore | Answer::Fail => Ok(()),
        }
    }
}

pub fn effect_key(command: &str, trip: u32) -> String {
    format!("{command}/{trip:06}")
}

pub fn scripted<C: Command>(script: &Script) -> Scripted<C> {
    Scripted { script: script.clone(), _command: std::marker::PhantomData }
}

/// The trip saga and all its participants on a builder.
pub fn trip_runtime(script: &Script) -> SagaRuntimeBuilder {
    SagaRuntime::builder()
        .saga::<Trip>()
        .handler(scripted::<BookFlight>(script))
        .handler(scripted::<CancelFlight>(script))
        .handler(scripted::<BookHotel>(script))
        .handler(scripted::<CancelHotel>(script))
        .handler(scripted::<Charge>(script))
}

/// How many times each command was applied for a trip, from the participants' records.
pub async fn effects(store: &dyn Store, command: &str, trip: u32) -> u32 {
    match store.entity(EFFECTS, &effect_key(command, trip)).await.unwrap() {
        Some(r) => serde_json::from_slice(&r.value).unwrap(),
        None => 0,
    }
}

/// All effect counters: (command/trip, count).
pub async fn all_effects(store: &dyn Store) -> HashMap<String, u32> {
    store
        .entities(EFFECTS, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, r)| (k, serde_json::from_slice(&r.value).unwrap()))
        .collect()
}

pub async fn status(runtime: &SagaRuntime, trip: u32) -> Option<SagaStatus> {
    runtime.saga::<Trip>(&trip.to_string()).await.unwrap().map(|i| i.status().clone())
}

/// Moves virtual time forward and runs what came due, `times` times.
pub async fn advance(runtime: &SagaRuntime, clock: &sagaflow::clock::ManualClock, by: Duration, times: u32) {
    for _ in 0..times {
        clock.advance(by);
        runtime.fire_due_timers().await;
        runtime.settle().await;
    }
}

/// Everything logged on this thread while the guard lives (a `#[tokio::test]` runtime runs
/// every task on the test's thread), at `level` and above.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn start(&self, level: tracing::Level) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(level)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn lines(&self, containing: &str) -> Vec<String> {
        self.text().lines().filter(|l| l.contains(containing)).map(str::to_owned).collect()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A trip runtime on a memory store where trip 0 failed while compensating (its flight
/// cancellation was refused) and trip 1 completed.
pub async fn failed_trip(script: &Script) -> SagaRuntime {
    failed_trip_on(script, sagaflow::store::MemoryStore::new()).await
}

/// [`failed_trip`] on `store`.
pub async fn failed_trip_on(script: &Script, store: impl Store) -> SagaRuntime {
    script.answer(BookHotel::NAME, 0, Answer::Refuse).answer(CancelFlight::NAME, 0, Answer::Refuse);
    let runtime = trip_runtime(script).store(store).build().await.unwrap();
    runtime.publish(&BookTrip { trip: 0 }).await.unwrap();
    runtime.publish(&BookTrip { trip: 1 }).await.unwrap();
    let wait = Duration::from_secs(60);
    let trips = [sagaflow::saga::instance_id(Trip::NAME, "0"), sagaflow::saga::instance_id(Trip::NAME, "1")];
    runtime.wait_until_terminal(&trips, wait).await.unwrap();
    runtime
}

/// The runtime's admin endpoint on a free local port (mutating calls need `token`, if any),
/// and its base URL.
#[cfg(feature = "admin")]
pub async fn serve_admin(runtime: &SagaRuntime, token: Option<&str>) -> (sagaflow::admin::http::AdminEndpoint, String) {
    let mut options = sagaflow::admin::http::AdminOptions::default().bind("127.0.0.1:0".parse().unwrap());
    if let Some(token) = token {
        options = options.token(token).unwrap();
    }
    let endpoint = runtime.admin().serve(options).await.unwrap();
    let base = format!("http://{}", endpoint.local_addr());
    (endpoint, base)
}

/// Waits (up to a minute) until `done` says so, checking every 20 ms.
pub async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The in-memory bus, refusing what `refuse` says.
#[derive(Clone)]
pub struct Refusing {
    pub inner: InMemoryBus,
    pub refuse: fn(&sagaflow::message::Envelope) -> Option<sagaflow::bus::BusError>,
}

#[async_trait::async_trait]
impl sagaflow::bus::Bus for Refusing {
    async fn publish(&self, e: sagaflow::message::Envelope) -> Result<(), sagaflow::bus::BusError> {
        match (self.refuse)(&e) {
            Some(error) => Err(error),
            None => self.inner.publish(e).await,
        }
    }
    async fn subscribe(&self, s: &str, names: &[&str]) -> Result<sagaflow::bus::Consumer, sagaflow::bus::BusError> {
        self.inner.subscribe(s, names).await
    }
    async fn subscribe_exclusive(
        &self,
        s: &str,
        names: &[&str],
    ) -> Result<sagaflow::bus::Consumer, sagaflow::bus::BusError> {
        self.inner.subscribe_exclusive(s, names).await
    }
    async fn unsubscribe(&self, s: &str) -> Result<(), sagaflow::bus::BusError> {
        self.inner.unsubscribe(s).await
    }
    fn activity(&self) -> Option<Arc<sagaflow::activity::Activity>> {
        self.inner.activity()
    }
}
