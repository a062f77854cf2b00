//! `engram spaces`: what the server holds, space by space.

use engram::client::Session;

use super::ServerArgs;

#[derive(clap::Args)]
pub struct SpacesArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SpacesArgs) -> anyhow::Result<()> {
    let options = args.server.options("engram-spaces")?;
    let listing = super::runtime()?.block_on(async {
        let mut session = Session::connect(&options, None).await?;
        let listing = session.list_spaces().await?;
        session.goodbye().await?;
        anyhow::Ok(listing)
    })?;
    if args.json {
        let spaces: Vec<_> = listing
            .spaces
            .iter()
            .map(|s| {
                serde_json::json!({
                    "space": s.name,
                    "dimension": s.dim,
                    "count": s.observations,
                    "last_lsn": s.last_lsn,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"durable_lsn": listing.durable_lsn, "spaces": spaces})
        );
        return Ok(());
    }
    println!(
        "{:<24} {:>9} {:>12} {:>14}",
        "space", "dimension", "count", "last LSN"
    );
    for s in &listing.spaces {
        println!(
            "{:<24} {:>9} {:>12} {:>14}",
            s.name, s.dim, s.observations, s.last_lsn
        );
    }
    println!(
        "{} spaces; the log is durable up to LSN {}",
        listing.spaces.len(),
        listing.durable_lsn
    );
    Ok(())
}
