//! Requests per second of one range on this member: counted as the member serves them
//! (writes it proposes as the range's leader, reads it answers from its replica), in
//! one-second buckets over the last `WINDOW_SECONDS` whole seconds. The range's load,
//! as `ostrakon ranges` shows it (summed over the members) and a split by load will
//! read it. Recording costs an uncontended lock; nothing runs per range in the
//! background (a bucket is rolled over when it is next touched).

use std::sync::Mutex;
use std::time::Instant;

/// The seconds a rate is averaged over.
pub const WINDOW_SECONDS: u64 = 10;

/// One range's requests on this member.
#[derive(Debug)]
pub struct RequestRate {
    started: Instant,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    /// The second (since `started`) the newest bucket counts.
    newest_second: u64,
    /// Requests per second, by second modulo the window, one more than it covers (the
    /// current second is still counting).
    counts: [u64; WINDOW_SECONDS as usize + 1],
}

impl Buckets {
    /// Rolls the buckets forward to `second`, clearing those it skips.
    fn advance(&mut self, second: u64) {
        if second <= self.newest_second {
            return;
        }
        let len = self.counts.len() as u64;
        let skipped = (second - self.newest_second).min(len);
        for step in 1..=skipped {
            let bucket = (self.newest_second + step) % len;
            self.counts[bucket as usize] = 0;
        }
        self.newest_second = second;
    }
}

impl Default for RequestRate {
    fn default() -> Self {
        RequestRate {
            started: Instant::now(),
            buckets: Mutex::new(Buckets::default()),
        }
    }
}

impl RequestRate {
    fn now_second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// One request served now.
    pub fn record(&self) {
        self.record_at(self.now_second());
    }

    /// Requests per second over the last whole seconds of the window.
    pub fn per_second(&self) -> f64 {
        self.per_second_at(self.now_second())
    }

    fn record_at(&self, second: u64) {
        let mut buckets = self.buckets.lock().expect("request rate lock");
        buckets.advance(second);
        // A reading behind the newest (two threads racing) counts in the newest second.
        let second = second.max(buckets.newest_second);
        let len = buckets.counts.len() as u64;
        buckets.counts[(second % len) as usize] += 1;
    }

    fn per_second_at(&self, second: u64) -> f64 {
        let mut buckets = self.buckets.lock().expect("request rate lock");
        buckets.advance(second);
        let len = buckets.counts.len() as u64;
        // The whole seconds before `second` (the current one is still counting); a
        // member up for less than the window divides by the seconds it has seen.
        let seconds = WINDOW_SECONDS.min(second);
        if seconds == 0 {
            return 0.0;
        }
        let total: u64 = (1..=seconds)
            .map(|back| buckets.counts[((second - back) % len) as usize])
            .sum();
        total as f64 / seconds as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_averages_the_whole_seconds_of_the_window() {
        let rate = RequestRate::default();
        for second in 20..25 {
            for _ in 0..30 {
                rate.record_at(second);
            }
        }
        // Seconds 20..=24, 30 each, over the 10 whole seconds before 25.
        assert_eq!(rate.per_second_at(25), 15.0);
        // The current second's requests count once it is over.
        rate.record_at(25);
        assert_eq!(rate.per_second_at(25), 15.0);
        assert_eq!(rate.per_second_at(26), 15.1);
        // Past the window, nothing is left.
        assert_eq!(rate.per_second_at(40), 0.0);
        // Going back in time (a stale clock reading) counts in the newest second.
        rate.record_at(41);
        rate.record_at(30);
        assert_eq!(rate.per_second_at(42), 0.2);
    }

    #[test]
    fn a_young_member_divides_by_the_seconds_it_has_seen() {
        let rate = RequestRate::default();
        for _ in 0..8 {
            rate.record_at(1);
        }
        assert_eq!(rate.per_second_at(2), 4.0);
        assert_eq!(rate.per_second_at(0), 0.0);
    }
}
