//! The threads that write snapshot files, shared by every group of the node.
//!
//! A thread per snapshot let a burst of them (a split makes its new range's first
//! snapshot on every member; thousands of splits in a row make thousands) run thousands
//! of threads at once, each syncing the store and copying a range, and a node's memory
//! and CPU went with them. A few threads take the files in turn instead; a group's
//! snapshot counts as in progress from the moment it is queued.

/// Snapshot files written at once, whatever the number of groups.
const WRITERS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

/// The writer threads; they end once this is dropped and the queue is empty.
pub struct SnapshotWriters {
    jobs: flume::Sender<Job>,
}

impl SnapshotWriters {
    /// Starts the threads.
    pub fn start() -> std::io::Result<SnapshotWriters> {
        let (jobs, queue) = flume::unbounded::<Job>();
        for _ in 0..WRITERS {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("ostrakon-snapshot".into())
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                })?;
        }
        Ok(SnapshotWriters { jobs })
    }

    /// Queues `job` (one snapshot file) behind the others.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        self.jobs
            .send(Box::new(job))
            .expect("the writer threads run as long as this handle exists");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// However many are queued, at most `WRITERS` run at once, and every one runs.
    #[test]
    fn a_burst_runs_on_the_few_threads_in_turn() {
        let writers = SnapshotWriters::start().unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            let (running, most, done) = (running.clone(), most.clone(), done.clone());
            writers.submit(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) < 50 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(done.load(Ordering::SeqCst), 50);
        assert_eq!(most.load(Ordering::SeqCst), WRITERS);
    }
}
