//! Requests per second of one range on this member: counted as the member serves them
//! (writes it proposes as the range's leader, reads it answers from its replica), in
//! one-second buckets over the last `WINDOW_SECONDS` whole seconds. The range's load,
//! as `ostrakon ranges` shows it (summed over the members) and a split by load will
//! read it. Recording costs an uncontended lock; nothing runs per range in the
//! background (a bucket is rolled over when it is next touched). The keys of the
//! requests are sampled too (a reservoir of `SAMPLED_KEYS`), so that a split by load can
//! cut the range where its requests halve.

use std::sync::Mutex;
use std::time::Instant;

/// The seconds a rate is averaged over.
pub const WINDOW_SECONDS: u64 = 10;

/// How many request keys a range keeps as its sample of where its load falls.
pub const SAMPLED_KEYS: usize = 64;

/// One range's requests on this member.
#[derive(Debug)]
pub struct RequestRate {
    started: Instant,
    buckets: Mutex<Buckets>,
    sample: Mutex<KeySample>,
}

/// A uniform sample of the keys of the requests recorded since it was last taken
/// (reservoir sampling: the n-th key replaces a kept one with probability
/// `SAMPLED_KEYS / n`).
#[derive(Debug, Default)]
struct KeySample {
    keys: Vec<Vec<u8>>,
    seen: u64,
    /// A xorshift generator's state: which keys are kept needs no better randomness.
    random: u64,
}

impl KeySample {
    fn offer(&mut self, key: &[u8]) {
        self.seen += 1;
        if self.keys.len() < SAMPLED_KEYS {
            self.keys.push(key.to_vec());
            return;
        }
        if self.random == 0 {
            self.random = 0x9E37_79B9_7F4A_7C15;
        }
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let slot = self.random % self.seen;
        if let Some(kept) = self.keys.get_mut(slot as usize) {
            *kept = key.to_vec();
        }
    }
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
            sample: Mutex::new(KeySample::default()),
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

    /// One request for `key` (the first key it reads or writes) served now. Returns
    /// whether it is the first since the sample was last taken (the range's load is
    /// then worth a look: `range_work`).
    pub fn record_key(&self, key: &[u8]) -> bool {
        self.record();
        let mut sample = self.sample.lock().expect("key sample lock");
        sample.offer(key);
        sample.seen == 1
    }

    /// The sampled keys of the requests since the last call, sorted, and starts a new
    /// sample.
    pub fn take_key_sample(&self) -> Vec<Vec<u8>> {
        let mut sample = self.sample.lock().expect("key sample lock");
        let mut keys = std::mem::take(&mut sample.keys);
        sample.seen = 0;
        keys.sort();
        keys
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
    fn the_key_sample_keeps_a_bounded_share_of_every_key_seen() {
        let rate = RequestRate::default();
        // 9,000 requests on keys a.., 1,000 on keys z..: the sample is bounded and keeps
        // them in about that proportion.
        for n in 0..10_000u32 {
            let key = if n % 10 == 9 {
                format!("z{n}")
            } else {
                format!("a{n}")
            };
            // Only the first since the sample was taken says so.
            assert_eq!(rate.record_key(key.as_bytes()), n == 0);
        }
        let sample = rate.take_key_sample();
        assert_eq!(sample.len(), SAMPLED_KEYS);
        assert!(sample.windows(2).all(|pair| pair[0] <= pair[1]), "sorted");
        let late = sample.iter().filter(|key| key[0] == b'z').count();
        assert!(
            (1..=20).contains(&late),
            "{late} of {SAMPLED_KEYS} from the 10% on z"
        );
        assert!(
            sample
                .iter()
                .any(|key| key.as_slice() > b"a5000".as_slice()),
            "later keys replace earlier ones"
        );
        // Taking it starts a new sample.
        assert!(rate.take_key_sample().is_empty());
        assert!(
            rate.record_key(b"m"),
            "the first since the sample was taken"
        );
        assert_eq!(rate.take_key_sample(), vec![b"m".to_vec()]);
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
