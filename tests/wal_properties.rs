//! Property tests of the log: random records round-trip, and cutting the log at any byte
//! offset never yields a damaged record as valid and never loses a record before the cut.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::{entry, read_all};
use engram::wal::{
    decode_record, encode_record, Decoded, Entry, Lsn, RecordKind, SegmentName, Wal, WalConfig,
    FIRST_RECORD_OFFSET, SEGMENT_HEADER_BYTES,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_round_trip(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..40), salt in any::<u64>(), first in 1u64..u64::MAX / 2) {
        let mut buf = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut buf, salt, Lsn(first + i as u64), RecordKind::Observation, p);
        }
        buf.extend_from_slice(&[0u8; 64]);
        let mut offset = 0;
        for (i, p) in payloads.iter().enumerate() {
            match decode_record(&buf[offset..], salt, Lsn(first + i as u64)) {
                Decoded::Record(r) => {
                    prop_assert_eq!(r.payload, p.as_slice());
                    prop_assert_eq!(r.frame_len % 8, 0);
                    offset += r.frame_len;
                }
                other => prop_assert!(false, "record {} decoded as {:?}", i, other),
            }
        }
        prop_assert!(matches!(decode_record(&buf[offset..], salt, Lsn(first + payloads.len() as u64)), Decoded::End));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn appends_round_trip_through_the_log(batches in prop::collection::vec(prop::collection::vec(0usize..2400, 1..6), 1..60), segment_kib in prop::sample::select(vec![16u64, 64])) {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig { segment_bytes: segment_kib << 10, commit_bytes_max: 4 << 10, record_payload_bytes_max: 3000, ..WalConfig::default() };
        let wal = Wal::open(dir.path(), config.clone()).unwrap();
        let mut written = Vec::new();
        for (b, sizes) in batches.iter().enumerate() {
            let entries: Vec<Entry> = sizes.iter().enumerate().map(|(i, &len)| entry(b as u32, i as u32, len)).collect();
            written.extend(entries.iter().map(|e| e.payload.clone()));
            let range = wal.append_blocking(entries).unwrap();
            prop_assert_eq!(range.last, Lsn(written.len() as u64));
        }
        let mut cursor = wal.reader().cursor(Lsn(1));
        for p in &written {
            let record = cursor.read_next().unwrap().expect("durable");
            prop_assert_eq!(record.payload(), p.as_slice());
        }
        drop(wal);
        let (records, scan) = read_all(dir.path());
        prop_assert!(scan.is_clean());
        prop_assert_eq!(records.into_iter().map(|r| r.1).collect::<Vec<_>>(), written);
    }
}

fn cut_config() -> WalConfig {
    WalConfig {
        segment_bytes: 16 << 10,
        commit_bytes_max: 2 << 10,
        record_payload_bytes_max: 1024,
        ..WalConfig::default()
    }
}

struct FixtureRecord {
    segment: usize,
    /// Where its payload ends; the frame's alignment bytes after it are zeros.
    content_end: u64,
    frame_end: u64,
    payload: Vec<u8>,
}

/// A log of three segments, built once, and where each record lies in it.
struct Fixture {
    dir: tempfile::TempDir,
    segments: Vec<String>,
    records: Vec<FixtureRecord>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), cut_config()).unwrap();
        let mut seq = 0;
        while wal.stats().segments < 3 {
            let batch = (0..1 + seq % 4)
                .map(|i| entry(seq, i, 40 + (seq as usize * 37) % 900))
                .collect();
            wal.append_blocking(batch).unwrap();
            seq += 1;
        }
        drop(wal);
        let mut segments: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| SegmentName::parse(n).is_some())
            .collect();
        segments.sort();
        let mut records = Vec::new();
        let mut lsn = Lsn(1);
        for (i, name) in segments.iter().enumerate() {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            let salt = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
            let mut offset = FIRST_RECORD_OFFSET as usize;
            loop {
                match decode_record(&bytes[offset..], salt, lsn) {
                    Decoded::Record(r) => {
                        records.push(FixtureRecord {
                            segment: i,
                            content_end: (offset
                                + engram::wal::RECORD_HEADER_BYTES
                                + r.payload.len()) as u64,
                            frame_end: (offset + r.frame_len) as u64,
                            payload: r.payload.to_vec(),
                        });
                        offset += r.frame_len;
                        lsn = lsn.next();
                    }
                    Decoded::Padding { frame_len } => offset += frame_len,
                    _ => break,
                }
            }
        }
        Fixture {
            dir,
            segments,
            records,
        }
    })
}

#[derive(Clone, Copy, Debug)]
enum Lost {
    /// The bytes after the cut read as zeros (preallocated, never written).
    Zeros,
    /// The file ends at the cut.
    Truncated,
    /// The bytes after the cut hold garbage, as far as one commit can reach.
    Garbage(u64),
}

