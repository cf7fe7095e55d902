//! Named crash points: the places where a process death tests the commit protocol hardest.
//!
//! The reliability suite kills a worker at each of these points (and at random moments) and
//! checks that nothing committed is lost and no effect is applied twice. The points compile to
//! nothing unless the `failpoints` cargo feature is on; with it, each is a
//! [`fail`](https://docs.rs/fail) fail point configured from the `FAILPOINTS` environment
//! variable, and the action `return` aborts the process on the spot (like a power cut: no
//! destructors, no flush), after one line on stderr naming the point.
//!
//! ```text
//! FAILPOINTS='lane.after_flush_before_ack=2%return' crash_worker run ...
//! ```
//!
//! Every other `fail` action (`panic`, `sleep(ms)`, `pause`, ...) works as the crate documents.
//!
//! ```
//! // The names the engine defines, for test drivers that pick one per run.
//! assert!(saga_core::crash_points::ALL.contains(&"relay.after_publish_before_outbox_removal"));
//! ```

/// Every crash point, in the order a message meets them.
pub const ALL: &[&str] = &[
    // A fired timer was read from the store and is about to enter its lane.
    "timers.before_fire",
    // A saga transition is computed, nothing is written.
    "saga.before_commit",
    // A saga transition that starts or continues compensation is about to be written.
    "saga.during_compensation",
    // A participant's handler ran (its effects are in the commit), nothing is written.
    "participant.before_commit",
    // sled: a commit's write-ahead record and its first write are applied, the rest are not.
    "sled.during_apply",
    // The commit is applied to the store but its flush has not been asked for.
    "store.after_commit_before_flush",
    // The commit is durable; the delivery is not acked, its outbox not handed to the relay
    // and its local-bus messages not delivered.
    "lane.after_flush_before_ack",
    // The bus confirmed the outbox entries; they are still in the store.
    "relay.after_publish_before_outbox_removal",
    // Local bus: a message is durable in its queue (published, or written by a commit), no
    // consumer has it yet.
    "local_bus.after_enqueue_before_delivery",
    // Local bus: a delivery was acked (its consumer's commit is durable), its queue entry
    // is not removed yet.
    "local_bus.before_ack_removal",
];

/// Reads the `FAILPOINTS` environment variable and arms the points it names.
///
/// Call it once at the start of a worker process built with the `failpoints` feature. The
/// returned scenario keeps the points armed until it is dropped.
///
/// ```no_run
/// let _armed = saga_core::crash_points::arm_from_env();
/// ```
#[cfg(feature = "failpoints")]
pub fn arm_from_env() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

/// Aborts the process at a crash point whose action is `return`.
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn crash(name: &str) -> ! {
    // The test driver reads this line to count which points were hit.
    eprintln!("sagaflow crash point hit: {name}");
    std::process::abort()
}

/// Marks a named crash point (see the [`crash_points`](crate::crash_points) module).
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            $crate::crash_points::crash($name);
        }
    };
}
pub(crate) use crash_point;

#[cfg(test)]
mod tests {
    #[test]
    fn every_crash_point_in_the_code_is_listed() {
        let sources = [
            include_str!("engine/timers.rs"),
            include_str!("engine/saga_driver.rs"),
            include_str!("engine/participant.rs"),
            include_str!("store/kv.rs"),
            include_str!("store/sled.rs"),
            include_str!("engine/lanes.rs"),
            include_str!("engine/relay.rs"),
            include_str!("bus/memory.rs"),
        ];
        let mut found: Vec<&str> = sources
            .iter()
            .flat_map(|s| s.split("crash_point!(\"").skip(1))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let mut listed: Vec<&str> = super::ALL.to_vec();
        listed.sort_unstable();
        found.sort_unstable();
        assert_eq!(found, listed, "crash points in the code and in ALL differ");
    }
}
