//! The harness's bus: the in-memory bus, recording what is published and able to duplicate
//! or hold back deliveries.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::activity::Activity;
use crate::bus::{Bus, BusError, Consumer, DeadLetter, InMemoryBus};
use crate::message::Envelope;

#[derive(Default)]
pub(crate) struct Faults {
    pub(crate) duplicate: bool,
    /// Hold back up to this many messages and release them in a shuffled order.
    pub(crate) reorder_window: usize,
    pub(crate) seed: u64,
}

#[derive(Default)]
struct State {
    /// Everything published, with the phase it was published in.
    log: Vec<(u32, Envelope)>,
    phase: u32,
    held: VecDeque<Envelope>,
    faults: Faults,
}

/// A bus for tests: records, duplicates, reorders.
#[derive(Clone, Default)]
pub(crate) struct HarnessBus {
    inner: InMemoryBus,
    state: Arc<Mutex<State>>,
}

impl HarnessBus {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    pub(crate) fn memory(&self) -> &InMemoryBus {
        &self.inner
    }

    /// Starts a new phase: earlier messages no longer show in queries.
    pub(crate) fn new_phase(&self) {
        self.state().phase += 1;
    }

    /// Messages of the current phase named `name`.
    pub(crate) fn logged(&self, name: &str) -> Vec<Envelope> {
        let state = self.state();
        state.log.iter().filter(|(phase, e)| *phase == state.phase && e.name == name).map(|(_, e)| e.clone()).collect()
    }

    /// Releases one held-back message; returns whether there was one.
    pub(crate) async fn release_one(&self) -> Result<bool, BusError> {
        let next = {
            let mut state = self.state();
            let len = state.held.len();
            if len == 0 {
                None
            } else {
                state.faults.seed = next_random(state.faults.seed);
                let pick = (state.faults.seed % len as u64) as usize;
                state.held.remove(pick)
            }
        };
        match next {
            Some(envelope) => {
                self.deliver(envelope).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn deliver(&self, envelope: Envelope) -> Result<(), BusError> {
        let duplicate = self.state().faults.duplicate;
        if duplicate {
            silent_if_unroutable(self.inner.publish(envelope.clone()).await)?;
        }
        silent_if_unroutable(self.inner.publish(envelope).await)
    }
}

/// In the harness, a message no stub or handler takes (a command left unstubbed, say) reaches
/// a silent service that never answers; it is still logged, so `sent` shows it.
fn silent_if_unroutable(result: Result<(), BusError>) -> Result<(), BusError> {
    match result {
        Err(BusError::Unroutable { .. }) => Ok(()),
        other => other,
    }
}

/// SplitMix64: a tiny deterministic generator, so a failing reordering replays exactly.
fn next_random(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[async_trait::async_trait]
impl Bus for HarnessBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let (hold, release) = {
            let mut state = self.state();
            let phase = state.phase;
            state.log.push((phase, envelope.clone()));
            let window = state.faults.reorder_window;
            if window > 0 {
                state.held.push_back(envelope.clone());
            }
            (window > 0, window > 0 && state.held.len() > window)
        };
        if !hold {
            return self.deliver(envelope).await;
        }
        if release {
            self.release_one().await?;
        }
        Ok(())
    }

    async fn subscribe(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.inner.subscribe(subscription, names).await
    }

    async fn subscribe_exclusive(&self, subscription: &str, names: &[&str]) -> Result<Consumer, BusError> {
        self.inner.subscribe_exclusive(subscription, names).await
    }

    async fn unsubscribe(&self, subscription: &str) -> Result<(), BusError> {
        self.inner.unsubscribe(subscription).await
    }

    fn activity(&self) -> Option<Arc<Activity>> {
        self.inner.activity()
    }

    async fn dead_letters(&self, subscription: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        self.inner.dead_letters(subscription, limit).await
    }

    async fn replay_dead_letter(&self, subscription: &str, message_id: uuid::Uuid) -> Result<usize, BusError> {
        self.inner.replay_dead_letter(subscription, message_id).await
    }

    async fn discard_dead_letter(&self, subscription: &str, message_id: uuid::Uuid) -> Result<usize, BusError> {
        self.inner.discard_dead_letter(subscription, message_id).await
    }
}
