//! A fixed-capacity bitset: the set of linearized operations in the search's memo cache.

const WORD_BITS: usize = u64::BITS as usize;

/// Set of indexes in `[0, capacity)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Bitset {
    // Boxed slice rather than Vec: the cache holds millions of these and never grows them.
    words: Box<[u64]>,
    capacity: usize,
}

impl Bitset {
    /// An empty set able to hold indexes `[0, capacity)`.
    pub(crate) fn new(capacity: usize) -> Self {
        let words_count = capacity.div_ceil(WORD_BITS);
        Bitset {
            words: vec![0; words_count].into_boxed_slice(),
            capacity,
        }
    }

    pub(crate) fn set(&mut self, index: usize) {
        let (word, mask) = self.locate(index);
        self.words[word] |= mask;
    }

    pub(crate) fn clear(&mut self, index: usize) {
        let (word, mask) = self.locate(index);
        self.words[word] &= !mask;
    }

    pub(crate) fn contains(&self, index: usize) -> bool {
        let (word, mask) = self.locate(index);
        self.words[word] & mask != 0
    }

    pub(crate) fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn locate(&self, index: usize) -> (usize, u64) {
        assert!(
            index < self.capacity,
            "index {index} past capacity {}",
            self.capacity
        );
        (index / WORD_BITS, 1u64 << (index % WORD_BITS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_contains_across_words() {
        let mut set = Bitset::new(130);
        assert_eq!(set.count(), 0);
        for index in [0, 63, 64, 129] {
            assert!(!set.contains(index));
            set.set(index);
            assert!(set.contains(index));
        }
        assert_eq!(set.count(), 4);
        set.set(64);
        assert_eq!(set.count(), 4, "setting twice is idempotent");
        set.clear(63);
        assert!(!set.contains(63));
        assert!(set.contains(64));
        assert_eq!(set.count(), 3);
    }

    #[test]
    fn equal_sets_are_equal_values() {
        let mut a = Bitset::new(100);
        let mut b = Bitset::new(100);
        a.set(3);
        a.set(70);
        b.set(70);
        assert_ne!(a, b);
        b.set(3);
        assert_eq!(a, b);
    }

    #[test]
    #[should_panic]
    fn index_past_capacity_panics() {
        Bitset::new(65).set(65);
    }
}
