//! The on-disk format: the segment header, the record frame, and the record decoder.
//!
//! Everything is little-endian with fixed-width integers. docs/wal-format.md explains
//! the commit protocol around these bytes and every crash case.

use std::fmt;

use serde::Serialize;

use super::lsn::Lsn;

pub const SEGMENT_MAGIC: [u8; 8] = *b"ENGRAMWL";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const RECORD_HEADER_BYTES: usize = 24;
/// Every record frame starts on this boundary, so payloads are 8-byte aligned in the map.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// The largest payload the format accepts. A length field above it is read as damage, never
/// as an instruction to look that far, so a flipped high bit cannot send the reader astray.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = 4 << 20;
/// Every commit ends on this boundary (padded by a padding frame), and records start on the
/// first one after the header. So a write never touches a page that holds synced bytes: a
/// torn or garbled write after power loss can only damage the commit that was in flight.
pub const COMMIT_ALIGN_BYTES: u64 = 4096;
/// The kind of a padding frame: it fills a commit up to `COMMIT_ALIGN_BYTES`, carries the
/// LSN the next record will have, and consumes none.
const PADDING_KIND: u16 = 0xFFFF;

/// What a record's payload holds. An unknown kind with a valid checksum was written by a
/// newer version: it is reported, never skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u16)]
pub enum RecordKind {
    /// An rkyv-archived [`crate::observation::Observation`].
    Observation = 1,
    /// An rkyv-archived [`crate::space::SpaceDefinition`]: a space created explicitly.
    Space = 2,
}

impl RecordKind {
    pub fn from_u16(raw: u16) -> Option<RecordKind> {
        match raw {
            1 => Some(RecordKind::Observation),
            2 => Some(RecordKind::Space),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Observation => "observation",
            RecordKind::Space => "space",
        }
    }
}

/// The first 64 bytes of every segment file.
///
/// ```text
/// offset size field
///  0      8   magic "ENGRAMWL"
///  8      4   format_version (u32, = 1)
/// 12      4   header_bytes (u32, = 64)
/// 16      8   first_lsn (u64): LSN of the segment's first record; also its file name
/// 24      8   salt (u64): random per segment, mixed into every record checksum
/// 32      8   capacity_bytes (u64): the preallocated file size
/// 40      8   torn_window_bytes (u64): most bytes written to this segment between two syncs
/// 48      8   created_unix_ns (u64)
/// 56      4   reserved (zero)
/// 60      4   crc32 of bytes 0..60
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentHeader {
    pub first_lsn: Lsn,
    pub salt: u64,
    pub capacity_bytes: u64,
    pub torn_window_bytes: u64,
    pub created_unix_ns: u64,
}

/// Why a segment header is not valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "the file is {len} bytes, shorter than the {SEGMENT_HEADER_BYTES}-byte segment header"
    )]
    TooShort { len: u64 },
    #[error("bad magic {found:02x?} (expected \"ENGRAMWL\")")]
    BadMagic { found: [u8; 8] },
    #[error("unsupported format version {found} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("header names first LSN {in_header} but the file name says {in_name}")]
    NameMismatch { in_header: Lsn, in_name: Lsn },
    #[error("header field {field} is {value}, which is out of range")]
    FieldOutOfRange { field: &'static str, value: u64 },
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.salt.to_le_bytes());
        out[32..40].copy_from_slice(&self.capacity_bytes.to_le_bytes());
        out[40..48].copy_from_slice(&self.torn_window_bytes.to_le_bytes());
        out[48..56].copy_from_slice(&self.created_unix_ns.to_le_bytes());
        let crc = crc32fast::hash(&out[0..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(HeaderError::TooShort {
                len: bytes.len() as u64,
            });
        }
        let b = &bytes[..SEGMENT_HEADER_BYTES];
        let magic: [u8; 8] = b[0..8].try_into().expect("8 bytes");
        if magic != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let stored = le_u32(b, 60);
        let computed = crc32fast::hash(&b[0..60]);
        if stored != computed {
            return Err(HeaderError::Checksum { stored, computed });
        }
        let version = le_u32(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion { found: version });
        }
        let header_bytes = le_u32(b, 12);
        if header_bytes as usize != SEGMENT_HEADER_BYTES {
            return Err(HeaderError::FieldOutOfRange {
                field: "header_bytes",
                value: header_bytes.into(),
            });
        }
        let header = SegmentHeader {
            first_lsn: Lsn(le_u64(b, 16)),
            salt: le_u64(b, 24),
            capacity_bytes: le_u64(b, 32),
            torn_window_bytes: le_u64(b, 40),
            created_unix_ns: le_u64(b, 48),
        };
        if header.first_lsn == Lsn::ZERO {
            return Err(HeaderError::FieldOutOfRange {
                field: "first_lsn",
                value: 0,
            });
        }
        Ok(header)
    }
}

