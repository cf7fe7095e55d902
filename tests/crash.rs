//! Process crashes: the order workload in one process on sled (on the default durable local
//! bus, and on RabbitMQ), killed and restarted on the same directory, must end with every order
//! terminal and every effect applied exactly once. Two ways to die:
//!
//! - SIGKILL at random moments. On the local bus the same seed also runs once without a crash,
//!   and every order must end as it did there (`SAGA_CRASH_LOCAL_ORDERS` orders, default 1,000;
//!   `SAGA_CRASH_ROUNDS` kills, default 6; docs/reliability.md reports a run at 2,000 orders).
//!   On RabbitMQ, `SAGA_CRASH_ORDERS` orders (default 400).
//! - an abort at a named crash point (feature `failpoints`): each round arms the point hit
//!   least so far to fire after a random number of hits, `SAGA_CRASH_POINT_ROUNDS` rounds
//!   (default two per point) over epochs of `SAGA_CRASH_POINT_ORDERS` orders (default
//!   200); when an epoch's orders are all done its store is checked and a new epoch begins.
//!   On the local bus every point is on the path but the relay's (a commit writes its
//!   messages straight into the queues); on RabbitMQ all but the local bus's.
//!
//! The RabbitMQ tests run when `SAGA_TEST_AMQP_URL` is set. On PostgreSQL (feature
//! `postgres`, `SAGA_TEST_POSTGRES_URL`) the crash points run with two runtimes on one
//! database: each round starts a second worker beside the armed one, and SIGKILLs it when the
//! armed one is gone.

#[cfg(all(feature = "postgres", feature = "failpoints"))]
#[path = "worker/replicas.rs"]
mod replicas;
mod worker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use worker::{assert_same_outcomes, env_or, worker};

/// One store directory and bus, worked on by successive worker processes.
struct Epoch {
    worker: PathBuf,
    dir: tempfile::TempDir,
    bus: String,
    orders: u64,
    seed: u64,
    /// The PostgreSQL database the workers share, instead of sled in `dir`.
    database: Option<String>,
}

impl Epoch {
    /// An epoch on the local bus, or on RabbitMQ in a namespace of its own.
    fn new(worker: &Path, rabbitmq: bool, orders: u64, seed: u64) -> Self {
        let bus =
            if rabbitmq { format!("rabbitmq:crash-{}", uuid::Uuid::now_v7().simple()) } else { "local".to_owned() };
        let dir = tempfile::tempdir().expect("a temporary directory");
        Epoch { worker: worker.to_owned(), dir, bus, orders, seed, database: None }
    }

    /// An epoch on a new PostgreSQL database and its bus.
    #[cfg(all(feature = "postgres", feature = "failpoints"))]
    fn on_postgres(worker: &Path, orders: u64, seed: u64) -> Self {
        let target = sagaflow::store::PostgresTarget::from_env().expect("SAGA_TEST_POSTGRES_URL");
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        let database = runtime.block_on(replicas::fresh_database_url(&target));
        let dir = tempfile::tempdir().expect("a temporary directory");
        Epoch { worker: worker.to_owned(), dir, bus: "local".into(), orders, seed, database: Some(database) }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.worker);
        cmd.args(args);
        if let Some(url) = &self.database {
            cmd.env("SAGA_WORKER_DATABASE", url).env("SAGA_WORKER_LEASE_MS", "1000");
        }
        cmd
    }

    /// A second worker on the epoch's database that only works (it submits nothing).
    #[cfg(feature = "failpoints")]
    fn start_companion(&self) -> Child {
        self.command(&["run", self.path(), &self.bus, &self.orders.to_string(), &self.seed.to_string()])
            .env("SAGA_WORKER_SUBMIT", "0")
            .stderr(Stdio::null())
            .spawn()
            .expect("the companion starts")
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().expect("a UTF-8 path")
    }

    fn start(&self, failpoints: Option<&str>, stderr: Stdio) -> Child {
        let mut cmd = self.command(&["run", self.path(), &self.bus, &self.orders.to_string(), &self.seed.to_string()]);
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        cmd.stderr(stderr).spawn().expect("the worker starts")
    }

    /// Waits up to `limit` for `child` to exit.
    fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("the worker can be waited for") {
                return status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                panic!("the worker did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the worker without faults to the end, then checks the invariants and returns the
    /// orders' outcomes.
    fn finish_and_check(&self, crashes: u64) -> String {
        let mut last = self.start(None, Stdio::inherit());
        assert!(Self::wait(&mut last, Duration::from_secs(300)).success(), "the last run failed");
        self.check(crashes)
    }

    /// Checks the invariants (every order terminal, the books balance, nothing left queued)
    /// and returns the orders' outcomes, one line each.
    fn check(&self, crashes: u64) -> String {
        let check = self
            .command(&["check", self.path(), &self.orders.to_string(), &self.seed.to_string()])
            .output()
            .expect("the checker runs");
        let problems = String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success(), "after {crashes} crashes:\n{problems}");
        String::from_utf8(check.stdout).expect("UTF-8 outcomes")
    }

    /// Starts the worker `rounds` times and SIGKILLs it after the moment `strike_after` gives.
    /// Returns how many kills found the worker still at work.
    fn kill_repeatedly(&self, rounds: u64, mut strike_after: impl FnMut() -> Duration) -> u64 {
        let mut crashes = 0;
        for _ in 0..rounds {
            let mut child = self.start(None, Stdio::inherit());
            std::thread::sleep(strike_after());
            if child.try_wait().expect("the worker can be waited for").is_none() {
                child.kill().expect("SIGKILL");
                crashes += 1;
            }
            child.wait().expect("the worker can be waited for");
        }
        crashes
    }
}

