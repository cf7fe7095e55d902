//! Exclusive subscriptions on NATS: one owner per subscription, found in a key-value bucket.
//!
//! JetStream has no exclusive consumer, so ownership is a claim: the key of the subscription
//! in the bucket `<stream>_OWNERS` holds the inbox subject of its owner, and the owner answers
//! requests on that subject for as long as its connection lives. A claim is taken with the
//! bucket's atomic create, or, when the key is held, by pinging the holder: an answer (or no
//! answer in time, which may be a slow owner) means a live owner and the subscription is
//! refused; only "no responders" (the server knows nobody listens: the holder's connection is
//! gone) lets the claim be taken over, with a compare-and-set on the revision read, so two
//! newcomers cannot both win. A consumer that goes away deletes its claim.
//!
//! The owner also watches its key: if the claim ever moves to someone else (its connection was
//! down long enough to look dead), its consumer ends at once, with an error in the log, rather
//! than consume beside the new owner.
//!
//! What this does not see: plain (non-exclusive) consumers of a subscription register nothing,
//! so an exclusive subscribe does not notice one that subscribed before it; a plain subscribe
//! does notice a live exclusive owner and is refused.

use std::time::Duration;

use async_nats::RequestErrorKind;
use async_nats::jetstream::{kv, stream};
use futures::StreamExt as _;
use tokio::sync::{OnceCell, watch};

use super::{Inner, durable_prefix};
use crate::bus::BusError;

/// How long a ping waits for a live owner's answer.
const PING: Duration = Duration::from_secs(1);
/// How long an exclusive subscribe waits for a live owner to go away (a runtime of this process
/// dropped a moment ago releases its claim in the background).
const WAIT: Duration = Duration::from_secs(3);

/// The bucket, opened on first use.
#[derive(Default)]
pub(super) struct Owners(OnceCell<kv::Store>);

/// A claim held by a consumer; dropping it gives the subscription up.
pub(super) struct Claim {
    store: kv::Store,
    key: String,
    revision: u64,
    responder: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
    /// Set when the claim moved to someone else.
    pub(super) lost: watch::Receiver<bool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.responder.abort();
        self.watcher.abort();
        let (store, key, revision) = (self.store.clone(), self.key.clone(), self.revision);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Only our own claim: if someone took it over, the revision moved on.
                let _ = store.delete_expect_revision(&key, Some(revision)).await;
            });
        }
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Transport(format!("NATS ownership of a subscription: cannot {what}: {e}; check the connection to NATS"))
}

impl Inner {
    async fn owners(&self) -> Result<&kv::Store, BusError> {
        self.owners
            .0
            .get_or_try_init(|| async {
                // The bucket's stream, as async-nats would make it, written out: its own
                // `create_key_value` asks for account details that nats-server 2.9 words differently.
                let bucket = format!("{}_OWNERS", self.options.stream);
                let config = stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some("sagaflow: which process consumes an exclusive subscription".into()),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    storage: stream::StorageType::File,
                    num_replicas: self.options.replicas,
                    ..Default::default()
                };
                super::ensure_stream(&self.js, config, &self.url).await?;
                self.js.get_key_value(&bucket).await.map_err(|e| failed(&format!("open the bucket {bucket}"), e))
            })
            .await
    }

    fn owner_key(subscription: &str) -> String {
        durable_prefix(subscription).trim_end_matches('_').to_owned()
    }

    /// Whether `holder` (an owner's inbox subject) may still be alive: only the server saying
    /// that nobody listens on it proves the holder gone.
    async fn may_be_alive(&self, holder: &str) -> bool {
        match tokio::time::timeout(PING, self.client.request(holder.to_owned(), Default::default())).await {
            Ok(Err(e)) => e.kind() != RequestErrorKind::NoResponders,
            Ok(Ok(_)) | Err(_) => true,
        }
    }

    /// Refuses a plain subscribe while a live owner holds the subscription exclusively.
    pub(super) async fn check_not_owned(&self, subscription: &str) -> Result<(), BusError> {
        let store = self.owners().await?;
        let entry = store.entry(Self::owner_key(subscription)).await.map_err(|e| failed("read a claim", e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let holder = String::from_utf8_lossy(&e.value).into_owned();
                if self.may_be_alive(&holder).await {
                    return Err(BusError::SubscriptionInUse {
                        subscription: subscription.to_owned(),
                        detail: format!("a live process ({holder}) consumes it exclusively"),
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Takes the subscription's claim, waiting a little for a holder that is going away.
    pub(super) async fn claim(&self, subscription: &str) -> Result<Claim, BusError> {
        let store = self.owners().await?.clone();
        let key = Self::owner_key(subscription);
        let me = format!("{}.owner", self.client.new_inbox());
        let mut pings = self.client.subscribe(me.clone()).await.map_err(|e| failed("listen for pings", e))?;
        let client = self.client.clone();
        let responder = tokio::spawn(async move {
            while let Some(ping) = pings.next().await {
                if let Some(reply) = ping.reply {
                    let _ = client.publish(reply, "alive".into()).await;
                }
            }
        });
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let taken = match store.create(&key, me.clone().into()).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    match store.entry(key.clone()).await.map_err(|e| failed("read a claim", e))? {
                        Some(held) => {
                            let holder = String::from_utf8_lossy(&held.value).into_owned();
                            if self.may_be_alive(&holder).await {
                                if tokio::time::Instant::now() >= deadline {
                                    responder.abort();
                                    return Err(BusError::SubscriptionInUse {
                                        subscription: subscription.to_owned(),
                                        detail: format!("a live process ({holder}) consumes it exclusively"),
                                    });
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                None
                            } else {
                                // Its holder is gone: take it over, unless someone else does first.
                                store.update(&key, me.clone().into(), held.revision).await.ok()
                            }
                        }
                        None => None,
                    }
                }
                Err(e) => {
                    responder.abort();
                    return Err(failed("claim the subscription", e));
                }
            };
            if let Some(revision) = taken {
                let (tx, lost) = watch::channel(false);
                let watching = watch_claim(store.clone(), key.clone(), me.clone(), subscription.to_owned(), tx);
                let watcher = tokio::spawn(watching);
                return Ok(Claim { store, key, revision, responder, watcher, lost });
            }
        }
    }
}

/// Ends the owner's consumption if its claim moves to someone else.
async fn watch_claim(store: kv::Store, key: String, me: String, subscription: String, lost: watch::Sender<bool>) {
    let mut changes = match store.watch(&key).await {
        Ok(changes) => changes,
        Err(e) => {
            tracing::warn!(%subscription, error = %e, "cannot watch the exclusive claim; a takeover would go unnoticed");
            return;
        }
    };
    while let Some(change) = changes.next().await {
        let Ok(entry) = change else { continue };
        if entry.operation != kv::Operation::Put || entry.value.as_ref() != me.as_bytes() {
            tracing::error!(
                %subscription,
                holder = %String::from_utf8_lossy(&entry.value),
                "this process lost its exclusive claim on the subscription (its connection looked dead); its consumer stops"
            );
            lost.send_replace(true);
            return;
        }
    }
}