/// The fixed part of a record frame. A frame is this header, the payload, and zero padding
/// up to the next 8-byte boundary:
///
/// ```text
/// offset size field
///  0      4   crc32: over salt (8 bytes, LE), header bytes 4..24, payload and padding
///  4      4   payload_len (u32), at most RECORD_PAYLOAD_BYTES_MAX
///  8      8   lsn (u64), exactly one more than the previous record's
/// 16      2   kind (u16, RecordKind)
/// 18      2   flags (u16, zero in version 1)
/// 20      4   reserved (zero)
/// 24      n   payload
/// 24+n    p   zero padding, p = (8 - (24 + n) % 8) % 8
/// ```
///
/// A padding frame has kind 0xFFFF, zero payload bytes, and the LSN of the next record.
///
/// An all-zero header marks the end of the written part of a preallocated segment: a real
/// record never has LSN zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub crc: u32,
    pub payload_len: u32,
    pub lsn: Lsn,
    pub kind: u16,
    pub flags: u16,
    pub reserved: u32,
}

impl RecordHeader {
    fn parse(b: &[u8]) -> RecordHeader {
        RecordHeader {
            crc: le_u32(b, 0),
            payload_len: le_u32(b, 4),
            lsn: Lsn(le_u64(b, 8)),
            kind: le_u16(b, 16),
            flags: le_u16(b, 18),
            reserved: le_u32(b, 20),
        }
    }
}

/// Where a commit that ends at `end` must end after padding: the next `COMMIT_ALIGN_BYTES`
/// boundary (one further if the gap cannot hold a frame header), or the segment's end.
pub fn aligned_commit_end(end: u64, capacity: u64) -> u64 {
    let mut target = end.next_multiple_of(COMMIT_ALIGN_BYTES);
    if target > end && target - end < RECORD_HEADER_BYTES as u64 {
        target += COMMIT_ALIGN_BYTES;
    }
    target.min(capacity)
}

/// Most frame bytes one commit may write to a segment whose header says `torn_window_bytes`:
/// the window also covers the padding to the next boundary (less than two boundaries).
pub fn commit_frames_max(torn_window_bytes: u64) -> u64 {
    torn_window_bytes
        .saturating_sub(2 * COMMIT_ALIGN_BYTES)
        .max(1)
}

/// Appends a padding frame of exactly `len` bytes (at least a header, a multiple of 8).
pub fn encode_padding(out: &mut Vec<u8>, salt: u64, next_lsn: Lsn, len: usize) {
    assert!(
        len >= RECORD_HEADER_BYTES && len.is_multiple_of(RECORD_ALIGN_BYTES),
        "bad padding length {len}"
    );
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&((len - RECORD_HEADER_BYTES) as u32).to_le_bytes());
    out.extend_from_slice(&next_lsn.0.to_le_bytes());
    out.extend_from_slice(&PADDING_KIND.to_le_bytes());
    out.resize(start + len, 0);
    let crc = frame_checksum(salt, &out[start..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes a frame with this payload takes, padding included.
pub fn frame_len(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).next_multiple_of(RECORD_ALIGN_BYTES)
}

/// Appends one record frame to `out`.
pub fn encode_record(out: &mut Vec<u8>, salt: u64, lsn: Lsn, kind: RecordKind, payload: &[u8]) {
    assert!(
        payload.len() <= RECORD_PAYLOAD_BYTES_MAX as usize,
        "payload over the format limit"
    );
    debug_assert!(lsn != Lsn::ZERO, "LSN zero is reserved for 'no record'");
    debug_assert_eq!(out.len() % RECORD_ALIGN_BYTES, 0, "frames start aligned");
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&lsn.0.to_le_bytes());
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(payload);
    out.resize(start + frame_len(payload.len()), 0);
    let crc = frame_checksum(salt, &out[start..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    debug_assert!(matches!(
        decode_record(&out[start..], salt, lsn),
        Decoded::Record(r) if r.payload == payload && r.kind == kind
    ));
}

fn frame_checksum(salt: u64, frame: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(&frame[4..]);
    hasher.finalize()
}

/// A record read in place: the payload borrows the segment's bytes.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub lsn: Lsn,
    pub kind: RecordKind,
    pub payload: &'a [u8],
    /// Bytes the whole frame takes, so the next frame starts this far on.
    pub frame_len: usize,
}

/// Why bytes at a record position are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum InvalidRecord {
    Checksum { stored: u32, computed: u32 },
    LengthOutOfRange { payload_len: u32 },
    UnexpectedLsn { expected: Lsn, found: Lsn },
    UnknownKind { kind: u16 },
    NonZeroFlags { flags: u16, reserved: u32 },
}

