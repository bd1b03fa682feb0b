//! Registry credentials from the files Docker and Podman users already have.
//!
//! Looked up in this order, first match wins: `$REGISTRY_AUTH_FILE`, `${XDG_RUNTIME_DIR}/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`). In the Docker file, `credHelpers.<registry>`
//! and then `credsStore` name a `docker-credential-<helper>` program that is asked for the secret.

use base64::Engine as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::image::limits::{read_to_end_capped, ReadError, MAX_CREDENTIALS};

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh/identity token (Docker's `identitytoken`), sent as a bearer token.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ****)"),
            Credentials::Token(_) => f.write_str("Token(****)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the credentials file {path:?}")]
    Read {
        path: PathBuf,
        source: crate::image::limits::ReadError,
    },
    #[error("invalid credentials file {path:?}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("invalid \"auth\" entry for {registry} in {path:?}: expected base64 of \"user:password\"")]
    BadAuthField { registry: String, path: PathBuf },
    #[error("cannot get the credentials for {registry} from docker-credential-{helper}")]
    Helper {
        helper: String,
        registry: String,
        source: HelperError,
    },
}

/// What went wrong with a credential helper.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("cannot run {program:?}")]
    Spawn { program: String, source: std::io::Error },
    #[error("cannot talk to it")]
    Io(#[source] std::io::Error),
    #[error("cannot read its answer")]
    Answer(#[source] ReadError),
    #[error("it ended with {status}: {output:?}")]
    Failed {
        status: std::process::ExitStatus,
        /// Its stderr, or its stdout when stderr is empty.
        output: String,
    },
    #[error("invalid answer: expected JSON with Username and Secret")]
    Json(#[source] serde_json::Error),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The candidate credential files, in lookup order.
pub fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => files.push(Path::new(&d).join("config.json")),
        None => {
            if let Some(h) = std::env::var_os("HOME") {
                files.push(Path::new(&h).join(".docker/config.json"));
            }
        }
    }
    files
}

/// The keys a registry may be stored under: `host[:port]`, with a scheme, and Docker Hub's legacy URL.
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if matches!(registry, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
        keys.extend(
            [
                "https://index.docker.io/v1/",
                "index.docker.io",
                "docker.io",
                "registry-1.docker.io",
            ]
            .map(String::from),
        );
    }
    keys
}

fn lookup_key<'a, V>(map: &'a HashMap<String, V>, registry: &str) -> Option<(&'a String, &'a V)> {
    for key in keys_for(registry) {
        if let Some(kv) = map.get_key_value(&key) {
            return Some(kv);
        }
    }
    // Entries written as "https://host/v1/" or "host/" match on their host part.
    map.iter().find(|(k, _)| {
        let h = k.trim_start_matches("https://").trim_start_matches("http://");
        h.split('/').next() == Some(registry)
    })
}

/// Finds credentials for `registry` (`host[:port]` as in the reference).
pub fn credentials_for(registry: &str) -> Result<Credentials, AuthError> {
    for path in auth_files() {
        // A regular file of at most MAX_CREDENTIALS bytes (never a FIFO someone left at that path).
        let text = match crate::image::limits::read_file_capped(&path, MAX_CREDENTIALS, true) {
            Ok(t) => t,
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(AuthError::Read { path, source }),
        };
        let file: AuthFile = serde_json::from_slice(&text).map_err(|source| AuthError::Parse {
            path: path.clone(),
            source,
        })?;
        if let Some((_, helper)) = lookup_key(&file.cred_helpers, registry) {
            return run_helper(helper, registry);
        }
        if let Some((_, entry)) = lookup_key(&file.auths, registry) {
            if let Some(c) = entry_credentials(entry, registry, &path)? {
                tracing::debug!(registry, file = %path.display(), "using stored credentials");
                return Ok(c);
            }
        }
        if let Some(helper) = &file.creds_store {
            match run_helper(helper, registry) {
                Ok(Credentials::Anonymous) => {}
                other => return other,
            }
        }
    }
    Ok(Credentials::Anonymous)
}

fn entry_credentials(entry: &AuthEntry, registry: &str, path: &Path) -> Result<Option<Credentials>, AuthError> {
    if let Some(tok) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::Token(tok.to_string())));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || AuthError::BadAuthField {
            registry: registry.to_string(),
            path: path.to_path_buf(),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (u, p) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials::Basic {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials::Basic {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    Ok(None)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// Runs `docker-credential-<helper> get` with the registry on stdin, as the Docker credential-helper protocol says.
fn run_helper(helper: &str, registry: &str) -> Result<Credentials, AuthError> {
    let program = format!("docker-credential-{helper}");
    let fail = |source: HelperError| AuthError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        source,
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            fail(HelperError::Spawn {
                program: program.clone(),
                source,
            })
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(registry.as_bytes())
            .map_err(|e| fail(HelperError::Io(e)))?;
    }
    // Its answers are read within a cap: stderr on a thread (its start kept, the rest drained so that the
    // helper never stalls on a full pipe), stdout here (a helper that says too much is killed).
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut e).take(MAX_CREDENTIALS).read_to_end(&mut buf);
            let _ = std::io::copy(&mut e, &mut std::io::sink());
            buf
        })
    });
    let stdout = child.stdout.take().map(|o| read_to_end_capped(o, MAX_CREDENTIALS));
    let stdout = match stdout {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(HelperError::Answer(e)));
        }
        None => Vec::new(),
    };
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let status = child.wait().map_err(|e| fail(HelperError::Io(e)))?;
    let out = std::process::Output { status, stdout, stderr };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The protocol's answer for an unknown registry: not an error, just no credentials.
        if stdout.contains("credentials not found") {
            return Ok(Credentials::Anonymous);
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        let output = if msg.trim().is_empty() {
            stdout.trim()
        } else {
            msg.trim()
        };
        return Err(fail(HelperError::Failed {
            status: out.status,
            output: output.to_string(),
        }));
    }
    let ans: HelperAnswer = serde_json::from_str(&stdout).map_err(|e| fail(HelperError::Json(e)))?;
    if ans.username == "<token>" {
        Ok(Credentials::Token(ans.secret))
    } else {
        Ok(Credentials::Basic {
            username: ans.username,
            password: ans.secret,
        })
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn decodes_auth_field_and_pairs() {
        let p = Path::new("/x");
        let e = AuthEntry {
            auth: Some(base64::engine::general_purpose::STANDARD.encode("drun:s3:cret")),
            ..Default::default()
        };
        assert_eq!(
            entry_credentials(&e, "r", p).unwrap(),
            Some(Credentials::Basic {
                username: "drun".into(),
                password: "s3:cret".into()
            })
        );
        let e = AuthEntry {
            auth: Some("!!!".into()),
            ..Default::default()
        };
        assert!(entry_credentials(&e, "r", p).is_err());
        assert_eq!(entry_credentials(&AuthEntry::default(), "r", p).unwrap(), None);
    }

    #[test]
    fn matches_keys_with_scheme_and_path() {
        let mut m = HashMap::new();
        m.insert("https://index.docker.io/v1/".to_string(), 1);
        m.insert("https://r.example:5000/v2/".to_string(), 2);
        assert_eq!(lookup_key(&m, "docker.io").map(|x| *x.1), Some(1));
        assert_eq!(lookup_key(&m, "r.example:5000").map(|x| *x.1), Some(2));
        assert_eq!(lookup_key(&m, "r.example"), None);
    }
}
