//! `engram-wal stats`

use std::collections::BTreeMap;
use std::path::Path;

use engram::observation::Observation;
use engram::space::SpaceDefinition;
use engram::wal::{scan_log, Lsn, RecordKind};
use serde::Serialize;

use crate::{describe_damage, open_log, progress, verdict_code};

#[derive(Default, Serialize)]
struct SpaceStats {
    records: u64,
    bytes: u64,
    dims: BTreeMap<usize, u64>,
}

#[derive(Serialize)]
struct Stats {
    segments: usize,
    segment_bytes_on_disk: u64,
    records: u64,
    record_bytes: u64,
    first_lsn: Option<Lsn>,
    last_lsn: Lsn,
    spaces: BTreeMap<String, SpaceStats>,
    /// Records by payload size: the key is the upper bound of a power-of-two bucket.
    size_histogram: BTreeMap<u64, u64>,
    clean: bool,
}

pub fn run(dir: &Path, json: bool) -> anyhow::Result<u8> {
    let files = open_log(dir)?;
    let bar = progress::segments_bar(files.segments.len(), "reading");
    let mut spaces: BTreeMap<String, SpaceStats> = BTreeMap::new();
    let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
    let mut record_bytes = 0u64;
    let scan = scan_log(
        &files,
        |r| {
            let len = r.record.payload.len() as u64;
            record_bytes += len;
            *histogram.entry(len.max(1).next_power_of_two()).or_default() += 1;
            let (space, dim) = match r.record.kind {
                RecordKind::Observation => match Observation::view(r.record.payload) {
                    Ok(obs) => (obs.space.as_str().to_owned(), obs.dimension()),
                    Err(_) => ("<invalid payload>".to_owned(), 0),
                },
                RecordKind::Space => match SpaceDefinition::view(r.record.payload) {
                    Ok(def) => (def.name.as_str().to_owned(), def.dim.to_native() as usize),
                    Err(_) => ("<invalid payload>".to_owned(), 0),
                },
            };
            let s = spaces.entry(space).or_default();
            s.records += 1;
            s.bytes += len;
            *s.dims.entry(dim).or_default() += 1;
        },
        |_| bar.inc(1),
    );
    bar.finish_and_clear();
    let stats = Stats {
        segments: scan.segments.len(),
        segment_bytes_on_disk: scan.segments.iter().map(|s| s.file_bytes).sum(),
        records: scan.records,
        record_bytes,
        first_lsn: scan.first_lsn,
        last_lsn: scan.last_lsn,
        spaces,
        size_histogram: histogram,
        clean: scan.is_clean(),
    };
    if json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        print_text(&stats);
        for line in describe_damage(&scan) {
            println!("{line}");
        }
    }
    Ok(verdict_code(&scan))
}

fn print_text(s: &Stats) {
    println!(
        "segments: {} ({} bytes on disk)",
        s.segments, s.segment_bytes_on_disk
    );
    println!(
        "records: {} ({} payload bytes), LSN {}..{}",
        s.records,
        s.record_bytes,
        s.first_lsn.unwrap_or(Lsn::ZERO),
        s.last_lsn
    );
    println!("spaces:");
    for (name, space) in &s.spaces {
        let dims: Vec<String> = space.dims.keys().map(|d| d.to_string()).collect();
        println!(
            "  {name}: {} records, {} bytes, dim {}",
            space.records,
            space.bytes,
            dims.join("/")
        );
    }
    println!("record sizes:");
    for (upper, count) in &s.size_histogram {
        println!("  <= {upper:>8} bytes: {count}");
    }
}