#[test]
fn sigkill_on_the_local_bus_ends_every_order_as_a_clean_run_does() {
    let (rounds, orders) = (env_or("SAGA_CRASH_ROUNDS", 6), env_or("SAGA_CRASH_LOCAL_ORDERS", 1_000));
    let seed = env_or("SAGA_CRASH_SEED", 0x5EED);
    let (_bin, worker) = worker();
    let clean = Epoch::new(&worker, false, orders, seed);
    let started = Instant::now();
    let expected = clean.finish_and_check(0);
    let clean_took = started.elapsed();

    let crashed = Epoch::new(&worker, false, orders, seed);
    let mut random = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    // A random share of the clean run's duration, so that the kills fall across the work on
    // any machine.
    let crashes =
        crashed.kill_repeatedly(rounds, || clean_took.mul_f64(0.03 + random.f64() * 0.17) + Duration::from_millis(50));
    let outcomes = crashed.finish_and_check(crashes);
    assert_same_outcomes(&expected, &outcomes, &format!("after {crashes} SIGKILLs"));
    assert!(crashes >= rounds.min(5), "only {crashes} of {rounds} kills found the worker at work");
    eprintln!(
        "{orders} orders (seed {seed}): clean run {clean_took:.1?}; {crashes} SIGKILLs and a last run {:.1?}; \
         every order ended as in the clean run, books balance, nothing left queued",
        started.elapsed()
    );
}

#[cfg(feature = "rabbitmq")]
fn broker_is_configured(suite: &str) -> bool {
    let configured = std::env::var("SAGA_TEST_AMQP_URL").is_ok();
    if !configured {
        sagaflow::bus::conformance::say_skipped(suite, "SAGA_TEST_AMQP_URL");
    }
    configured
}

#[cfg(feature = "rabbitmq")]
#[test]
fn sigkill_on_rabbitmq_at_random_moments_loses_nothing_and_repeats_nothing() {
    if !broker_is_configured("process crash test (SIGKILL on RabbitMQ)") {
        return;
    }
    let (rounds, orders) = (env_or("SAGA_CRASH_ROUNDS", 6), env_or("SAGA_CRASH_ORDERS", 400));
    let (_bin, worker) = worker();
    let epoch = Epoch::new(&worker, true, orders, 0x9E37_79B9);
    let mut random = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    // A spread of kill moments, from right after start to well into the work.
    let crashes = epoch.kill_repeatedly(rounds, || Duration::from_millis(150 + random.u64(..1_500)));
    epoch.finish_and_check(crashes);
    eprintln!("{orders} orders, {crashes} SIGKILLs, every order terminal, books balance");
}

/// How many hits of each point a round lets pass at most before it aborts: about a tenth of
/// an epoch's work, so that every round makes progress and most rounds crash.
#[cfg(feature = "failpoints")]
fn max_hits_before_crash(point: &str, orders: u64) -> u64 {
    let per_hundred_orders = match point {
        // Retry timers (one ship retry in five orders), compensations (one order in ten) and
        // the relay's removals (it removes what it published in batches: 11 to 19 in a clean
        // epoch of 200 orders on RabbitMQ, fewer in one that a crash cut short).
        "timers.before_fire" | "saga.during_compensation" | "relay.after_publish_before_outbox_removal" => 2,
        "saga.before_commit" | "participant.before_commit" => 40,
        _ => 80,
    };
    (orders * per_hundred_orders / 100).max(2)
}

/// Where a crash-point run's epochs live.
#[cfg(feature = "failpoints")]
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    LocalBus,
    #[cfg(feature = "rabbitmq")]
    RabbitMq,
    /// PostgreSQL store and bus, with a companion worker beside the armed one.
    #[cfg(feature = "postgres")]
    Postgres,
}

#[cfg(feature = "failpoints")]
fn epoch(setup: Setup, worker: &Path, orders: u64, seed: u64) -> Epoch {
    match setup {
        Setup::LocalBus => Epoch::new(worker, false, orders, seed),
        #[cfg(feature = "rabbitmq")]
        Setup::RabbitMq => Epoch::new(worker, true, orders, seed),
        #[cfg(feature = "postgres")]
        Setup::Postgres => Epoch::on_postgres(worker, orders, seed),
    }
}

