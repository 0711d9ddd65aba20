//! A set of sequence numbers kept as ranges: a run of consecutive numbers (a give-up
//! storm in an outage) costs one entry, not one per record.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqRanges {
    /// start → end (exclusive), disjoint and not touching.
    ranges: BTreeMap<u64, u64>,
}

impl SeqRanges {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| seq < end)
    }

    /// Adds `seq`; false when it was there.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        let mut start = seq;
        let mut end = seq + 1;
        if let Some((&before, &before_end)) = self.ranges.range(..seq).next_back() {
            if before_end == seq {
                start = before;
            }
        }
        if let Some(after_end) = self.ranges.remove(&end) {
            end = after_end;
        }
        self.ranges.insert(start, end);
        true
    }

    /// Drops every number below `seq`.
    pub fn remove_below(&mut self, seq: u64) {
        let kept = self.ranges.split_off(&seq);
        let straddling = self
            .ranges
            .iter()
            .next_back()
            .filter(|(_, &end)| end > seq)
            .map(|(_, &end)| end);
        self.ranges = kept;
        if let Some(end) = straddling {
            self.ranges.insert(seq, end);
        }
    }

    /// The ranges as (start, end exclusive), in order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&start, &end)| (start, end))
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges().flat_map(|(start, end)| start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::SeqRanges;

    #[test]
    fn consecutive_numbers_merge_into_one_range_and_the_low_end_is_cut() {
        let mut set = SeqRanges::default();
        for seq in [5, 7, 6, 10, 4] {
            assert!(set.insert(seq));
        }
        assert!(!set.insert(6));
        assert_eq!(set.ranges().collect::<Vec<_>>(), [(4, 8), (10, 11)]);
        assert!(set.contains(7) && !set.contains(8) && set.contains(10));
        set.remove_below(6);
        assert_eq!(set.iter().collect::<Vec<_>>(), [6, 7, 10]);
        set.remove_below(11);
        assert!(set.is_empty());
    }
}
