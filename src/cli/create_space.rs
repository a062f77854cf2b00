//! `engram create-space`: define a space before its first observation.

use engram::client::{Session, SpaceCreation};
use engram::space::Metric;

use super::ServerArgs;

#[derive(clap::Args)]
pub struct CreateSpaceArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long)]
    space: String,
    /// The embedding dimension every observation of the space must have.
    #[arg(long)]
    dim: u32,
    /// How the space's index compares embeddings.
    #[arg(long, value_enum, default_value = "cosine")]
    metric: Metric,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CreateSpaceArgs) -> anyhow::Result<()> {
    let options = args.server.options("engram-create-space")?;
    let outcome = super::runtime()?.block_on(async {
        let mut session = Session::connect(&options, None).await?;
        let outcome = session
            .create_space(&args.space, args.dim, args.metric)
            .await?;
        session.goodbye().await?;
        anyhow::Ok(outcome)
    })?;
    let (word, lsn, refusal) = match &outcome {
        SpaceCreation::Created { lsn } => ("created", Some(*lsn), None),
        SpaceCreation::Existed => ("existed", None, None),
        SpaceCreation::Refused { message, .. } => ("refused", None, Some(message.as_str())),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "space": args.space,
                "dimension": args.dim,
                "metric": args.metric,
                "outcome": word,
                "lsn": lsn,
                "refused": refusal,
            })
        );
    } else {
        match &outcome {
            SpaceCreation::Created { lsn } => println!(
                "space {} created: dimension {}, metric {:?}, logged at LSN {lsn}",
                args.space, args.dim, args.metric
            ),
            SpaceCreation::Existed => println!(
                "space {} already exists with dimension {} and metric {:?}",
                args.space, args.dim, args.metric
            ),
            SpaceCreation::Refused { message, .. } => {
                eprintln!("refused: {message}")
            }
        }
    }
    if refusal.is_some() {
        std::process::exit(1);
    }
    Ok(())
}
