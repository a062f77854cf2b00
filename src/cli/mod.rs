//! The client commands of the `engram` binary (not part of the library): `observe`,
//! `spaces`, `check`, `create-space` and `recall`, each one session with a server over QUIC.

pub mod check;
pub mod create_space;
pub mod observe;
pub mod recall;
pub mod serve_config;
pub mod spaces;

use std::path::PathBuf;

use anyhow::Context;
use engram::client::ClientOptions;

/// Where the server is and how to trust it; shared by every client command.
#[derive(clap::Args)]
pub struct ServerArgs {
    #[arg(long, env = "ENGRAM_ADDR", default_value = "127.0.0.1:7400")]
    pub addr: std::net::SocketAddr,
    /// The server's certificate; the server writes its own to DATA_DIR/tls/cert.der.
    #[arg(
        long,
        env = "ENGRAM_CERT",
        default_value = "./engram-data/tls/cert.der"
    )]
    pub cert: PathBuf,
    /// The token to present, for a server with an auth file (ENGRAM_TOKEN keeps it out
    /// of the process list).
    #[arg(long, env = "ENGRAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    pub fn options(&self, client_name: &str) -> anyhow::Result<ClientOptions> {
        let cert = std::fs::read(&self.cert)
            .with_context(|| format!("reading the server certificate {}", self.cert.display()))?;
        let mut options = ClientOptions::new(self.addr, cert, client_name);
        options.auth_token = self.token.clone();
        Ok(options)
    }
}

/// A runtime for one command: a client needs no more than one thread.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
