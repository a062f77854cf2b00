//! TLS for QUIC: the server's certificate (configured, or self-signed once into
//! `DATA_DIR/tls/`) and the rustls configurations for both ends, with ALPN `engram/1`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use super::protocol::ALPN;

pub const TLS_DIR: &str = "tls";
pub const CERT_FILE: &str = "cert.der";
pub const KEY_FILE: &str = "key.der";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable certificate or key: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

/// The server's certificate chain and key.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where the certificate lives, for clients to trust.
    pub cert_path: PathBuf,
}

impl ServerIdentity {
    /// SHA-256 of the leaf certificate, as `AB:CD:...`, for operators to compare.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }

    /// A configured certificate and key (DER or PEM files).
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerIdentity, TlsError> {
        let cert_bytes = std::fs::read(cert).map_err(|source| TlsError::Read {
            path: cert.to_owned(),
            source,
        })?;
        let key_bytes = std::fs::read(key).map_err(|source| TlsError::Read {
            path: key.to_owned(),
            source,
        })?;
        let bad = |path: &Path, reason: String| TlsError::BadFile {
            path: path.to_owned(),
            reason,
        };
        let chain = if cert_bytes.starts_with(b"-----BEGIN") {
            CertificateDer::pem_slice_iter(&cert_bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, e.to_string()))?
        } else {
            vec![CertificateDer::from(cert_bytes)]
        };
        if chain.is_empty() {
            return Err(bad(cert, "no certificate".into()));
        }
        let key = if key_bytes.starts_with(b"-----BEGIN") {
            PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| bad(key, e.to_string()))?
        } else {
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_bytes))
        };
        Ok(ServerIdentity {
            chain,
            key,
            cert_path: cert.to_owned(),
        })
    }

    /// The certificate in `data_dir/tls/`, generated (self-signed for localhost, 127.0.0.1
    /// and ::1) the first time.
    pub fn load_or_generate(data_dir: &Path) -> Result<ServerIdentity, TlsError> {
        let dir = data_dir.join(TLS_DIR);
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if !(cert.exists() && key.exists()) {
            let generated = rcgen::generate_simple_self_signed(vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "::1".into(),
            ])?;
            std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
                path: dir.clone(),
                source,
            })?;
            // Key first: a certificate without its key must never be left behind.
            write_durably(&key, &generated.signing_key.serialize_der(), SECRET_MODE)?;
            write_durably(&cert, generated.cert.der(), PUBLIC_MODE)?;
            let identity = ServerIdentity::from_files(&cert, &key)?;
            tracing::info!(cert = %cert.display(), sha256 = %identity.fingerprint(), "generated a self-signed TLS certificate");
            return Ok(identity);
        }
        ServerIdentity::from_files(&cert, &key)
    }

    pub fn quic_server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let mut crypto = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), self.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
    }
}

impl ServerIdentity {
    /// For HTTPS and WSS on the HTTP address (TLS 1.2 and 1.3, ALPN http/1.1).
    pub fn https_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), self.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client configuration that trusts exactly `cert_der` (the server's certificate).
pub fn quic_client_config(cert_der: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert_der.to_vec()))
        .map_err(|e| {
            TlsError::Config(format!(
                "the server certificate is not usable as a root: {e}"
            ))
        })?;
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

pub fn fingerprint(cert: &[u8]) -> String {
    Sha256::digest(cert)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Temp file, fsync, rename, directory fsync.
/// Secrets are readable by the server's user only.
pub(crate) const SECRET_MODE: u32 = 0o600;
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Writes `bytes` to `path` whole or not at all: a synced temp file renamed into place,
/// then the directory synced.
pub(crate) fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&temp, path).map_err(err)?;
    let dir = path.parent().expect("a file in a directory");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}
