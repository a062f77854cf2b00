//! `engram observe`: streams a JSON-lines file (or stdin) into one space.

use std::path::PathBuf;

use anyhow::Context;

use super::ServerArgs;

#[derive(clap::Args)]
pub struct ObserveArgs {
    /// The memory space the observations go to.
    #[arg(long)]
    space: String,
    /// A JSON-lines file, or `-` for stdin.
    #[arg(long)]
    file: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// One line of an `engram observe` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservationLine {
    id: String,
    embedding: Vec<f32>,
    #[serde(default)]
    what: String,
    #[serde(default = "full_confidence")]
    confidence: f32,
    when_unix_ns: Option<i64>,
}

fn full_confidence() -> f32 {
    1.0
}

pub fn run(args: ObserveArgs) -> anyhow::Result<()> {
    use std::io::BufRead;
    let options = args.server.options("engram-observe")?;
    let input: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("opening {}", args.file.display()))?,
        ))
    };
    let (sent, acked, rejected) = super::runtime()?.block_on(async {
        let mut stream =
            engram::client::ObservationStream::connect(options, Default::default()).await?;
        let mut sent = 0u64;
        // A bad line stops the input, not the session: what was sent before it is still
        // acknowledged and the session closed cleanly, then the error is reported.
        let mut bad_input = None;
        for (n, line) in input.lines().enumerate() {
            let parsed = line
                .map_err(anyhow::Error::from)
                .and_then(|line| parse_line(&line))
                .with_context(|| format!("line {} of {}", n + 1, args.file.display()));
            let parsed = match parsed {
                Ok(Some(parsed)) => parsed,
                Ok(None) => continue,
                Err(e) => {
                    bad_input = Some(e);
                    break;
                }
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as i64;
            stream
                .send(engram::observation::Observation {
                    space: args.space.clone(),
                    id: parsed.id,
                    when_unix_ns: parsed.when_unix_ns.unwrap_or(now),
                    confidence: parsed.confidence,
                    what: parsed.what,
                    embedding: parsed.embedding,
                })
                .await?;
            sent += 1;
        }
        stream.flush().await?;
        let (acked, rejected) = (stream.take_acked(), stream.take_rejected());
        stream.close().await?;
        if let Some(e) = bad_input {
            return Err(e.context(format!(
                "stopped there; the {} observations before it were acknowledged",
                acked.len()
            )));
        }
        anyhow::Ok((sent, acked.len(), rejected))
    })?;
    for (obs, why) in &rejected {
        eprintln!(
            "refused {}: field {} expected {}, got {}",
            obs.id, why.field, why.expected, why.got
        );
    }
    if args.json {
        let refused: Vec<_> = rejected
            .iter()
            .map(|(o, r)| serde_json::json!({"id": o.id, "code": r.code, "field": r.field, "expected": r.expected, "got": r.got}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"sent": sent, "acked": acked, "rejected": refused})
        );
    } else {
        println!(
            "sent {sent}, acknowledged (durable) {acked}, refused {}",
            rejected.len()
        );
    }
    if !rejected.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// One line of input; `None` for a blank line.
fn parse_line(line: &str) -> anyhow::Result<Option<ObservationLine>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(line)?))
}
