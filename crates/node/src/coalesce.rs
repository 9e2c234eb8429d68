//! One call in flight per key, shared by every caller that arrived before it started.
//!
//! A linearizable read of a keyspace in ranges needs a timestamp the oracle handed out
//! after the read began, and a read barrier on its range's leader sent after it had that
//! timestamp (docs/RANGES.md, "the read-wait rule"). Neither has to be the caller's own:
//! any fetch *started* after the caller arrived answers it as well. So callers wait here
//! in a batch; one fetch runs at a time per key, and its answer goes to exactly the
//! callers that were waiting when it started. Callers arriving while it runs wait for the
//! next one, never for the one in flight: that one may have been answered before they
//! began. Under load a member then sends one oracle request and one barrier per range
//! per round trip, instead of one per read.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::NodeError;

/// The callers waiting for the next fetch of one key, and whether a fetch runs.
struct Batch<T> {
    waiting: Vec<oneshot::Sender<Result<T, NodeError>>>,
    fetching: bool,
}

/// Shared fetches, per key (a range's id for barriers, `()` for the oracle).
pub struct Coalescer<K, T> {
    batches: Mutex<HashMap<K, Batch<T>>>,
    /// A fetch that takes longer fails its batch with a timeout (and the next starts).
    fetch_timeout: Duration,
}

impl<K, T> Coalescer<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + 'static,
{
    pub fn new(fetch_timeout: Duration) -> Coalescer<K, T> {
        Coalescer {
            batches: Mutex::new(HashMap::new()),
            fetch_timeout,
        }
    }

    /// The answer of a `fetch` of `key` started after this call began. `fetch` runs on a
    /// task of its own (a caller that gives up does not stall the others), and is called
    /// again for the callers that arrived while it ran.
    pub async fn join<F, Fut>(self: &Arc<Self>, key: K, fetch: F) -> Result<T, NodeError>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, NodeError>> + Send + 'static,
    {
        let (respond, answer) = oneshot::channel();
        let start = {
            let mut batches = self.batches.lock().unwrap();
            let batch = batches.entry(key.clone()).or_insert_with(|| Batch {
                waiting: Vec::new(),
                fetching: false,
            });
            batch.waiting.push(respond);
            !std::mem::replace(&mut batch.fetching, true)
        };
        if start {
            let coalescer = Arc::clone(self);
            tokio::spawn(async move { coalescer.drive(key, fetch).await });
        }
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs fetches of `key` while callers wait for one, each for the callers waiting
    /// when it starts.
    async fn drive<F, Fut>(&self, key: K, fetch: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        // Should a fetch panic, the key is forgotten with its callers (who get `Stopped`),
        // so that the next caller starts a fetch again rather than wait for none.
        let _forget_on_panic = ForgetOnPanic {
            batches: &self.batches,
            key: key.clone(),
        };
        loop {
            let batch = {
                let mut batches = self.batches.lock().unwrap();
                let batch = batches.get_mut(&key).expect("a driven key has a batch");
                if batch.waiting.is_empty() {
                    batches.remove(&key);
                    return;
                }
                std::mem::take(&mut batch.waiting)
            };
            let answer = tokio::time::timeout(self.fetch_timeout, fetch())
                .await
                .unwrap_or(Err(NodeError::Timeout));
            for respond in batch {
                let _ = respond.send(answer.clone());
            }
        }
    }
}

struct ForgetOnPanic<'a, K: Eq + Hash, T> {
    batches: &'a Mutex<HashMap<K, Batch<T>>>,
    key: K,
}

