//! Every single-bit flip in a synced log is detected: never read as a valid record.
//!
//! The log is small (two segments) so every bit of every record frame, every padding frame
//! header and both segment headers can be flipped; the zero bodies of padding frames are
//! sampled. After each flip the library's scanner, which recovery uses, must stop exactly
//! at the damaged frame and report it as corruption, or, in the last commits of the last
//! segment where a crash could leave the same bytes, as a torn tail.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{entry, read_all};
use engram::wal::{
    decode_record, Decoded, Lsn, RecoveryMode, SegmentName, Wal, WalConfig, WalError,
    FIRST_RECORD_OFFSET, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

struct Frame {
    segment: String,
    offset: u64,
    len: u64,
    /// The LSN of the record, or the next one for a padding frame.
    lsn: Lsn,
    padding: bool,
}

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 32 << 10,
        commit_bytes_max: 1024,
        record_payload_bytes_max: 512,
        ..WalConfig::default()
    }
}

/// Two segments of seven one-page commits each.
fn build_log(dir: &Path) -> Vec<Vec<u8>> {
    let wal = Wal::open(dir, config()).unwrap();
    let mut seq = 0;
    while wal.stats().segments < 2 || wal.durable_lsn() < Lsn(28) {
        wal.append_blocking(vec![
            entry(0, seq, 60 + seq as usize * 7),
            entry(0, seq + 1, 90),
        ])
        .unwrap();
        seq += 2;
    }
    drop(wal);
    read_all(dir).0.into_iter().map(|(_, p)| p).collect()
}

fn frames(dir: &Path) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| SegmentName::parse(n).is_some())
        .collect();
    names.sort();
    let mut lsn = Lsn(1);
    for name in names {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let salt = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
        let mut offset = FIRST_RECORD_OFFSET as usize;
        loop {
            let (len, padding) = match decode_record(&bytes[offset..], salt, lsn) {
                Decoded::Record(r) => (r.frame_len, false),
                Decoded::Padding { frame_len } => (frame_len, true),
                _ => break,
            };
            out.push(Frame {
                segment: name.clone(),
                offset: offset as u64,
                len: len as u64,
                lsn,
                padding,
            });
            if !padding {
                lsn = lsn.next();
            }
            offset += len;
        }
    }
    out
}

fn flip(path: &Path, byte: u64, bit: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, byte).unwrap();
    b[0] ^= 1 << bit;
    file.write_all_at(&b, byte).unwrap();
}

