//! `engram recall`: the nearest observations of a space to a vector or a stored id.

use std::path::PathBuf;

use anyhow::Context;
use engram::client::Session;
use engram::index::{Consistency, RecallQuery};
use engram::wal::Lsn;

use super::ServerArgs;

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConsistencyArg {
    /// Every observation acknowledged before the recall is a candidate (default).
    ReadYourWrites,
    /// Exactly the observations up to --as-of (an LSN): repeatable.
    AsOf,
    /// The index alone, as far as it is built: fastest.
    Eventual,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["id", "vector", "file"])))]
pub struct RecallArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long)]
    space: String,
    /// Recall with this stored observation's own embedding.
    #[arg(long)]
    id: Option<String>,
    /// The query embedding as a JSON array of numbers.
    #[arg(long)]
    vector: Option<String>,
    /// A file holding the query embedding as a JSON array (`-` for stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// How many results.
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// A wider search beam than the server's ef_search.
    #[arg(long)]
    ef: Option<usize>,
    #[arg(long, value_enum, default_value = "read-your-writes")]
    consistency: ConsistencyArg,
    /// The LSN for --consistency as-of.
    #[arg(long, required_if_eq("consistency", "as-of"))]
    as_of: Option<u64>,
    /// Print one JSON object: {"as_of_lsn": N, "results": [{id, score, what, ...}]}.
    #[arg(long)]
    json: bool,
}

fn parse_vector(text: &str, source: &str) -> anyhow::Result<Vec<f32>> {
    serde_json::from_str(text)
        .with_context(|| format!("{source}: expected a JSON array of numbers"))
}

pub fn run(args: RecallArgs) -> anyhow::Result<()> {
    let embedding = match (&args.vector, &args.file) {
        (Some(text), _) => parse_vector(text, "--vector")?,
        (_, Some(path)) if path.as_os_str() == "-" => {
            parse_vector(&std::io::read_to_string(std::io::stdin())?, "stdin")?
        }
        (_, Some(path)) => parse_vector(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
            &path.display().to_string(),
        )?,
        _ => Vec::new(),
    };
    let consistency = match args.consistency {
        ConsistencyArg::ReadYourWrites => Consistency::ReadYourWrites,
        ConsistencyArg::AsOf => Consistency::AsOf(Lsn(args.as_of.expect("required by clap"))),
        ConsistencyArg::Eventual => Consistency::Eventual,
    };
    let query = RecallQuery {
        space: args.space.clone(),
        embedding,
        k: args.k,
        ef: args.ef,
        consistency,
    };
    let options = args.server.options("engram-recall")?;
    let recalled = super::runtime()?.block_on(async {
        let mut session = Session::connect(&options, None).await?;
        let recalled = match &args.id {
            Some(id) => session.recall_by_id(&query, id).await?,
            None => session.recall(&query).await?,
        };
        session.goodbye().await?;
        anyhow::Ok(recalled)
    })?;
    if args.json {
        let results: Vec<_> = recalled
            .hits
            .iter()
            .map(|h| {
                serde_json::json!({
                    "id": h.id,
                    "score": h.score,
                    "what": h.what,
                    "when_unix_ns": h.when_unix_ns,
                    "confidence": h.confidence,
                    "lsn": h.lsn.0,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"as_of_lsn": recalled.as_of.0, "results": results})
        );
        return Ok(());
    }
    println!("{:>4} {:>9} {:<24} what", "rank", "score", "id");
    for (rank, h) in recalled.hits.iter().enumerate() {
        let what: String = h.what.chars().take(60).collect();
        println!("{:>4} {:>9.4} {:<24} {}", rank + 1, h.score, h.id, what);
    }
    println!(
        "{} results as of LSN {}",
        recalled.hits.len(),
        recalled.as_of.0
    );
    Ok(())
}