/// Aborts the worker at each of `points` in turn (see the module docs) and checks every epoch.
#[cfg(feature = "failpoints")]
fn abort_at_every_crash_point(setup: Setup, points: &[&str]) {
    let orders = env_or("SAGA_CRASH_POINT_ORDERS", 200);
    let rounds = env_or("SAGA_CRASH_POINT_ROUNDS", 2 * points.len() as u64);
    let (_bin, worker) = worker();
    let mut random = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
    let mut hits = vec![0u64; points.len()];
    let (mut epochs, mut epoch_crashes, mut runs) = (1, 0, 0);
    let mut epoch = epoch(setup, &worker, orders, epochs);
    let started = Instant::now();
    for _ in 0..rounds {
        // The point hit least so far: a round that found no work left for its point (the
        // epoch ended first) gives that point the next round too.
        let least = (0..points.len()).min_by_key(|&i| hits[i]).unwrap_or_default();
        let point = points[least];
        let after = random.u64(..max_hits_before_crash(point, orders));
        let actions = if after == 0 { "1*return".to_owned() } else { format!("{after}*off->1*return") };
        let mut child = epoch.start(Some(&format!("{point}={actions}")), Stdio::piped());
        let mut companion = epoch.database.is_some().then(|| epoch.start_companion());
        let mut stderr = child.stderr.take().expect("a piped stderr");
        let reader = std::thread::spawn(move || {
            use std::io::Read as _;
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let status = Epoch::wait(&mut child, Duration::from_secs(300));
        let text = reader.join().expect("the stderr reader");
        if let Some(mut c) = companion.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        runs += 1;
        if let Some(i) = points.iter().position(|p| text.contains(&format!("sagaflow crash point hit: {p}\n"))) {
            assert!(!status.success(), "the worker reported a crash at {} but exited cleanly", points[i]);
            hits[i] += 1;
            epoch_crashes += 1;
        } else {
            assert!(status.success(), "the worker failed without reaching its crash point:\n{text}");
            // The epoch's work is done: check it and start the next.
            epoch.check(epoch_crashes);
            epochs += 1;
            epoch = self::epoch(setup, &worker, orders, epochs);
            epoch_crashes = 0;
        }
    }
    epoch.finish_and_check(epoch_crashes);
    let crashes: u64 = hits.iter().sum();
    let per_point: Vec<String> = points.iter().zip(&hits).map(|(p, n)| format!("  {p}: {n}")).collect();
    eprintln!(
        "{runs} runs, {crashes} aborts at crash points, {epochs} epochs of {orders} orders ({} orders), {:.0?}; \
         every order terminal, books balance, 0 lost, 0 duplicated\n{}",
        epochs * orders,
        started.elapsed(),
        per_point.join("\n")
    );
    assert!(hits.iter().all(|&n| n > 0) || rounds < points.len() as u64, "some crash points were never hit: {hits:?}");
}

#[cfg(feature = "failpoints")]
#[test]
fn an_abort_at_every_crash_point_on_the_local_bus_loses_nothing_and_repeats_nothing() {
    // A commit writes its messages straight into the local bus's queues: the relay publishes
    // nothing on this path, so its point is never reached.
    let points: Vec<&str> = sagaflow::crash_points::ALL.iter().copied().filter(|p| !p.starts_with("relay.")).collect();
    abort_at_every_crash_point(Setup::LocalBus, &points);
}

#[cfg(all(feature = "rabbitmq", feature = "failpoints"))]
#[test]
fn an_abort_at_every_crash_point_on_rabbitmq_loses_nothing_and_repeats_nothing() {
    if !broker_is_configured("process crash test (crash points on RabbitMQ)") {
        return;
    }
    // The local bus's points are not on this path.
    let points: Vec<&str> =
        sagaflow::crash_points::ALL.iter().copied().filter(|p| !p.starts_with("local_bus.")).collect();
    abort_at_every_crash_point(Setup::RabbitMq, &points);
}

#[cfg(all(feature = "postgres", feature = "failpoints"))]
#[test]
fn an_abort_at_every_crash_point_with_two_runtimes_on_postgresql_loses_nothing_and_repeats_nothing() {
    if std::env::var("SAGA_TEST_POSTGRES_URL").is_err() {
        sagaflow::bus::conformance::say_skipped("crash points on PostgreSQL", "SAGA_TEST_POSTGRES_URL");
        return;
    }
    // sled's and the local bus's points are not on this path, nor the key-value stores' flush.
    let points: Vec<&str> = sagaflow::crash_points::ALL
        .iter()
        .copied()
        .filter(|p| !p.starts_with("local_bus.") && !p.starts_with("sled.") && !p.starts_with("store."))
        .collect();
    abort_at_every_crash_point(Setup::Postgres, &points);
}
