//! Who may read and write which spaces: the tokens of `--auth-file`.
//!
//! ```toml
//! [[token]]
//! name = "ingest-bot"          # in logs and metrics; the token itself never is
//! sha256 = "9f86d0…"           # hex SHA-256 of the token (or `token = "…"`, in clear)
//! spaces = ["alpha", "team-*"] # names or globs (`*`, `?`)
//! rights = ["read", "write"]   # and "admin": /stats and /metrics over HTTP
//! ```
//!
//! A presented token is hashed and compared with every grant's digest in constant time,
//! all of them, so that neither the time taken nor the order says which one matched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wildmatch::WildMatch;

/// Longest token accepted, in bytes (Hello carries it as a str8).
pub const TOKEN_BYTES_MAX: usize = 255;
/// Shortest token an auth file may hold in clear: shorter ones are guessable.
pub const TOKEN_BYTES_MIN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    Read,
    Write,
    Admin,
}

/// One token's rights.
#[derive(Debug)]
pub struct Grant {
    name: String,
    digest: [u8; 32],
    spaces: Vec<WildMatch>,
    rights: Vec<Right>,
}

impl Grant {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn may(&self, right: Right, space: &str) -> bool {
        self.rights.contains(&right) && self.spaces.iter().any(|p| p.matches(space))
    }
}

/// What a session or request was allowed at authentication.
#[derive(Clone, Debug)]
pub enum Access {
    /// No auth file: everything (the server then listens on loopback only).
    Open,
    Granted(Arc<Grant>),
}

impl Access {
    pub fn may_read(&self, space: &str) -> bool {
        self.may(Right::Read, space)
    }

    pub fn may_write(&self, space: &str) -> bool {
        self.may(Right::Write, space)
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Granted(grant) => grant.rights.contains(&Right::Admin),
        }
    }

    fn may(&self, right: Right, space: &str) -> bool {
        match self {
            Access::Open => true,
            Access::Granted(grant) => grant.may(right, space),
        }
    }

    /// The grant's name, for logs; "open" without an auth file.
    pub fn name(&self) -> &str {
        match self {
            Access::Open => "open",
            Access::Granted(grant) => grant.name(),
        }
    }
}

/// Why a client was not let in. The messages say nothing about what exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this server requires a token")]
    Missing,
    #[error("the token is not valid")]
    Invalid,
}

impl AuthError {
    /// The `reason` label of `engram_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Invalid => "invalid_token",
        }
    }
}

/// The server's tokens, or none (open, loopback only).
#[derive(Debug, Default)]
pub struct Authenticator {
    grants: Option<Vec<Arc<Grant>>>,
}

impl Authenticator {
    /// Everyone may do everything.
    pub fn open() -> Authenticator {
        Authenticator { grants: None }
    }

    pub fn is_open(&self) -> bool {
        self.grants.is_none()
    }