fn copy_cut(fixture: &Fixture, to: &Path, segment: usize, offset: u64, lost: Lost) {
    let config = cut_config();
    for (i, name) in fixture.segments.iter().enumerate().take(segment + 1) {
        let mut bytes = std::fs::read(fixture.dir.path().join(name)).unwrap();
        if i == segment {
            match lost {
                Lost::Zeros => bytes[offset as usize..].fill(0),
                Lost::Truncated => bytes.truncate(offset as usize),
                Lost::Garbage(seed) => {
                    let end = (offset + config.torn_window_bytes() - 8192).min(bytes.len() as u64)
                        as usize;
                    let mut x = seed | 1;
                    for b in &mut bytes[offset as usize..end] {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        *b = x as u8;
                    }
                    bytes[end..].fill(0);
                }
            }
        }
        std::fs::write(to.join(name), bytes).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cutting_the_log_at_any_offset_keeps_exactly_the_records_before_the_cut(
        segment in 0usize..3,
        offset_frac in 0.0f64..1.0,
        lost in prop_oneof![Just(Lost::Zeros), Just(Lost::Truncated), any::<u64>().prop_map(Lost::Garbage)],
    ) {
        let fixture = fixture();
        let capacity = cut_config().segment_bytes;
        // Cuts inside a segment header cannot happen: a segment exists only once its header
        // is synced (temp file, sync, rename, directory sync).
        let offset = SEGMENT_HEADER_BYTES as u64 + ((capacity - SEGMENT_HEADER_BYTES as u64) as f64 * offset_frac) as u64;
        let dir = tempfile::tempdir().unwrap();
        copy_cut(fixture, dir.path(), segment, offset, lost);
        // A record survives exactly when the cut changed none of its bytes: zeroing leaves
        // its (already zero) alignment bytes as they were; truncation and garbage do not.
        let survives = |r: &FixtureRecord| match lost {
            Lost::Zeros => r.content_end <= offset,
            Lost::Truncated | Lost::Garbage(_) => r.frame_end <= offset,
        };
        let expected: Vec<Vec<u8>> = fixture
            .records
            .iter()
            .take_while(|r| r.segment < segment || (r.segment == segment && survives(r)))
            .map(|r| r.payload.clone())
            .collect();
        let wal = Wal::open(dir.path(), cut_config()).unwrap();
        prop_assert_eq!(wal.durable_lsn(), Lsn(expected.len() as u64));
        // Appending after the recovered cut works and continues the LSNs.
        let next = wal.append_blocking(vec![entry(9999, 0, 100)]).unwrap();
        prop_assert_eq!(next.first, Lsn(expected.len() as u64 + 1));
        drop(wal);
        let (records, scan) = read_all(dir.path());
        prop_assert!(scan.is_clean(), "{:?}", scan);
        let mut got: Vec<Vec<u8>> = records.into_iter().map(|r| r.1).collect();
        prop_assert_eq!(got.pop(), Some(common::payload(9999, 0, 100)));
        prop_assert_eq!(got, expected);
    }
}

/// A segment file with a valid header and arbitrary bytes after it, as damage or a hostile
/// file could leave it.
fn hostile_segment(first_lsn: u64, body: &[u8], salt: u64) -> Vec<u8> {
    let header = engram::wal::SegmentHeader {
        first_lsn: Lsn(first_lsn),
        salt,
        capacity_bytes: 16 << 10,
        torn_window_bytes: 9 << 10,
        created_unix_ns: 0,
    };
    let mut bytes = vec![0u8; 16 << 10];
    bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
    let at = FIRST_RECORD_OFFSET as usize;
    let n = body.len().min(bytes.len() - at);
    bytes[at..at + n].copy_from_slice(&body[..n]);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever is in the files, the scanner and recovery never panic: they return records,
    /// a torn tail, or a typed corruption, and every record they return is checksum-valid.
    #[test]
    fn arbitrary_segment_bytes_never_panic_the_scanner_or_recovery(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6000), 1..3),
        salt in any::<u64>(),
        valid_prefix in 0usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut first = 1u64;
        for (i, body) in bodies.iter().enumerate() {
            // Some files start with real records, so damage lands after valid data too.
            let mut content = Vec::new();
            for n in 0..valid_prefix as u64 {
                encode_record(&mut content, salt, Lsn(first + n), RecordKind::Observation, &[i as u8; 40]);
            }
            content.extend_from_slice(body);
            std::fs::write(dir.path().join(SegmentName::file_name(Lsn(first))), hostile_segment(first, &content, salt)).unwrap();
            first += valid_prefix as u64;
        }
        let (records, _scan) = common::read_all(dir.path());
        for (lsn, payload) in &records {
            prop_assert!(payload.len() == 40, "LSN {} returned bytes nobody wrote", lsn);
        }
        match Wal::open(dir.path(), cut_config()) {
            Ok(wal) => prop_assert_eq!(wal.durable_lsn(), records.last().map_or(Lsn::ZERO, |r| r.0)),
            Err(e) => prop_assert!(matches!(e, engram::wal::WalError::Corruption(_)), "{}", e),
        }
    }
}
