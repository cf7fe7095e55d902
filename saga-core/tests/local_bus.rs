//! The durable local bus: the transport conformance suite on a sled store, and what a reopen
//! of the store (as after a kill -9) redelivers.

use std::sync::Arc;
use std::time::Duration;

use saga_core::bus::{Bus, LocalBus};
use saga_core::message::Envelope;
use saga_core::store::{Commit, SledStore, Store};

mod conformance {
    use std::sync::Arc;

    saga_core::conformance_tests!(async {
        // Each check gets its own store; the directory outlives the check's bus.
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let store: Arc<dyn saga_core::store::Store> = Arc::new(saga_core::store::SledStore::open(dir.path()).unwrap());
        Some(saga_core::bus::LocalTarget::new(store))
    });
}

fn open(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(SledStore::open(dir).unwrap())
}

fn message(n: u32) -> Envelope {
    Envelope::new("orders.placed", n.to_be_bytes().to_vec())
}

async fn next(consumer: &mut saga_core::bus::Consumer) -> saga_core::bus::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.expect("a delivery within 10 s").unwrap()
}

/// Drops the bus and waits until sled let go of the directory, as the end of a process does.
async fn reopen(dir: &std::path::Path, bus: LocalBus, store: Arc<dyn Store>) -> (LocalBus, Arc<dyn Store>) {
    drop(bus);
    drop(store);
    let store: Arc<dyn Store> = Arc::new(reopen_store(dir).await);
    (LocalBus::open(store.clone()), store)
}

async fn reopen_store(dir: &std::path::Path) -> SledStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match SledStore::open(dir) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() > deadline => panic!("the store did not reopen: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_store_redelivers_exactly_what_was_not_acked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bus = LocalBus::open(store.clone());
    let mut billing = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    let audit = bus.subscribe("audit", &["orders.placed"]).await.unwrap();
    for n in 0..4 {
        bus.publish(message(n)).await.unwrap();
    }
    // billing acks two, dead-letters one and drops one unsettled (its consumer died); audit
    // consumes nothing.
    next(&mut billing).await.ack().await.unwrap();
    next(&mut billing).await.ack().await.unwrap();
    next(&mut billing).await.dead_letter("cannot bill").await.unwrap();
    drop(next(&mut billing).await);
    drop((billing, audit));

    let (bus, store) = reopen(dir.path(), bus, store).await;
    let mut billing = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    let again = next(&mut billing).await;
    assert_eq!((again.envelope().payload.as_slice(), again.envelope().attempt), (&3u32.to_be_bytes()[..], 2));
    again.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), billing.next()).await.is_err(),
        "nothing else for billing"
    );
    let mut audit = bus.subscribe("audit", &["orders.placed"]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let d = next(&mut audit).await;
        seen.push(d.envelope().payload.clone());
        d.ack().await.unwrap();
    }
    assert_eq!(seen, (0..4u32).map(|n| n.to_be_bytes().to_vec()).collect::<Vec<_>>(), "in publication order");
    let dead = bus.all_dead_letters(10).await.unwrap();
    assert_eq!((dead.len(), dead[0].reason.as_str(), dead[0].subscription.as_str()), (1, "cannot bill", "billing"));
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_limit_counts_the_deliveries_of_earlier_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bus = LocalBus::open_with_max_deliveries(store.clone(), 3);
    let mut c = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    bus.publish(message(7)).await.unwrap();
    next(&mut c).await.nack(Duration::ZERO).await.unwrap();
    next(&mut c).await.nack(Duration::ZERO).await.unwrap();
    drop(c);
    drop(bus);
    drop(store);
    let store: Arc<dyn Store> = Arc::new(reopen_store(dir.path()).await);
    let bus = LocalBus::open_with_max_deliveries(store.clone(), 3);
    let mut c = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    let third = next(&mut c).await;
    assert_eq!(third.envelope().attempt, 3, "the third delivery, counting the earlier run's two");
    third.nack(Duration::ZERO).await.unwrap();
    let dead = bus.all_dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("delivered 3 times"), "{}", dead[0].reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_discards_the_subscriptions_queue_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bus = LocalBus::open(store.clone());
    let c = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    bus.publish(message(1)).await.unwrap();
    drop(c);
    bus.unsubscribe("billing").await.unwrap();
    assert!(store.queued("billing", None, 10).await.unwrap().is_empty());
    let (bus, _store) = reopen(dir.path(), bus, store).await;
    let mut c = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), c.next()).await.is_err());
}

#[tokio::test]
async fn a_publish_no_subscription_takes_is_refused_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bus = LocalBus::open(store.clone());
    let err = bus.publish(message(1)).await.unwrap_err();
    assert!(matches!(err, saga_core::bus::BusError::Unroutable { .. }), "{err}");
    assert!(store.queued("billing", None, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_routed_into_the_queues_keeps_its_messages_there_until_they_are_acked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bus = LocalBus::open(store.clone());
    let mut billing = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    let routes = bus.stored_routes(&*store, "orders.placed").expect("the bus's own store is routed into its queues");
    assert_eq!(routes, ["billing"]);
    let queued = routes.into_iter().map(|r| (r, message(7))).collect();
    let committed = store.commit(Commit { queued, ..Commit::default() }).await.unwrap();
    committed.durable.await.unwrap();
    assert!(committed.outbox.is_empty(), "no outbox entry for a routed message");
    bus.deliver_stored(committed.queued).unwrap();
    let first = next(&mut billing).await;
    assert_eq!(first.envelope().payload, 7u32.to_be_bytes());
    drop(first); // its consumer died before acking: the store keeps the message
    drop(billing);

    let (bus, store) = reopen(dir.path(), bus, store).await;
    let mut billing = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    let again = next(&mut billing).await;
    assert_eq!(again.envelope().payload, 7u32.to_be_bytes());
    again.ack().await.unwrap();
    drop(billing);
    let (bus, store) = reopen(dir.path(), bus, store).await;
    let mut billing = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), billing.next()).await.is_err(), "acked means gone");
    drop((bus, store));
}

#[tokio::test]
async fn only_commits_to_the_buss_own_store_and_to_a_bound_name_are_routed_into_its_queues() {
    let (mine, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = open(mine.path());
    let bus = LocalBus::open(store.clone());
    let _billing = bus.subscribe("billing", &["orders.placed"]).await.unwrap();
    let wrapped: Arc<dyn Store> = Arc::new(store.clone());
    assert!(bus.stored_routes(&*wrapped, "orders.placed").is_some(), "a wrapper of the same store is that store");
    assert!(
        bus.stored_routes(&*open(other.path()), "orders.placed").is_none(),
        "another store goes through the outbox"
    );
    assert!(bus.stored_routes(&*store, "orders.shipped").is_none(), "a name nobody takes goes through the outbox");
}
