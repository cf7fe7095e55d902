//! The in-process transport.
//!
//! Subscriptions are FIFO queues that live as long as the bus, like durable broker queues:
//! a runtime that is dropped and rebuilt on the same `InMemoryBus` finds its messages waiting.
//! The bus itself is only as durable as the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::{Acker, Bus, BusError, Consumer, Delivery, DeliveryStream};
use crate::activity::Activity;
use crate::message::{Envelope, Timestamp};

/// A message the bus parked because it could not be handled.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The subscription it was delivered on.
    pub subscription: String,
    /// The message as last delivered.
    pub envelope: Envelope,
    /// Why it was parked.
    pub reason: String,
    /// When it was parked.
    pub at: Timestamp,
}

/// An in-memory, at-least-once [`Bus`]: redelivery on nack and on dropped deliveries,
/// competing consumers, fan-out to every bound subscription, and a dead-letter list.
///
/// Cloning gives another handle to the same bus.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use saga_core::bus::{Bus, InMemoryBus};
/// use saga_core::message::Envelope;
/// let bus = InMemoryBus::new();
/// let mut c = bus.subscribe("audit", &["x"]).await.unwrap();
/// bus.publish(Envelope::new("x", vec![])).await.unwrap();
/// c.next().await.unwrap().dead_letter("cannot parse").await.unwrap();
/// assert_eq!(bus.dead_letters()[0].reason, "cannot parse");
/// # });
/// ```
#[derive(Clone, Default)]
pub struct InMemoryBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InMemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBus").field("pending", &self.inner.activity.pending()).finish()
    }
}

#[derive(Default)]
struct Inner {
    topology: Mutex<Topology>,
    dead: Mutex<Vec<DeadLetter>>,
    activity: Arc<Activity>,
    max_deliveries: Option<u32>,
}

#[derive(Default)]
struct Topology {
    queues: HashMap<String, Arc<Queue>>,
    bindings: HashMap<String, Vec<Arc<Queue>>>,
}

struct Queue {
    name: String,
    tx: mpsc::UnboundedSender<Envelope>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Envelope>>,
    closed: AtomicBool,
    closing: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of plain maps; the data
    // is still structurally valid, so keep serving rather than cascading the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InMemoryBus {
    /// A new bus with no subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus that dead-letters a message instead of redelivering it once it has been
    /// delivered `max` times.
    pub fn with_max_deliveries(max: u32) -> Self {
        InMemoryBus { inner: Arc::new(Inner { max_deliveries: Some(max), ..Inner::default() }) }
    }

    /// Everything dead-lettered so far, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.inner.dead).clone()
    }

    /// Puts a message straight onto one subscription's queue, whatever its name is bound to,
    /// as an operator would with a broker's admin tool (and as a stale binding would).
    pub fn inject(&self, subscription: &str, envelope: Envelope) -> Result<(), BusError> {
        let queue = lock(&self.inner.topology)
            .queues
            .get(subscription)
            .cloned()
            .ok_or_else(|| BusError::UnknownSubscription(subscription.to_owned()))?;
        self.inner.enqueue(&queue, envelope)
    }
}

impl Inner {
    fn enqueue(&self, queue: &Queue, envelope: Envelope) -> Result<(), BusError> {
        if queue.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.activity.add(1);
        if queue.tx.send(envelope).is_err() {
            self.activity.done(1);
            return Err(BusError::Closed);
        }
        Ok(())
    }

    fn park(&self, subscription: &str, envelope: Envelope, reason: String) {
        tracing::debug!(
            subscription,
            message = %envelope.name,
            message_id = %envelope.message_id,
            %reason,
            "message dead-lettered"
        );
        lock(&self.dead).push(DeadLetter {
            subscription: subscription.to_owned(),
            envelope,
            reason,
            at: Timestamp::now(),
        });
        self.activity.done(1);
    }

