//! One thread per node removes compaction's garbage for every range's store.
//!
//! A thread per store, each waking every second to look for work, cost a node with many
//! ranges a thread and a wake-up per second per range at rest. Here a store with work
//! puts itself on the compactor's queue (once: `queued`) whenever its compaction target
//! or its data changes, and the one thread sleeps until something is queued. Stores are
//! served in turn, one pass each, so one large range does not starve the others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use super::store::MvccStore;

/// The stores with compaction work, in the order they asked.
#[derive(Default)]
pub(crate) struct CompactionQueue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    due: VecDeque<Weak<MvccStore>>,
    stopped: bool,
}

impl CompactionQueue {
    /// Puts `store` on the queue unless it is on it (`queued` is the store's flag).
    pub(crate) fn push(&self, store: Weak<MvccStore>, queued: &AtomicBool) {
        if queued.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut state = self.state.lock().unwrap();
        state.due.push_back(store);
        self.wake.notify_one();
    }

    /// The next store with work, waiting for one; None once stopped.
    fn pop(&self) -> Option<Weak<MvccStore>> {
        let mut state = self.state.lock().unwrap();
        loop {
            if state.stopped {
                return None;
            }
            if let Some(store) = state.due.pop_front() {
                return Some(store);
            }
            state = self.wake.wait(state).unwrap();
        }
    }

    fn stop(&self) {
        self.state.lock().unwrap().stopped = true;
        self.wake.notify_all();
    }
}

/// The node's compactor: one thread, told to stop when this is dropped (it finishes the
/// pass it is in, if any, on its own: shutting down does not wait for a large range).
pub struct Compactor {
    queue: Arc<CompactionQueue>,
}

impl Compactor {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Compactor> {
        let queue = Arc::new(CompactionQueue::default());
        let serving = queue.clone();
        std::thread::Builder::new()
            .name("ostrakon-compactor".into())
            .spawn(move || serve(&serving))?;
        Ok(Compactor { queue })
    }

    /// Compacts `store` from now on (and now, if a compaction is due).
    pub fn attach(&self, store: &Arc<MvccStore>) {
        store.attach_compactor(Arc::downgrade(&self.queue));
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.queue.stop();
    }
}

fn serve(queue: &CompactionQueue) {
    while let Some(store) = queue.pop() {
        // A range destroyed meanwhile has nothing left to compact.
        let Some(store) = store.upgrade() else {
            continue;
        };
        // Off the queue before the pass: a change during it queues the store again.
        store.compaction_dequeued();
        store.compact_physically();
        if store.compaction_due() {
            // Abandoned for a snapshot's install, or more arrived: another turn, after
            // the other stores'.
            store.queue_compaction();
        }
    }
}