#[test]
fn every_single_bit_flip_is_detected_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let originals = build_log(dir.path());
    let frames = frames(dir.path());
    let last_segment = frames.last().unwrap().segment.clone();
    let window = config().torn_window_bytes();
    let (mut corrupt, mut torn, mut flips) = (0, 0, 0);
    let segments: Vec<String> = {
        let mut s: Vec<String> = frames.iter().map(|f| f.segment.clone()).collect();
        s.dedup();
        s
    };
    assert_eq!(segments.len(), 2);
    // Segment headers: damage there is always corruption at offset 0.
    for segment in &segments {
        let path = dir.path().join(segment);
        for bit in 0..SEGMENT_HEADER_BYTES as u64 * 8 {
            flip(&path, bit / 8, (bit % 8) as u8);
            let (records, scan) = read_all(dir.path());
            flip(&path, bit / 8, (bit % 8) as u8);
            let at = scan
                .corruption
                .unwrap_or_else(|| panic!("header bit {bit} of {segment} not detected"));
            assert_eq!((at.segment.as_str(), at.offset), (segment.as_str(), 0));
            assert!(records.len() <= originals.len());
            flips += 1;
        }
    }
    for frame in &frames {
        let path = dir.path().join(&frame.segment);
        let last_frame_start = frames
            .iter()
            .filter(|f| f.segment == frame.segment)
            .map(|f| f.offset)
            .max()
            .unwrap();
        let detectable_mid_log =
            frame.segment != last_segment || frame.offset + window <= last_frame_start;
        let step = |byte: u64| {
            if frame.padding && byte >= RECORD_HEADER_BYTES as u64 {
                97
            } else {
                1
            }
        };
        let mut bit = 0u64;
        while bit < frame.len * 8 {
            flip(&path, frame.offset + bit / 8, (bit % 8) as u8);
            let (records, scan) = read_all(dir.path());
            flip(&path, frame.offset + bit / 8, (bit % 8) as u8);
            let context = format!(
                "bit {bit} of the frame at {}:{} (LSN {})",
                frame.segment, frame.offset, frame.lsn
            );
            let kept = (frame.lsn.0 - 1) as usize;
            let got: Vec<Vec<u8>> = records.into_iter().map(|r| r.1).collect();
            assert_eq!(
                got,
                originals[..kept],
                "{context}: records before the damage must be exactly what was written"
            );
            let place = |segment: &str, offset: u64, lsn: Lsn| (segment.to_owned(), offset, lsn);
            let expected = place(&frame.segment, frame.offset, frame.lsn);
            if detectable_mid_log {
                let at = scan
                    .corruption
                    .unwrap_or_else(|| panic!("{context}: not reported as corruption"));
                assert_eq!(
                    place(&at.segment, at.offset, at.lsn),
                    expected,
                    "{context}: {}",
                    at.reason
                );
                corrupt += 1;
            } else {
                assert!(scan.corruption.is_none(), "{context}");
                let t = scan
                    .torn_tail
                    .unwrap_or_else(|| panic!("{context}: not detected"));
                assert_eq!(place(&t.segment, t.offset, t.lsn), expected, "{context}");
                torn += 1;
            }
            flips += 1;
            bit += step(bit / 8);
        }
    }
    assert!(
        corrupt > 10_000 && torn > 1_000,
        "corrupt {corrupt}, torn {torn}, flips {flips}"
    );
    eprintln!("{flips} flips: {corrupt} reported as corruption, {torn} as a torn tail");
}

#[test]
fn recovery_refuses_mid_log_damage_and_absolute_consistency_refuses_any() {
    let dir = tempfile::tempdir().unwrap();
    let originals = build_log(dir.path());
    let frames = frames(dir.path());
    let first = &frames[0];
    let last = frames.iter().rev().find(|f| !f.padding).unwrap();
    for (frame, mid_log) in [(first, true), (last, false)] {
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
        flip(
            &copy.path().join(&frame.segment),
            frame.offset + RECORD_HEADER_BYTES as u64 + 3,
            5,
        );
        let strict = WalConfig {
            recovery_mode: RecoveryMode::AbsoluteConsistency,
            ..config()
        };
        let err = Wal::open(copy.path(), strict)
            .err()
            .expect("absolute consistency refuses damage");
        assert!(
            matches!(err, WalError::Corruption(_) | WalError::TornTail { .. }),
            "{err}"
        );
        match Wal::open(copy.path(), config()) {
            Err(WalError::Corruption(at)) => {
                assert!(mid_log, "{at:?}");
                assert_eq!(
                    (at.segment.as_str(), at.offset, at.lsn),
                    (frame.segment.as_str(), frame.offset, frame.lsn)
                );
                let message = WalError::Corruption(at).to_string();
                assert!(
                    message.contains("engram-wal repair --truncate-after-corruption"),
                    "{message}"
                );
            }
            Ok(wal) => {
                assert!(!mid_log, "mid-log damage was accepted");
                assert_eq!(
                    wal.durable_lsn(),
                    last.lsn.prev(),
                    "the damaged last record is cut, nothing before it"
                );
                assert_eq!(
                    wal.recovery_report().torn_tail.as_ref().unwrap().offset,
                    last.offset
                );
            }
            Err(e) => panic!("unexpected {e}"),
        }
        let salvage = WalConfig {
            recovery_mode: RecoveryMode::SalvageBeforeCorruption,
            ..config()
        };
        let wal = Wal::open(copy.path(), salvage).unwrap();
        assert_eq!(
            wal.durable_lsn(),
            frame.lsn.prev(),
            "salvage keeps everything before the damage"
        );
        drop(wal);
        let (records, scan) = read_all(copy.path());
        assert!(scan.is_clean());
        assert_eq!(
            records.into_iter().map(|r| r.1).collect::<Vec<_>>(),
            originals[..(frame.lsn.0 - 1) as usize]
        );
    }
}