    /// Puts a delivered message back, or parks it if it has used up its deliveries.
    fn redeliver(self: &Arc<Self>, queue: &Arc<Queue>, mut envelope: Envelope) {
        if let Some(max) = self.max_deliveries {
            if envelope.attempt >= max {
                let reason = format!("delivered {} times without being acked", envelope.attempt);
                self.park(&queue.name, envelope, reason);
                return;
            }
        }
        envelope.attempt = envelope.attempt.saturating_add(1);
        // Already counted while delivered: move the count back to the queue, do not add.
        if queue.closed.load(Ordering::SeqCst) || queue.tx.send(envelope).is_err() {
            self.activity.done(1);
        }
    }
}

#[async_trait::async_trait]
impl Bus for InMemoryBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let targets = lock(&self.inner.topology).bindings.get(&envelope.name).cloned().unwrap_or_default();
        if targets.is_empty() {
            tracing::debug!(message = %envelope.name, "published with no subscription bound");
        }
        for queue in targets {
            self.inner.enqueue(&queue, envelope.clone())?;
        }
        Ok(())
    }

    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        let queue = {
            let mut topo = lock(&self.inner.topology);
            let queue = topo
                .queues
                .entry(subscription.to_owned())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    Arc::new(Queue {
                        name: subscription.to_owned(),
                        tx,
                        rx: tokio::sync::Mutex::new(rx),
                        closed: AtomicBool::new(false),
                        closing: Notify::new(),
                    })
                })
                .clone();
            for name in names {
                let bound = topo.bindings.entry((*name).to_owned()).or_default();
                if !bound.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                    bound.push(queue.clone());
                }
            }
            queue
        };
        Ok(Consumer::new(subscription, Box::new(MemoryStream { bus: self.inner.clone(), queue })))
    }

    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        let queue = {
            let mut topo = lock(&self.inner.topology);
            let queue = topo
                .queues
                .remove(subscription)
                .ok_or_else(|| BusError::UnknownSubscription(subscription.to_owned()))?;
            for bound in topo.bindings.values_mut() {
                bound.retain(|q| !Arc::ptr_eq(q, &queue));
            }
            topo.bindings.retain(|_, v| !v.is_empty());
            queue
        };
        queue.closed.store(true, Ordering::SeqCst);
        queue.closing.notify_waiters();
        // Close first, then drain: a publish racing with us either lands before the close (and
        // is drained and uncounted here) or fails to send (and uncounts itself).
        let mut rx = queue.rx.lock().await;
        rx.close();
        let mut discarded = 0;
        while rx.try_recv().is_ok() {
            discarded += 1;
        }
        self.inner.activity.done(discarded);
        Ok(())
    }

    fn activity(&self) -> Option<Arc<Activity>> {
        Some(self.inner.activity.clone())
    }
}

struct MemoryStream {
    bus: Arc<Inner>,
    queue: Arc<Queue>,
}

#[async_trait::async_trait]
impl DeliveryStream for MemoryStream {
    async fn next(&mut self) -> Option<Delivery> {
        let closing = self.queue.closing.notified();
        if self.queue.closed.load(Ordering::SeqCst) {
            return None;
        }
        let envelope = tokio::select! {
            biased;
            _ = closing => None,
            env = async { self.queue.rx.lock().await.recv().await } => env,
        }?;
        Some(Delivery::new(envelope, Box::new(MemoryAcker { bus: self.bus.clone(), queue: self.queue.clone() })))
    }
}

struct MemoryAcker {
    bus: Arc<Inner>,
    queue: Arc<Queue>,
}

#[async_trait::async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.bus.activity.done(1);
        Ok(())
    }

    async fn nack(self: Box<Self>, envelope: Envelope, delay: Duration) -> Result<(), BusError> {
        if delay.is_zero() {
            self.bus.redeliver(&self.queue, envelope);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                self.bus.redeliver(&self.queue, envelope);
            });
        }
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, envelope: Envelope, reason: String) -> Result<(), BusError> {
        self.bus.park(&self.queue.name, envelope, reason);
        Ok(())
    }

    fn abandon(self: Box<Self>, envelope: Envelope) {
        self.bus.redeliver(&self.queue, envelope);
    }
}
