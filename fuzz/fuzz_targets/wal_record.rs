//! The log's record decoder, and the payload views the readers apply to a record, on
//! arbitrary bytes: the first 16 bytes choose the salt and the expected LSN.
#![no_main]

use engram::observation::Observation;
use engram::space::SpaceDefinition;
use engram::wal::{decode_record, Decoded, Lsn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let salt = u64::from_le_bytes(data[..8].try_into().unwrap());
    let lsn = Lsn(u64::from_le_bytes(data[8..16].try_into().unwrap()));
    let bytes = &data[16..];
    if let Decoded::Record(record) = decode_record(bytes, salt, lsn) {
        assert!(record.frame_len <= bytes.len());
        let _ = Observation::view(record.payload);
        let _ = SpaceDefinition::view(record.payload);
    }
    // A payload as a damaged but checksum-valid record could carry it.
    if let Ok(view) = Observation::view(bytes) {
        let _ = view.embedding();
    }
    let _ = SpaceDefinition::view(bytes);
});
