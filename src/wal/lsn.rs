//! Log sequence numbers and the one place segment file names are built and parsed.

use std::fmt;

use serde::Serialize;

/// A log sequence number: the position of one record in the log.
///
/// LSNs count records, not bytes: the first record ever written is `Lsn(1)` and each
/// record's LSN is one more than its predecessor's, across segments and restarts.
/// `Lsn::ZERO` means "no record" (an empty log has durable LSN zero), so "the number of
/// records between two LSNs" is a subtraction, which index lag and checkpoints rely on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
    pub const FIRST: Lsn = Lsn(1);

    pub fn next(self) -> Lsn {
        Lsn(self.0.checked_add(1).expect("LSN space exhausted"))
    }

    /// The LSN `count` records after this one.
    pub fn advance(self, count: u64) -> Lsn {
        Lsn(self.0.checked_add(count).expect("LSN space exhausted"))
    }

    pub fn prev(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An inclusive range of LSNs, as handed back to an appender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LsnRange {
    pub first: Lsn,
    pub last: Lsn,
}

impl LsnRange {
    pub fn len(&self) -> u64 {
        self.last.0 + 1 - self.first.0
    }

    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }

    pub fn iter(&self) -> impl Iterator<Item = Lsn> {
        (self.first.0..=self.last.0).map(Lsn)
    }
}

const SEGMENT_SUFFIX: &str = ".wal";
const TEMP_SUFFIX: &str = ".wal.tmp";
/// Twenty digits hold every u64, so names sort lexically in LSN order.
const NAME_DIGITS: usize = 20;

/// Builds and parses segment file names: `{first_lsn:020}.wal`, and
/// `prepared-{nonce:020}.wal.tmp` for a file being made ready to become a segment.
pub struct SegmentName;

impl SegmentName {
    pub fn file_name(first_lsn: Lsn) -> String {
        format!(
            "{:0width$}{SEGMENT_SUFFIX}",
            first_lsn.0,
            width = NAME_DIGITS
        )
    }

    pub fn temp_file_name(nonce: u64) -> String {
        format!("prepared-{nonce:0width$}{TEMP_SUFFIX}", width = NAME_DIGITS)
    }

    /// The first LSN named by a segment file name, or `None` if it is not one.
    pub fn parse(name: &str) -> Option<Lsn> {
        let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
        if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Lsn)
    }

    /// A leftover of an interrupted segment creation, removed on open.
    pub fn is_temp(name: &str) -> bool {
        name.ends_with(TEMP_SUFFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_lsn_order() {
        let names: Vec<String> = [1u64, 9, 10, u64::MAX]
            .iter()
            .map(|&n| SegmentName::file_name(Lsn(n)))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, n) in names.iter().zip([1u64, 9, 10, u64::MAX]) {
            assert_eq!(SegmentName::parse(name), Some(Lsn(n)));
        }
        assert_eq!(SegmentName::parse("0001.wal"), None);
        assert_eq!(SegmentName::parse(&SegmentName::temp_file_name(3)), None);
        assert!(SegmentName::is_temp(&SegmentName::temp_file_name(3)));
    }
}
