//! The NATS JetStream transport against a running server (set `SAGA_TEST_NATS_URL`).
#![cfg(feature = "nats")]

use std::time::{Duration, Instant};

use saga_core::bus::conformance::{ConformanceTarget, say_skipped, unique};
use saga_core::bus::{Bus, BusError, NatsBus, NatsOptions, NatsTarget};
use saga_core::message::Envelope;

mod conformance {
    saga_core::conformance_tests!(saga_core::bus::NatsTarget::from_env());
}

/// A target with the suite's options adjusted, or `None` (saying so) without a server.
async fn target(adjust: impl FnOnce(NatsOptions) -> NatsOptions) -> Option<(NatsTarget, NatsBus)> {
    let Ok(url) = std::env::var("SAGA_TEST_NATS_URL") else {
        say_skipped("NATS transport tests", "SAGA_TEST_NATS_URL=nats://127.0.0.1:4222");
        return None;
    };
    let target = NatsTarget::connect(adjust(NatsTarget::options(url))).await;
    let bus = target.nats_bus().unwrap_or_else(|e| panic!("SAGA_TEST_NATS_URL is set but: {e}")).clone();
    Some((target, bus))
}

async fn next(consumer: &mut saga_core::bus::Consumer) -> saga_core::bus::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("nothing arrived within 10 s")
        .expect("the consumer ended")
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_quickly_and_says_what_to_check() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let url = format!("nats://app:s3cret@127.0.0.1:{port}");
    let err = NatsBus::connect(NatsOptions::new(url).connect_timeout(Duration::from_secs(2))).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let message = err.to_string();
    assert!(matches!(err, BusError::Transport(_)), "{err:?}");
    assert!(message.contains(&format!("nats://***@127.0.0.1:{port}")), "{message}");
    assert!(message.contains("check that nats-server is running"), "{message}");
    assert!(!message.contains("s3cret"), "the password leaked: {message}");
}