    pub fn load(path: &Path) -> Result<Authenticator, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Authenticator::parse(&text).map_err(|reason| AuthFileError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Authenticator, String> {
        let file: AuthFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.token.is_empty() {
            return Err("no [[token]] entries: every client would be refused".into());
        }
        let mut grants = Vec::new();
        for entry in file.token {
            let digest = match (&entry.token, &entry.sha256) {
                (Some(token), None) => {
                    if !(TOKEN_BYTES_MIN..=TOKEN_BYTES_MAX).contains(&token.len()) {
                        return Err(format!(
                            "token {:?}: expected {TOKEN_BYTES_MIN} to {TOKEN_BYTES_MAX} bytes, got {}",
                            entry.name,
                            token.len()
                        ));
                    }
                    digest_of(token.as_bytes())
                }
                (None, Some(hex)) => parse_digest(hex).ok_or_else(|| {
                    format!("token {:?}: sha256 is not 64 hex digits", entry.name)
                })?,
                _ => {
                    return Err(format!(
                        "token {:?}: give exactly one of `token` and `sha256`",
                        entry.name
                    ))
                }
            };
            if entry.spaces.is_empty() && !entry.rights.iter().all(|r| *r == Right::Admin) {
                return Err(format!("token {:?}: `spaces` is empty", entry.name));
            }
            grants.push(Arc::new(Grant {
                name: entry.name,
                digest,
                spaces: entry.spaces.iter().map(|s| WildMatch::new(s)).collect(),
                rights: entry.rights,
            }));
        }
        Ok(Authenticator {
            grants: Some(grants),
        })
    }

    /// The access `presented` gives.
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Access, AuthError> {
        let Some(grants) = &self.grants else {
            return Ok(Access::Open);
        };
        let presented = presented
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let digest = digest_of(presented.as_bytes());
        // Every grant is compared, without an early exit.
        let mut found = None;
        for grant in grants {
            if bool::from(grant.digest.ct_eq(&digest)) {
                found = Some(grant.clone());
            }
        }
        found.map(Access::Granted).ok_or(AuthError::Invalid)
    }
}

fn digest_of(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read the auth file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the auth file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    token: Option<String>,
    sha256: Option<String>,
    #[serde(default)]
    spaces: Vec<String>,
    rights: Vec<Right>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[token]]
        name = "writer"
        token = "writer-token-0123456789"
        spaces = ["alpha", "team-*"]
        rights = ["read", "write"]

        [[token]]
        name = "reader"
        sha256 = "HASH"
        spaces = ["alpha"]
        rights = ["read"]

        [[token]]
        name = "ops"
        token = "ops-token-0123456789ab"
        rights = ["admin"]
    "#;

    fn authenticator() -> Authenticator {
        let hash: String = digest_of(b"reader-token-0123456789")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Authenticator::parse(&FILE.replace("HASH", &hash)).unwrap()
    }

    #[test]
    fn tokens_grant_their_rights_on_their_spaces_only() {
        let auth = authenticator();
        let writer = auth.authenticate(Some("writer-token-0123456789")).unwrap();
        assert_eq!(writer.name(), "writer");
        assert!(writer.may_write("alpha") && writer.may_read("team-x"));
        assert!(!writer.may_write("beta") && !writer.may_read("teams"));
        assert!(!writer.is_admin());

        let reader = auth.authenticate(Some("reader-token-0123456789")).unwrap();
        assert!(reader.may_read("alpha"));
        assert!(!reader.may_write("alpha"), "a read token cannot write");

        let ops = auth.authenticate(Some("ops-token-0123456789ab")).unwrap();
        assert!(ops.is_admin() && !ops.may_read("alpha"));
    }

    #[test]
    fn missing_and_wrong_tokens_are_refused() {
        let auth = authenticator();
        assert_eq!(auth.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(auth.authenticate(Some("")).unwrap_err(), AuthError::Missing);
        assert_eq!(
            auth.authenticate(Some("writer-token-012345678"))
                .unwrap_err(),
            AuthError::Invalid
        );
        assert!(Authenticator::open()
            .authenticate(None)
            .unwrap()
            .may_write("x"));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let short = r#"[[token]]
            name = "a"
            token = "short"
            spaces = ["*"]
            rights = ["read"]"#;
        assert!(Authenticator::parse(short)
            .unwrap_err()
            .contains("16 to 255 bytes"));
        let both = short.replace("token = \"short\"", "token = \"x\"\nsha256 = \"00\"");
        assert!(Authenticator::parse(&both)
            .unwrap_err()
            .contains("exactly one"));
        let bad_hash = short.replace("token = \"short\"", "sha256 = \"zz\"");
        assert!(Authenticator::parse(&bad_hash)
            .unwrap_err()
            .contains("64 hex"));
        assert!(Authenticator::parse("")
            .unwrap_err()
            .contains("no [[token]]"));
        let bad_right = short.replace("\"read\"", "\"delete\"");
        assert!(Authenticator::parse(&bad_right)
            .unwrap_err()
            .contains("delete"));
    }
}
