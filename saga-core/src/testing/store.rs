//! A commit hook that fails chosen commits, for fault-injection tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{Commit, CommitHook, Committed, Store, StoreError};

/// Fails the commit whose number (from 1) is in `fail_at`; wrap a store with it through
/// [`Intercepted`](crate::store::Intercepted).
pub(crate) struct FailCommits {
    commits: AtomicU64,
    fail_at: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl FailCommits {
    pub(crate) fn new(fail_at: Arc<std::sync::Mutex<Vec<u64>>>) -> Self {
        FailCommits { commits: AtomicU64::new(0), fail_at }
    }
}

#[async_trait::async_trait]
impl CommitHook for FailCommits {
    async fn commit(&self, store: &dyn Store, commit: Commit) -> Result<Committed, StoreError> {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = {
            let mut fail_at = self.fail_at.lock().unwrap_or_else(|e| e.into_inner());
            let hit = fail_at.contains(&n);
            fail_at.retain(|f| *f != n);
            hit
        };
        if fail {
            return Err(StoreError::Io(format!("injected failure of commit #{n}")));
        }
        store.commit(commit).await
    }
}
