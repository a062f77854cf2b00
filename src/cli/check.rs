//! `engram check`: are these ids stored? The end of every load or chaos run.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use engram::client::Session;

use super::ServerArgs;

/// Missing ids printed at most; the count is always whole.
const MISSING_SHOWN_MAX: usize = 20;

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long)]
    space: String,
    /// One id per line, taken whole; empty lines are skipped. `-` reads stdin.
    #[arg(long)]
    ids: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let ids = read_ids(&args.ids)?;
    let options = args.server.options("engram-check")?;
    let found = super::runtime()?.block_on(async {
        let mut session = Session::connect(&options, None).await?;
        let found = session.check_ids(&args.space, &ids).await?;
        session.goodbye().await?;
        anyhow::Ok(found)
    })?;
    let missing: Vec<&String> = ids
        .iter()
        .zip(&found)
        .filter(|(_, found)| !**found)
        .map(|(id, _)| id)
        .collect();
    let present = ids.len() - missing.len();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "space": args.space,
                "checked": ids.len(),
                "found": present,
                "missing": missing.len(),
                "missing_ids": missing.iter().take(MISSING_SHOWN_MAX).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "space {}: checked {}, found {present}, missing {}",
            args.space,
            ids.len(),
            missing.len()
        );
        for id in missing.iter().take(MISSING_SHOWN_MAX) {
            println!("missing {id}");
        }
        if missing.len() > MISSING_SHOWN_MAX {
            println!("... and {} more", missing.len() - MISSING_SHOWN_MAX);
        }
    }
    if !missing.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

fn read_ids(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let input: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    };
    let mut ids = Vec::new();
    for line in input.lines() {
        // Ids are taken whole: spaces are legal in an id, so nothing is trimmed.
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if !line.is_empty() {
            ids.push(line);
        }
    }
    Ok(ids)
}
