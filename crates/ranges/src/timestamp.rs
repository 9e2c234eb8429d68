//! The cluster-wide revision as a hybrid timestamp: milliseconds of wall-clock time in
//! the high bits and a logical counter in the low 18, as TiKV's placement driver hands
//! them out. Physical time only keeps the numbers near the clock (readable, and a new
//! oracle leader starts near its predecessor); what makes them safe is that every
//! timestamp is one more than the last or above the persisted bound, never the clock
//! alone.
//!
//! The whole timestamp stays below 2^63, so it is a valid etcd revision (an int64): 45
//! bits of milliseconds, which last until the year 3084.

/// Bits of the logical counter: 262,144 timestamps per millisecond before the counter
/// carries into the millisecond bits (which is harmless: order and uniqueness hold).
pub const LOGICAL_BITS: u32 = 18;

/// One timestamp: `physical_ms << LOGICAL_BITS | logical`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The first timestamp of millisecond `physical_ms`.
    pub fn from_physical_ms(physical_ms: u64) -> Timestamp {
        assert!(
            physical_ms < 1 << (63 - LOGICAL_BITS),
            "{physical_ms} ms does not fit a timestamp"
        );
        Timestamp(physical_ms << LOGICAL_BITS)
    }

    /// The millisecond part.
    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical part.
    pub fn logical(self) -> u64 {
        self.0 & ((1 << LOGICAL_BITS) - 1)
    }

    /// The timestamp `count` after this one.
    pub fn plus(self, count: u64) -> Timestamp {
        Timestamp(
            self.0
                .checked_add(count)
                .filter(|&t| t < 1 << 63)
                .expect("timestamps exhausted"),
        )
    }
}

/// Timestamps `[first, first + count)`, handed out together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampRange {
    /// The first.
    pub first: Timestamp,
    /// How many (at least one).
    pub count: u64,
}

impl TimestampRange {
    /// The last timestamp of the range.
    pub fn last(&self) -> Timestamp {
        self.first.plus(self.count - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_order_by_time_first() {
        let t = Timestamp::from_physical_ms(1_700_000_000_000).plus(5);
        assert_eq!(t.physical_ms(), 1_700_000_000_000);
        assert_eq!(t.logical(), 5);
        assert!(t < Timestamp::from_physical_ms(1_700_000_000_001));
        // The logical counter carries into the milliseconds.
        let carried = Timestamp::from_physical_ms(7).plus(1 << LOGICAL_BITS);
        assert_eq!((carried.physical_ms(), carried.logical()), (8, 0));
    }

    #[test]
    fn every_timestamp_is_a_valid_etcd_revision() {
        let year_3000_ms = 32_503_680_000_000;
        let t = Timestamp::from_physical_ms(year_3000_ms).plus((1 << LOGICAL_BITS) - 1);
        assert!(i64::try_from(t.0).is_ok());
    }

    #[test]
    fn a_range_knows_its_last() {
        let range = TimestampRange {
            first: Timestamp(10),
            count: 3,
        };
        assert_eq!(range.last(), Timestamp(12));
    }
}