impl fmt::Display for InvalidRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidRecord::Checksum { stored, computed } => {
                write!(
                    f,
                    "record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            InvalidRecord::LengthOutOfRange { payload_len } => write!(
                f,
                "payload length {payload_len} is over the format limit {RECORD_PAYLOAD_BYTES_MAX}"
            ),
            InvalidRecord::UnexpectedLsn { expected, found } => {
                write!(
                    f,
                    "record has LSN {found} where LSN {expected} was expected"
                )
            }
            InvalidRecord::UnknownKind { kind } => {
                write!(
                    f,
                    "record kind {kind} is unknown to this build (written by a newer version?)"
                )
            }
            InvalidRecord::NonZeroFlags { flags, reserved } => {
                write!(f, "record flags {flags:#x} / reserved {reserved:#x} must be zero in format version 1")
            }
        }
    }
}

/// What the bytes at one record position hold. The decoder never folds these together:
/// `End` and `Incomplete` are normal at the tail of the last segment after a crash,
/// `Invalid` may be damage, and only the caller knows where in the log it is.
#[derive(Clone, Debug)]
pub enum Decoded<'a> {
    Record(RecordRef<'a>),
    /// A padding frame: skip `frame_len` bytes; the next record has the same expected LSN.
    Padding {
        frame_len: usize,
    },
    /// An all-zero header, or too few bytes left for a header that are all zero:
    /// nothing was written here.
    End,
    /// The bytes run out before the frame does.
    Incomplete {
        frame_len: usize,
        available: usize,
    },
    Invalid(InvalidRecord),
}

/// Decodes the record frame at the start of `bytes`, which must be the frame's position in
/// the segment up to the segment's end. `expected` is the LSN the log needs next here.
pub fn decode_record(bytes: &[u8], salt: u64, expected: Lsn) -> Decoded<'_> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return if bytes.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Incomplete {
                frame_len: RECORD_HEADER_BYTES,
                available: bytes.len(),
            }
        };
    }
    let head = &bytes[..RECORD_HEADER_BYTES];
    if head.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let header = RecordHeader::parse(head);
    if header.payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Decoded::Invalid(InvalidRecord::LengthOutOfRange {
            payload_len: header.payload_len,
        });
    }
    let len = frame_len(header.payload_len as usize);
    if len > bytes.len() {
        return Decoded::Incomplete {
            frame_len: len,
            available: bytes.len(),
        };
    }
    let computed = frame_checksum(salt, &bytes[..len]);
    if computed != header.crc {
        return Decoded::Invalid(InvalidRecord::Checksum {
            stored: header.crc,
            computed,
        });
    }
    if header.lsn != expected {
        return Decoded::Invalid(InvalidRecord::UnexpectedLsn {
            expected,
            found: header.lsn,
        });
    }
    if header.flags != 0 || header.reserved != 0 {
        return Decoded::Invalid(InvalidRecord::NonZeroFlags {
            flags: header.flags,
            reserved: header.reserved,
        });
    }
    if header.kind == PADDING_KIND {
        return Decoded::Padding { frame_len: len };
    }
    let Some(kind) = RecordKind::from_u16(header.kind) else {
        return Decoded::Invalid(InvalidRecord::UnknownKind { kind: header.kind });
    };
    let payload_end = RECORD_HEADER_BYTES + header.payload_len as usize;
    debug_assert!(
        bytes[payload_end..len].iter().all(|&b| b == 0),
        "checksummed padding is zero"
    );
    Decoded::Record(RecordRef {
        lsn: header.lsn,
        kind,
        payload: &bytes[RECORD_HEADER_BYTES..payload_end],
        frame_len: len,
    })
}

