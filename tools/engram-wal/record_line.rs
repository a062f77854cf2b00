//! What `dump` and `follow` print for one record.

use engram::observation::Observation;
use engram::space::SpaceDefinition;
use engram::wal::{Lsn, RecordKind, RecordRef};
use serde::Serialize;

#[derive(Serialize)]
pub struct RecordLine<'a> {
    pub lsn: Lsn,
    pub segment: &'a str,
    pub offset: u64,
    pub kind: &'static str,
    pub space: Option<&'a str>,
    pub id: Option<&'a str>,
    pub dim: Option<usize>,
    pub bytes: usize,
    pub crc_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_error: Option<String>,
}

impl<'a> RecordLine<'a> {
    pub fn new(segment: &'a str, offset: u64, record: &RecordRef<'a>) -> RecordLine<'a> {
        let mut line = RecordLine {
            lsn: record.lsn,
            segment,
            offset,
            kind: record.kind.name(),
            space: None,
            id: None,
            dim: None,
            bytes: record.payload.len(),
            crc_ok: true,
            payload_error: None,
        };
        match record.kind {
            RecordKind::Observation => match Observation::view(record.payload) {
                Ok(obs) => {
                    line.space = Some(obs.space.as_str());
                    line.id = Some(obs.id.as_str());
                    line.dim = Some(obs.dimension());
                }
                Err(e) => line.payload_error = Some(e.to_string()),
            },
            RecordKind::Space => match SpaceDefinition::view(record.payload) {
                Ok(def) => {
                    line.space = Some(def.name.as_str());
                    line.dim = Some(def.dim.to_native() as usize);
                }
                Err(e) => line.payload_error = Some(e.to_string()),
            },
        }
        line
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "lsn={} pos={}:{} kind={} space={} id={} dim={} bytes={} crc={}",
            self.lsn,
            self.segment,
            self.offset,
            self.kind,
            self.space.unwrap_or("?"),
            self.id.unwrap_or("?"),
            self.dim.map_or("?".to_owned(), |d| d.to_string()),
            self.bytes,
            if self.crc_ok { "ok" } else { "BAD" }
        );
        if let Some(e) = &self.payload_error {
            s.push_str(&format!(" payload=INVALID({e})"));
        }
        s
    }

    pub fn print(&self, json: bool, out: &mut impl std::io::Write) -> std::io::Result<()> {
        if json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(self).expect("serializable")
            )
        } else {
            writeln!(out, "{}", self.text())
        }
    }
}

/// Checks that a record's payload is what its kind says.
pub fn check_payload(record: &RecordRef<'_>) -> Result<(), String> {
    match record.kind {
        RecordKind::Observation => Observation::view(record.payload)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        RecordKind::Space => SpaceDefinition::view(record.payload)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}