#[tokio::test]
async fn invalid_options_are_refused_before_connecting() {
    let err = NatsBus::connect(NatsOptions::new("nats://127.0.0.1:1").prefix("a..b")).await.unwrap_err();
    assert!(err.to_string().contains("invalid NatsOptions"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nacked_max_deliver_times_is_dead_lettered() {
    let Some((target, bus)) = target(|o| o.max_deliver(3)).await else { return };
    let (sub, name) = (unique("nats-max-deliver"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.unwrap();
    let sent = Envelope::new(name.as_str(), b"{}".to_vec());
    bus.publish(sent.clone()).await.unwrap();
    for attempt in 1..=3 {
        let d = next(&mut c).await;
        assert_eq!((d.envelope().message_id, d.envelope().attempt), (sent.message_id, attempt));
        d.nack(Duration::from_millis(50)).await.unwrap();
    }
    assert!(tokio::time::timeout(Duration::from_millis(700), c.next()).await.is_err(), "delivered a fourth time");
    let dead = bus.dead_letters(&sub, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].envelope.message_id, sent.message_id);
    assert_eq!(dead[0].envelope.attempt, 3);
    assert_eq!(dead[0].reason, "delivered 3 times without being acked");
    bus.unsubscribe(&sub).await.unwrap();
    target.clean_up(&target.bus().await, &sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_consumers_keep_crashing_is_dead_lettered_on_its_next_arrival() {
    let Some((target, bus)) = target(|o| o.max_deliver(2)).await else { return };
    let (sub, name) = (unique("nats-crash-loop"), unique("event"));
    let sent = Envelope::new(name.as_str(), b"{}".to_vec());
    let mut c = bus.subscribe(&sub, &[&name]).await.unwrap();
    bus.publish(sent.clone()).await.unwrap();
    for attempt in 1..=2 {
        let d = next(&mut c).await;
        assert_eq!(d.envelope().attempt, attempt);
        drop(d); // the handler crashed: handed back unsettled
    }
    assert!(tokio::time::timeout(Duration::from_millis(700), c.next()).await.is_err(), "delivered a third time");
    let dead = bus.dead_letters(&sub, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "delivered 2 times without being acked");
    bus.unsubscribe(&sub).await.unwrap();
    target.clean_up(&target.bus().await, &sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_names_round_trip_and_do_not_match_each_other() {
    let Some((_target, bus)) = target(|o| o).await else { return };
    let base = unique("names");
    let names: Vec<String> = ["with space", "star*", "gt>", "dots..twice", "trailing.", "ünï", "a.b", "a%2Eb"]
        .iter()
        .map(|n| format!("{base}.{n}"))
        .collect();
    let mut consumers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        consumers.push(bus.subscribe(&format!("{base}.sub{i}"), &[name]).await.unwrap());
    }
    for name in &names {
        bus.publish(Envelope::new(name.as_str(), name.as_bytes().to_vec())).await.unwrap();
    }
    for (name, c) in names.iter().zip(&mut consumers) {
        let d = next(c).await;
        assert_eq!(&d.envelope().name, name);
        assert_eq!(d.envelope().payload, name.as_bytes());
        d.ack().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), c.next()).await.is_err(),
            "{name} got another name's message"
        );
    }
    for i in 0..names.len() {
        bus.unsubscribe(&format!("{base}.sub{i}")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_consumes_several_names_and_binding_more_keeps_the_old() {
    let Some((_target, bus)) = target(|o| o).await else { return };
    let (sub, a, b) = (unique("multi"), unique("a"), unique("b"));
    let mut first = bus.subscribe(&sub, &[&a]).await.unwrap();
    let mut second = bus.subscribe(&sub, &[&a, &b]).await.unwrap();
    bus.publish(Envelope::new(b.as_str(), vec![])).await.unwrap();
    let d = next(&mut second).await;
    assert_eq!(d.envelope().name, b);
    d.ack().await.unwrap();
    bus.publish(Envelope::new(a.as_str(), vec![])).await.unwrap();
    let d = tokio::select! {
        d = next(&mut first) => d,
        d = next(&mut second) => d,
    };
    assert_eq!(d.envelope().name, a);
    d.ack().await.unwrap();
    bus.unsubscribe(&sub).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), first.next()).await.unwrap().is_none());
    assert!(tokio::time::timeout(Duration::from_secs(5), second.next()).await.unwrap().is_none());
    assert!(matches!(bus.unsubscribe(&sub).await, Err(BusError::UnknownSubscription(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_elsewhere_ends_this_process_consumers() {
    let Some((_target, bus)) = target(|o| o).await else { return };
    let Some((_other_target, other)) = target(|o| o).await else { return };
    let (sub, name) = (unique("remote-unsub"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.unwrap();
    other.unsubscribe(&sub).await.unwrap();
    // The consumer learns of it from missed heartbeats (two of 5 s): allow well past that on a
    // busy machine.
    assert!(tokio::time::timeout(Duration::from_secs(40), c.next()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_other_publishers_are_delivered_or_dead_lettered_never_lost() {
    let Some((target, bus)) = target(|o| o).await else { return };
    let url = std::env::var("SAGA_TEST_NATS_URL").unwrap();
    let (sub, name) = (unique("foreign"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let subject = format!("sagaflow-conformance.msg.{name}");

    // No sagaflow headers at all: delivered with the subject's name and a stable id.
    js.publish(subject.clone(), "plain".into()).await.unwrap().await.unwrap();
    let d = next(&mut c).await;
    assert_eq!((d.envelope().name.as_str(), d.envelope().payload.as_slice()), (name.as_str(), &b"plain"[..]));
    let id = d.envelope().message_id;
    d.nack(Duration::ZERO).await.unwrap();
    let again = next(&mut c).await;
    assert_eq!((again.envelope().message_id, again.envelope().attempt), (id, 2));
    again.ack().await.unwrap();

    // Sagaflow headers that cannot be read: parked by the transport with the reason.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("sagaflow-message-id", "not-a-uuid");
    js.publish_with_headers(subject.clone(), headers, "broken".into()).await.unwrap().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(700), c.next()).await.is_err(),
        "a broken message was handed out"
    );
    let dead = bus.dead_letters(&sub, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.starts_with("malformed sagaflow metadata"), "{}", dead[0].reason);
    assert_eq!((dead[0].envelope.name.as_str(), dead[0].envelope.payload.as_slice()), (name.as_str(), &b"broken"[..]));

    bus.unsubscribe(&sub).await.unwrap();
    target.clean_up(&target.bus().await, &sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_message_is_deduplicated_by_the_server() {
    let Some((_target, bus)) = target(|o| o).await else { return };
    let (sub, name) = (unique("dedupe"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.unwrap();
    let sent = Envelope::new(name.as_str(), b"{}".to_vec());
    bus.publish(sent.clone()).await.unwrap();
    bus.publish(sent.clone()).await.unwrap();
    next(&mut c).await.ack().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), c.next()).await.is_err(), "delivered twice");
    bus.unsubscribe(&sub).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_bus_ends_its_consumers_and_refuses_work() {
    let Some((_target, bus)) = target(|o| o).await else { return };
    let (sub, name) = (unique("close"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.unwrap();
    bus.unsubscribe(&sub).await.unwrap();
    bus.close().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), c.next()).await.unwrap().is_none());
    assert!(bus.subscribe(&sub, &[&name]).await.is_err());
}

/// A nats-server of our own (so it can be stopped), killed when dropped.
struct OwnServer {
    child: Option<std::process::Child>,
    binary: std::path::PathBuf,
    port: u16,
    store: tempfile::TempDir,
}

impl OwnServer {
    /// Starts one if `SAGA_TEST_NATS_URL` asks for NATS tests and a `nats-server` binary is found
    /// (`SAGA_TEST_NATS_SERVER`, the `PATH`, or `/usr/sbin`).
    async fn start() -> Option<OwnServer> {
        std::env::var("SAGA_TEST_NATS_URL").ok()?;
        let binary = std::env::var_os("SAGA_TEST_NATS_SERVER")
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain(std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join("nats-server")))
            .chain([std::path::PathBuf::from("/usr/sbin/nats-server")])
            .find(|p| p.is_file());
        let Some(binary) = binary else {
            say_skipped("NATS reconnection test", "SAGA_TEST_NATS_SERVER=/path/to/nats-server");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = OwnServer { child: None, binary, port, store: tempfile::tempdir().unwrap() };
        server.up().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) {
        let child = std::process::Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_loses_nothing_and_consumers_resume_on_their_own() {
    let Some(mut server) = OwnServer::start().await else { return };
    let options =
        NatsOptions::new(server.url()).ack_wait(Duration::from_secs(2)).request_timeout(Duration::from_secs(2));
    let bus = NatsBus::connect(options).await.unwrap();
    let mut c = bus.subscribe("svc", &["m"]).await.unwrap();
    bus.publish(Envelope::new("m", b"before".to_vec())).await.unwrap();
    let held = next(&mut c).await;
    assert_eq!(held.envelope().payload, b"before");

    // Down for longer than the request timeout and the pull heartbeat: publishes fail and are
    // retried, as the outbox relay does, and the consumer's pulls are reopened.
    server.down();
    assert!(held.ack().await.is_err(), "an ack cannot be confirmed while the server is down");
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let sent = Envelope::new("m", b"during".to_vec());
            let mut failures = 0;
            while let Err(e) = bus.publish(sent.clone()).await {
                assert!(matches!(e, BusError::Transport(_)), "{e:?}");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_secs(12)).await;
    server.up().await;
    let failures = tokio::time::timeout(Duration::from_secs(30), publisher).await.unwrap().unwrap();
    assert!(failures > 0, "publishing succeeded while the server was down");

    // "during" arrives once the server is back. "before" may come back too: its ack was not
    // confirmed, and whether it reached the server is unknown (at least once, never lost).
    let mut seen = Vec::new();
    loop {
        let d = tokio::time::timeout(Duration::from_secs(30), c.next()).await.unwrap().unwrap();
        seen.push(String::from_utf8(d.envelope().payload.clone()).unwrap());
        d.ack().await.unwrap();
        if seen.last().is_some_and(|p| p == "during") {
            break;
        }
    }
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(3), c.next()).await {
        seen.push(String::from_utf8(d.envelope().payload.clone()).unwrap());
        d.ack().await.unwrap();
    }
    let during = seen.iter().filter(|p| *p == "during").count();
    let before = seen.iter().filter(|p| *p == "before").count();
    assert!(during == 1 && before <= 1 && seen.len() == during + before, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_servers_max_payload_travels_whole_and_so_does_its_dead_letter() {
    let Some((_target, bus)) = target(|o| o).await else { return };
    let (sub, name) = (unique("nats-large"), unique("event"));
    let mut c = bus.subscribe(&sub, &[&name]).await.unwrap();
    // Twice the server's default max_payload (1 MiB), under the engine's 4 MiB.
    let payload: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = Envelope::new(name.as_str(), payload.clone());
    bus.publish(sent.clone()).await.unwrap();
    bus.publish(sent.clone()).await.unwrap(); // a retried publish: deduplicated, same object
    let d = next(&mut c).await;
    assert_eq!((d.envelope().message_id, d.envelope().payload.len()), (sent.message_id, payload.len()));
    assert!(d.envelope().payload == payload, "the payload arrived whole");
    d.dead_letter("too big to handle").await.unwrap();
    let bus_dyn: std::sync::Arc<dyn Bus> = std::sync::Arc::new(bus.clone());
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead = bus_dyn.dead_letters(&sub, 10).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 1);
    assert!(dead[0].envelope.payload == payload, "the dead letter keeps the whole payload");
    bus.unsubscribe(&sub).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_kept_alive_past_its_ack_wait_is_not_handed_to_another_consumer() {
    let Some((_target, bus)) = target(|o| o.ack_wait(Duration::from_secs(1))).await else { return };
    let (sub, name) = (unique("nats-keep-alive"), unique("event"));
    let mut a = bus.subscribe(&sub, &[&name]).await.unwrap();
    let mut b = bus.subscribe(&sub, &[&name]).await.unwrap();
    bus.publish(Envelope::new(name.as_str(), b"{}".to_vec())).await.unwrap();
    let held = tokio::select! { d = a.next() => d.unwrap(), d = b.next() => d.unwrap() };
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        held.keep_alive().await.unwrap();
    }
    let again = tokio::select! {
        d = a.next() => d,
        d = b.next() => d,
        _ = tokio::time::sleep(Duration::from_millis(500)) => None,
    };
    assert!(again.is_none(), "redelivered while it was kept alive: {:?}", again.map(|d| d.envelope().attempt));
    held.ack().await.unwrap();
    bus.unsubscribe(&sub).await.unwrap();
}
