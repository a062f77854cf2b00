//! The recovery scan over a segment file with a valid header and arbitrary bytes after
//! it: records, a torn tail or a typed corruption, and only records that were written
//! with a valid checksum.
#![no_main]

use std::sync::OnceLock;

use engram::wal::{
    scan_log, LogFiles, Lsn, OsStorage, SegmentHeader, SegmentName, FIRST_RECORD_OFFSET,
    SEGMENT_HEADER_BYTES,
};
use libfuzzer_sys::fuzz_target;

const SEGMENT_BYTES: usize = 64 << 10;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("engram-fuzz-scan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let salt = u64::from_le_bytes(data[..8].try_into().unwrap());
    let header = SegmentHeader {
        first_lsn: Lsn(1),
        salt,
        capacity_bytes: SEGMENT_BYTES as u64,
        torn_window_bytes: 9 << 10,
        created_unix_ns: 0,
    };
    let mut file = vec![0u8; SEGMENT_BYTES];
    file[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
    let body = &data[8..];
    let at = FIRST_RECORD_OFFSET as usize;
    let n = body.len().min(SEGMENT_BYTES - at);
    file[at..at + n].copy_from_slice(&body[..n]);
    let path = dir().join(SegmentName::file_name(Lsn(1)));
    std::fs::write(&path, &file).unwrap();
    let files = LogFiles::open(&OsStorage, dir(), false).expect("one segment file");
    let mut next = Lsn(1);
    let _scan = scan_log(
        &files,
        |r| {
            assert_eq!(r.record.lsn, next, "records come in LSN order");
            next = next.next();
        },
        |_| {},
    );
});
