//! `Recent`: the last entries appended to the Raft log, as they were before encoding.
//!
//! Each entry is read back right after its append: on the leader by each replication stream and by
//! the state machine, on a follower by the state machine. Decoding it from the file each time cost
//! more CPU than the append itself (a JSON entry of a few kilobytes), on the cores the commit waits
//! for. The log store keeps the last entries it appended here and answers a read from them when they
//! cover the whole range.
//!
//! What is kept is always a copy of what the file holds under the same indexes: the log store updates
//! it only after the file took the change, under the file's lock, and empties it when a change fails.
//! It is bounded in entries and in bytes (the entries' encoded length), whatever openraft appends.

use std::collections::VecDeque;

/// A contiguous run of the last appended entries, oldest first.
#[derive(Debug)]
pub struct Recent<T> {
    /// (index, entry, encoded length), indexes contiguous and increasing.
    run: VecDeque<(u64, T, usize)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<T: Clone> Recent<T> {
    /// Keeps at most `max_entries` entries of at most `max_bytes` encoded bytes in all.
    pub fn new(max_entries: usize, max_bytes: usize) -> Recent<T> {
        Recent {
            run: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// The file took `appended` (index, entry, encoded length): they replace what was kept under
    /// their indexes. A run that continues the kept one extends it; any other starts a new run (the
    /// file keeps the entries after an index written again, but a run holds no gap).
    pub fn appended(&mut self, appended: Vec<(u64, T, usize)>) {
        let Some(first) = appended.first().map(|(i, _, _)| *i) else {
            return;
        };
        let contiguous = appended
            .iter()
            .enumerate()
            .all(|(k, (i, _, _))| first.checked_add(k as u64) == Some(*i));
        if !contiguous {
            self.clear();
            return;
        }
        if self.last().and_then(|l| l.checked_add(1)) != Some(first) {
            self.clear();
        }
        for (index, entry, len) in appended {
            self.bytes += len;
            self.run.push_back((index, entry, len));
        }
        while self.run.len() > self.max_entries || self.bytes > self.max_bytes {
            match self.run.pop_front() {
                Some((_, _, len)) => self.bytes -= len,
                None => break,
            }
        }
    }

    /// The file dropped the entries from `index` on.
    pub fn truncated(&mut self, index: u64) {
        while self.last().is_some_and(|l| l >= index) {
            if let Some((_, _, len)) = self.run.pop_back() {
                self.bytes -= len;
            }
        }
    }

    /// The file dropped the entries up to `index`.
    pub fn purged(&mut self, index: u64) {
        while self.run.front().is_some_and(|(i, _, _)| *i <= index) {
            if let Some((_, _, len)) = self.run.pop_front() {
                self.bytes -= len;
            }
        }
    }

    /// Forgets everything (a change to the file failed: what it holds is not known here).
    pub fn clear(&mut self) {
        self.run.clear();
        self.bytes = 0;
    }

    /// Copies of the entries `first..=last`, if all of them are kept.
    pub fn get(&self, first: u64, last: u64) -> Option<Vec<T>> {
        let start = self.run.front()?.0;
        if first < start || last < first || self.last()? < last {
            return None;
        }
        let from = (first - start) as usize;
        let count = (last - first) as usize + 1;
        Some(
            self.run
                .range(from..from + count)
                .map(|(_, e, _)| e.clone())
                .collect(),
        )
    }

    fn last(&self) -> Option<u64> {
        self.run.back().map(|(i, _, _)| *i)
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    fn run(indexes: std::ops::RangeInclusive<u64>) -> Vec<(u64, String, usize)> {
        indexes.map(|i| (i, format!("e{i}"), 10)).collect()
    }

    fn names(r: &Recent<String>, first: u64, last: u64) -> Option<Vec<String>> {
        r.get(first, last)
    }

    #[test]
    fn a_read_is_answered_only_when_the_whole_range_is_kept() {
        let mut r = Recent::new(100, 10_000);
        r.appended(run(5..=9));
        assert_eq!(
            names(&r, 6, 8),
            Some(vec!["e6".into(), "e7".into(), "e8".into()])
        );
        assert_eq!(names(&r, 5, 9).map(|v| v.len()), Some(5));
        assert_eq!(names(&r, 4, 6), None, "4 is not kept");
        assert_eq!(names(&r, 8, 10), None, "10 is not kept");
        assert_eq!(names(&r, 8, 7), None);
        r.appended(run(10..=10));
        assert_eq!(names(&r, 9, 10).map(|v| v.len()), Some(2));
    }

    #[test]
    fn truncation_purge_and_a_rewritten_index_leave_only_what_the_file_holds() {
        let mut r = Recent::new(100, 10_000);
        r.appended(run(1..=10));
        r.truncated(8);
        assert_eq!(names(&r, 7, 8), None);
        assert!(names(&r, 1, 7).is_some());
        r.purged(3);
        assert_eq!(names(&r, 3, 4), None);
        assert!(names(&r, 4, 7).is_some());
        // An index written again (the file keeps the entries after it): a new run of just those.
        r.appended(vec![(5, "new5".into(), 10)]);
        assert_eq!(names(&r, 5, 5), Some(vec!["new5".into()]));
        assert_eq!(names(&r, 4, 5), None);
        assert_eq!(names(&r, 5, 6), None);
        // Entries that are not contiguous are not kept at all.
        r.appended(vec![(6, "a".into(), 10), (8, "b".into(), 10)]);
        assert_eq!(names(&r, 5, 5), None);
        assert_eq!(names(&r, 6, 6), None);
        r.appended(run(20..=21));
        r.clear();
        assert_eq!(names(&r, 20, 20), None);
    }

    #[test]
    fn it_keeps_no_more_than_its_bounds() {
        let mut r = Recent::new(4, 10_000);
        r.appended(run(1..=10));
        assert_eq!(names(&r, 6, 6), None);
        assert_eq!(names(&r, 7, 10).map(|v| v.len()), Some(4));
        let mut r = Recent::new(100, 25);
        r.appended(run(1..=3));
        assert_eq!(names(&r, 1, 1), None, "30 bytes do not fit in 25");
        assert!(names(&r, 2, 3).is_some());
        r.appended(vec![(4, "huge".into(), 1_000)]);
        assert_eq!(
            names(&r, 4, 4),
            None,
            "an entry over the byte bound is not kept"
        );
        assert_eq!(names(&r, 3, 3), None);
    }
}
