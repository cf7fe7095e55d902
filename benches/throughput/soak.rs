//! The soak row: the embedded default (sled `Group`, durable local bus) with retention on, for
//! a long run (1,000,000 sagas in the full table). Memory and the store's size on disk are
//! sampled every second, so that growth in either shows: with retention a finished saga's
//! records go a second after it ends, so both must stay flat however many sagas ran, and the
//! rate must not fall as the run goes on.

use std::sync::Arc;
use std::time::Duration;

use sagaflow::bus::LocalBus;
use sagaflow::store::{Durability, Store};
use serde::{Deserialize, Serialize};

use crate::probe::{Probe, ProbeBus, Release, dir_bytes, proc_status_mib};
use crate::run::{Outcome, build_with, drive, fill, sled, temp_dir};

/// What the soak measured besides the usual figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakFigures {
    /// Sagas/s over the first and the last tenth of the sagas (by finish time).
    pub first_tenth_per_s: f64,
    pub last_tenth_per_s: f64,
    /// The largest resident set sampled while the first half (after its first tenth, the
    /// warm-up) and the second half of the sagas ran.
    pub rss_first_half_mib: f64,
    pub rss_second_half_mib: f64,
    /// The store's largest size on disk sampled in each half, and at the end.
    pub disk_first_half: u64,
    pub disk_second_half: u64,
    pub disk_end: u64,
}

struct Sample {
    done: u64,
    rss_mib: f64,
    disk: u64,
}

pub async fn soak(sagas: u64, in_flight: usize) -> Outcome {
    let probe = Probe::new(sagas as usize, in_flight, Release::Terminal);
    let dir = temp_dir("soak");
    let store: Arc<dyn Store> = Arc::new(sled(dir.path(), Durability::default()));
    let bus = ProbeBus::new(LocalBus::open(store.clone()), probe.clone());
    let runtime = Arc::new(build_with(store, bus, &probe, None, true).await);
    let sampler = tokio::spawn(sample_until_done(probe.clone(), sagas, dir.path().to_owned()));
    let (elapsed, cpu) = drive(&runtime, &probe, sagas, None).await;
    let samples = sampler.await.expect("the sampler ends");
    let mut outcome = Outcome {
        label: "soak: sled Group, durable local bus, retention on".into(),
        kind: "soak".into(),
        in_flight,
        ..Outcome::default()
    };
    fill(&mut outcome, &probe, sagas, elapsed, cpu);
    let left = runtime.admin().counts(&sagaflow::store::InstanceQuery::default()).await.expect("count the instances");
    let left: u64 = left.iter().map(|c| c.count).sum();
    outcome.notes.push(format!("{left} instances in the store when the last saga finished"));
    eprintln!("  soak: {left} instances in the store when the last saga finished");
    if let Ok(runtime) = Arc::try_unwrap(runtime) {
        runtime.shutdown().await.expect("shut the runtime down");
    }
    // The first tenth fills the window of sagas in flight and sled's cache: memory and disk
    // ramp up there by design, so the halves compared start after it.
    let (warm, half) = (sagas / 10, sagas / 2);
    let (first, second): (Vec<&Sample>, Vec<&Sample>) =
        samples.iter().filter(|s| s.done >= warm).partition(|s| s.done < half);
    let max_rss = |s: &[&Sample]| s.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let max_disk = |s: &[&Sample]| s.iter().map(|s| s.disk).max().unwrap_or(0);
    let (first_tenth_per_s, last_tenth_per_s) = tenths(&probe.finish_times());
    let disk_end = dir_bytes(dir.path());
    outcome.store_bytes = Some(disk_end);
    outcome.soak = Some(SoakFigures {
        first_tenth_per_s,
        last_tenth_per_s,
        rss_first_half_mib: max_rss(&first),
        rss_second_half_mib: max_rss(&second),
        disk_first_half: max_disk(&first),
        disk_second_half: max_disk(&second),
        disk_end,
    });
    outcome.notes.push(format!("{} samples, one a second", samples.len()));
    outcome
}

/// Samples the finished count, the resident set and the store's size every second until
/// `sagas` finished.
async fn sample_until_done(probe: Arc<Probe>, sagas: u64, dir: std::path::PathBuf) -> Vec<Sample> {
    let mut samples = Vec::new();
    loop {
        let done = probe.done();
        let sample = Sample { done, rss_mib: proc_status_mib("VmRSS"), disk: dir_bytes(&dir) };
        if samples.len() % 30 == 0 {
            eprintln!(
                "  soak: {done} of {sagas} sagas done, RSS {:.0} MiB, store {:.1} MiB",
                sample.rss_mib,
                sample.disk as f64 / (1024.0 * 1024.0)
            );
        }
        samples.push(sample);
        if done >= sagas {
            return samples;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sagas/s over the first and the last tenth of `finishes` (sorted finish times): the first
/// from the first finish, the last up to the last one.
fn tenths(finishes: &[Duration]) -> (f64, f64) {
    let n = finishes.len();
    let tenth = n / 10;
    if tenth < 2 {
        return (0.0, 0.0);
    }
    let rate = |from: Duration, to: Duration| (tenth - 1) as f64 / to.saturating_sub(from).as_secs_f64().max(1e-9);
    (rate(finishes[0], finishes[tenth - 1]), rate(finishes[n - tenth], finishes[n - 1]))
}