/// True if a checksum-valid record with an LSN of at least `min_lsn` starts at the start of
/// `bytes`. Used to tell a torn tail (nothing valid far beyond the damage) from damage in
/// the middle of durable data (valid records follow it).
pub fn is_valid_record_at(bytes: &[u8], salt: u64, min_lsn: Lsn) -> bool {
    if bytes.len() < RECORD_HEADER_BYTES {
        return false;
    }
    let header = RecordHeader::parse(&bytes[..RECORD_HEADER_BYTES]);
    let known_kind = header.kind == PADDING_KIND || RecordKind::from_u16(header.kind).is_some();
    if header.lsn < min_lsn || header.payload_len > RECORD_PAYLOAD_BYTES_MAX || !known_kind {
        return false;
    }
    let len = frame_len(header.payload_len as usize);
    len <= bytes.len() && frame_checksum(salt, &bytes[..len]) == header.crc
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            first_lsn: Lsn(7),
            salt: 0xdead_beef_1234_5678,
            capacity_bytes: 1 << 20,
            torn_window_bytes: 1 << 16,
            created_unix_ns: 42,
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let bytes = header().encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header()));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentHeader::decode(&damaged).is_err(),
                "flip of bit {bit} not detected"
            );
        }
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]),
            Err(HeaderError::TooShort { len: 10 })
        );
    }

    #[test]
    fn record_frame_matches_the_documented_layout() {
        let mut out = Vec::new();
        encode_record(&mut out, 1, Lsn(5), RecordKind::Observation, b"abc");
        assert_eq!(
            out.len(),
            32,
            "24-byte header + 3 bytes + 5 bytes of padding"
        );
        assert_eq!(&out[4..8], &3u32.to_le_bytes());
        assert_eq!(&out[8..16], &5u64.to_le_bytes());
        assert_eq!(&out[16..18], &1u16.to_le_bytes());
        assert_eq!(&out[24..27], b"abc");
        assert!(out[27..].iter().all(|&b| b == 0));
    }

    #[test]
    fn decoder_tells_end_incomplete_and_invalid_apart() {
        let mut out = Vec::new();
        encode_record(&mut out, 9, Lsn(1), RecordKind::Observation, &[7u8; 100]);
        assert!(matches!(decode_record(&[0u8; 64], 9, Lsn(1)), Decoded::End));
        assert!(matches!(
            decode_record(&out[..50], 9, Lsn(1)),
            Decoded::Incomplete { .. }
        ));
        assert!(matches!(
            decode_record(&out, 10, Lsn(1)),
            Decoded::Invalid(InvalidRecord::Checksum { .. })
        ));
        assert!(matches!(
            decode_record(&out, 9, Lsn(2)),
            Decoded::Invalid(InvalidRecord::UnexpectedLsn {
                expected: Lsn(2),
                found: Lsn(1)
            })
        ));
        assert!(is_valid_record_at(&out, 9, Lsn(1)));
        assert!(!is_valid_record_at(&out, 9, Lsn(2)));
    }

    #[test]
    fn padding_fills_a_commit_to_the_next_page_and_consumes_no_lsn() {
        assert_eq!(aligned_commit_end(4096, 1 << 20), 4096);
        assert_eq!(aligned_commit_end(4100, 1 << 20), 8192);
        assert_eq!(
            aligned_commit_end(8192 - 16, 1 << 20),
            12288,
            "a 16-byte gap cannot hold a frame"
        );
        assert_eq!(
            aligned_commit_end(8192 - 16, 8192),
            8192,
            "never past the segment"
        );
        let mut out = Vec::new();
        encode_padding(&mut out, 3, Lsn(9), 4000);
        assert_eq!(out.len(), 4000);
        let decoded = decode_record(&out, 3, Lsn(9));
        assert!(
            matches!(decoded, Decoded::Padding { frame_len: 4000 }),
            "{decoded:?}"
        );
        assert!(matches!(
            decode_record(&out, 3, Lsn(10)),
            Decoded::Invalid(InvalidRecord::UnexpectedLsn { .. })
        ));
        assert!(is_valid_record_at(&out, 3, Lsn(9)));
    }
}