impl<K: Eq + Hash, T> Drop for ForgetOnPanic<'_, K, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut batches) = self.batches.lock() {
                batches.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    type Fetch = Pin<Box<dyn Future<Output = Result<u64, NodeError>> + Send>>;

    /// Fetches that answer their number (from 1, in the order they start), each once a
    /// permit is released.
    struct Gated {
        started: AtomicU64,
        release: tokio::sync::Semaphore,
    }

    impl Gated {
        fn new() -> Arc<Gated> {
            Arc::new(Gated {
                started: AtomicU64::new(0),
                release: tokio::sync::Semaphore::new(0),
            })
        }

        fn fetcher(self: &Arc<Self>) -> impl Fn() -> Fetch + Send + 'static {
            let gated = Arc::clone(self);
            move || {
                let gated = Arc::clone(&gated);
                Box::pin(async move {
                    let number = gated.started.fetch_add(1, Ordering::SeqCst) + 1;
                    gated.release.acquire().await.unwrap().forget();
                    Ok(number)
                })
            }
        }

        fn started(&self) -> u64 {
            self.started.load(Ordering::SeqCst)
        }

        async fn until_started(&self, count: u64) {
            let wait = async {
                while self.started() < count {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .expect("the fetch started");
        }
    }

    fn caller<K>(
        coalescer: &Arc<Coalescer<K, u64>>,
        gated: &Arc<Gated>,
        key: K,
    ) -> tokio::task::JoinHandle<Result<u64, NodeError>>
    where
        K: Eq + Hash + Clone + Send + Sync + 'static,
    {
        let (coalescer, fetch) = (Arc::clone(coalescer), gated.fetcher());
        tokio::spawn(async move { coalescer.join(key, fetch).await })
    }

    #[tokio::test]
    async fn callers_share_the_next_fetch_and_never_the_one_in_flight() {
        let coalescer = Arc::new(Coalescer::<u8, u64>::new(Duration::from_secs(5)));
        let gated = Gated::new();
        let first = caller(&coalescer, &gated, 7);
        gated.until_started(1).await;
        // Three callers arrive while fetch 1 runs: it may have been answered before they
        // began, so they wait for fetch 2, together.
        let later: Vec<_> = (0..3).map(|_| caller(&coalescer, &gated, 7)).collect();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            gated.started(),
            1,
            "a second fetch of the key while one runs"
        );
        gated.release.add_permits(1);
        assert_eq!(first.await.unwrap(), Ok(1));
        gated.until_started(2).await;
        gated.release.add_permits(1);
        for caller in later {
            assert_eq!(caller.await.unwrap(), Ok(2));
        }
        assert_eq!(gated.started(), 2, "the three callers shared one fetch");
        assert!(coalescer.batches.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn keys_are_fetched_apart() {
        let coalescer = Arc::new(Coalescer::<u8, u64>::new(Duration::from_secs(5)));
        let gated = Gated::new();
        let seven = caller(&coalescer, &gated, 7);
        let eight = caller(&coalescer, &gated, 8);
        gated.until_started(2).await;
        gated.release.add_permits(2);
        let (seven, eight) = (seven.await.unwrap().unwrap(), eight.await.unwrap().unwrap());
        assert_ne!(seven, eight);
    }

    #[tokio::test]
    async fn a_fetch_that_panics_fails_its_batch_and_the_next_caller_fetches_again() {
        let coalescer = Arc::new(Coalescer::<(), u64>::new(Duration::from_secs(5)));
        let panicking = || async {
            if std::hint::black_box(true) {
                panic!("a planted panic in a fetch");
            }
            Ok::<u64, NodeError>(0)
        };
        assert_eq!(coalescer.join((), panicking).await, Err(NodeError::Stopped));
        let gated = Gated::new();
        gated.release.add_permits(1);
        let next =
            tokio::time::timeout(Duration::from_secs(5), coalescer.join((), gated.fetcher()));
        assert_eq!(
            next.await,
            Ok(Ok(1)),
            "the key stayed wedged after the panic"
        );
    }

    #[tokio::test]
    async fn a_fetch_that_hangs_fails_its_batch_and_the_next_one_runs() {
        let coalescer = Arc::new(Coalescer::<(), u64>::new(Duration::from_millis(50)));
        let gated = Gated::new();
        assert_eq!(
            coalescer.join((), gated.fetcher()).await,
            Err(NodeError::Timeout)
        );
        gated.release.add_permits(1);
        assert_eq!(coalescer.join((), gated.fetcher()).await, Ok(2));
    }
}
