//! Talking to a registry: scheme and TLS choice, credentials, manifests through `oci-client`, and blob downloads
//! that survive faults.
//!
//! Manifests go through `oci-client`, which does the token dance. Blobs are fetched here with the same
//! credentials (the bearer token `oci-client` negotiated, or basic auth) on a `reqwest` client of our own, because
//! a robust layer download needs what `oci-client` does not expose: the `Retry-After` header of a 429/503 answer,
//! and resuming a dropped connection from the received offset with a `Range` request while the consumer keeps its
//! decompression state.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::digest::Digest;
use crate::image::auth::{credentials_for, AuthError, Credentials};

/// Media types drun accepts for manifests and indexes.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

const MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} is unreachable: {message}")]
    Unreachable { registry: String, message: String },
    #[error("TLS certificate of {registry} is not trusted: {message}\n  hint: add its CA certificate to `ca_files` in /etc/drun/config.toml (or ~/.config/drun/config.toml)")]
    Certificate { registry: String, message: String },
    #[error("{registry} refused the credentials for {reference}: {message}")]
    Unauthorized {
        registry: String,
        reference: String,
        message: String,
    },
    #[error("{reference}: not found in {registry}: {message}")]
    NotFound {
        registry: String,
        reference: String,
        message: String,
    },
    #[error("{registry} answered {status} for {url}: {message}")]
    Status {
        registry: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{registry}: {message}")]
    Other { registry: String, message: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("failed to read CA certificate {path}")]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("blob {digest} from {registry}: expected {expected} bytes, got {got}")]
    SizeMismatch {
        registry: String,
        digest: Digest,
        expected: u64,
        got: u64,
    },
}

impl RegistryError {
    fn retryable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Full error text of a source chain on one line (reqwest hides the useful part in its sources).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn is_cert_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("certificate") || m.contains("unknownissuer") || m.contains("unknown issuer")
}

/// A connection to one registry for one repository.
pub struct Registry {
    pub host: String,
    scheme: &'static str,
    client: Client,
    http: reqwest::Client,
    auth: RegistryAuth,
    reference: Reference,
    /// The value of the `Authorization` header for blob requests.
    authorization: tokio::sync::Mutex<Option<String>>,
}

fn load_certs(cfg: &Config, host: &str) -> Result<Vec<Vec<u8>>, RegistryError> {
    let mut pems = Vec::new();
    for path in cfg.ca_files.iter().chain(cfg.registry(host).ca_files.iter()) {
        pems.push(std::fs::read(path).map_err(|source| RegistryError::CaFile {
            path: path.clone(),
            source,
        })?);
    }
    Ok(pems)
}

fn http_client(pems: &[Vec<u8>], insecure_tls: bool) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("drun/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .danger_accept_invalid_certs(insecure_tls);
    let mut certs = Vec::new();
    for pem in pems {
        certs.extend(reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?);
    }
    if !certs.is_empty() {
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| chain(&e))
}

impl Registry {
    /// Chooses HTTPS or (for loopback and `insecure` registries, when the server does not speak TLS) plain HTTP,
    /// reads the user's credentials and authenticates for pulling `reference`.
    pub async fn connect(cfg: &Config, reference: &Reference) -> Result<Registry, RegistryError> {
        install_crypto_provider();
        let host = reference.resolve_registry().to_string();
        let rcfg = cfg.registry(&host);
        let pems = load_certs(cfg, &host)?;
        let other = |message: String| RegistryError::Other {
            registry: host.clone(),
            message,
        };
        let http = http_client(&pems, rcfg.insecure).map_err(other)?;

        let scheme = Self::probe_scheme(&http, &host, cfg.allows_http(&host)).await?;
        let creds = credentials_for(reference.registry())?;
        tracing::debug!(registry = %host, scheme, credentials = ?creds, "connecting");
        let auth = match &creds {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
            Credentials::Token(t) => RegistryAuth::Bearer(t.clone()),
        };
        let certs = pems
            .iter()
            .map(|p| Certificate {
                encoding: CertificateEncoding::Pem,
                data: p.clone(),
            })
            .collect();
        let client = Client::new(ClientConfig {
            protocol: if scheme == "http" {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: rcfg.insecure,
            extra_root_certificates: certs,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        let reg = Registry {
            host,
            scheme,
            client,
            http,
            auth,
            reference: reference.clone(),
            authorization: tokio::sync::Mutex::new(None),
        };
        reg.authenticate().await?;
        Ok(reg)
    }

    async fn probe_scheme(http: &reqwest::Client, host: &str, allow_http: bool) -> Result<&'static str, RegistryError> {
        let url = format!("https://{host}/v2/");
        let mut last = String::new();
        for attempt in 0..3 {
            match http.get(&url).timeout(Duration::from_secs(10)).send().await {
                Ok(_) => return Ok("https"),
                Err(e) => {
                    last = chain(&e);
                    if is_cert_error(&last) {
                        return Err(RegistryError::Certificate {
                            registry: host.to_string(),
                            message: last,
                        });
                    }
                    if allow_http {
                        // A plain-HTTP server answers a TLS hello with garbage or closes: try HTTP instead.
                        match http
                            .get(format!("http://{host}/v2/"))
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await
                        {
                            Ok(_) => return Ok("http"),
                            Err(e2) => last = format!("https: {last}; http: {}", chain(&e2)),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        Err(RegistryError::Unreachable {
            registry: host.to_string(),
            message: last,
        })
    }

    async fn authenticate(&self) -> Result<(), RegistryError> {
        let token = self
            .with_retries("authenticate", || {
                self.client.auth(&self.reference, &self.auth, RegistryOperation::Pull)
            })
            .await?;
        let header = match (token, &self.auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
            }
            (None, _) => None,
        };
        *self.authorization.lock().await = header;
        Ok(())
    }

    fn map_oci(&self, e: OciDistributionError) -> RegistryError {
        let registry = self.host.clone();
        let reference = self.reference.whole();
        match e {
            OciDistributionError::UnauthorizedError { url } => RegistryError::Unauthorized {
                registry,
                reference,
                message: format!("401 Unauthorized for {url}"),
            },
            OciDistributionError::AuthenticationFailure(m) => RegistryError::Unauthorized {
                registry,
                reference,
                message: m,
            },
            OciDistributionError::RegistryError { envelope, url } => {
                let msg = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let msg = format!("{msg} ({url})");
                let not_found = envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        oci_client::errors::OciErrorCode::ManifestUnknown
                            | oci_client::errors::OciErrorCode::NameUnknown
                            | oci_client::errors::OciErrorCode::BlobUnknown
                    )
                });
                let denied = envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        oci_client::errors::OciErrorCode::Unauthorized | oci_client::errors::OciErrorCode::Denied
                    )
                });
                if not_found {
                    RegistryError::NotFound {
                        registry,
                        reference,
                        message: msg,
                    }
                } else if denied {
                    RegistryError::Unauthorized {
                        registry,
                        reference,
                        message: msg,
                    }
                } else {
                    RegistryError::Other { registry, message: msg }
                }
            }
            OciDistributionError::ImageManifestNotFoundError(m) => RegistryError::NotFound {
                registry,
                reference,
                message: m,
            },
            OciDistributionError::ServerError {
                code: 404,
                url,
                message,
            } => RegistryError::NotFound {
                registry,
                reference,
                message: format!("404 for {url}: {}", message.trim()),
            },
            OciDistributionError::ServerError { code, url, message } => RegistryError::Status {
                registry,
                url,
                status: code,
                message: message.trim().to_string(),
            },
            OciDistributionError::RequestError(e) => {
                let message = chain(&e);
                if is_cert_error(&message) {
                    RegistryError::Certificate { registry, message }
                } else {
                    RegistryError::Unreachable { registry, message }
                }
            }
            other => RegistryError::Other {
                registry,
                message: chain(&other),
            },
        }
    }

    async fn with_retries<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 0;
        loop {
            match f().await.map_err(|e| self.map_oci(e)) {
                Ok(v) => return Ok(v),
                Err(e) if e.retryable() && attempt + 1 < MAX_ATTEMPTS => {
                    let delay = backoff(attempt, None);
                    tracing::warn!(registry = %self.host, error = %e, ?delay, "{what} failed, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetches a manifest or index by tag or digest. Returns its bytes and digest, verified against the
    /// reference's digest when it has one.
    pub async fn manifest(&self, reference: &Reference) -> Result<(Bytes, Digest), RegistryError> {
        let (data, _) = self
            .with_retries("fetching the manifest", || {
                self.client.pull_manifest_raw(reference, &self.auth, MANIFEST_TYPES)
            })
            .await?;
        let digest = Digest::of(&data);
        if let Some(want) = reference.digest() {
            if want != digest.to_string() {
                return Err(RegistryError::Other {
                    registry: self.host.clone(),
                    message: format!(
                        "manifest for {} has digest {digest}, expected {want}",
                        reference.whole()
                    ),
                });
            }
        }
        Ok((data, digest))
    }

    /// Downloads a whole blob, verified (small documents: configs).
    pub async fn blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, RegistryError> {
        let (tx, mut rx) = mpsc::channel(16);
        let fetch = self.stream_blob(digest, size, tx, |_| {});
        let collect = async {
            let mut out = Vec::with_capacity(size as usize);
            while let Some(chunk) = rx.recv().await {
                out.extend_from_slice(&chunk);
            }
            out
        };
        let (res, data) = tokio::join!(fetch, collect);
        res?;
        if Digest::of(&data) != *digest {
            return Err(RegistryError::Other {
                registry: self.host.clone(),
                message: format!("blob {digest} does not match its digest (got {})", Digest::of(&data)),
            });
        }
        Ok(data)
    }

    /// Streams blob `digest` (of `size` bytes) into `tx`, in order, exactly once per byte: on a dropped connection
    /// the download resumes at the received offset (a `Range` request; if the registry ignores it, the bytes
    /// already sent are skipped). 429 and 5xx answers are retried, honouring `Retry-After`. The receiver verifies
    /// the digest. `progress` is told every chunk's length.
    pub async fn stream_blob(
        &self,
        digest: &Digest,
        size: u64,
        tx: mpsc::Sender<Bytes>,
        mut progress: impl FnMut(u64),
    ) -> Result<(), RegistryError> {
        let url = format!(
            "{}://{}/v2/{}/blobs/{digest}",
            self.scheme,
            self.host,
            self.reference.repository()
        );
        let mut offset: u64 = 0;
        let mut failures = 0u32;
        let mut reauthed = false;
        let status_err = |status: u16, message: String| RegistryError::Status {
            registry: self.host.clone(),
            url: url.clone(),
            status,
            message,
        };
        loop {
            let mut req = self.http.get(&url);
            if let Some(h) = self.authorization.lock().await.clone() {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            if offset > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            }
            let mut retry_after = None;
            let result: Result<(), RegistryError> = async {
                let resp = req.send().await.map_err(|e| RegistryError::Unreachable {
                    registry: self.host.clone(),
                    message: chain(&e),
                })?;
                let status = resp.status().as_u16();
                retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let mut skip = match status {
                    200 => offset,
                    206 => 0,
                    401 if !reauthed => {
                        return Err(status_err(401, "token expired".into()));
                    }
                    404 => {
                        return Err(RegistryError::NotFound {
                            registry: self.host.clone(),
                            reference: self.reference.whole(),
                            message: format!("blob {digest} ({url})"),
                        })
                    }
                    s => {
                        let body = resp.text().await.unwrap_or_default();
                        return Err(status_err(s, body.trim().chars().take(300).collect()));
                    }
                };
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let mut chunk = chunk.map_err(|e| RegistryError::Unreachable {
                        registry: self.host.clone(),
                        message: chain(&e),
                    })?;
                    if skip > 0 {
                        let n = skip.min(chunk.len() as u64);
                        chunk = chunk.slice(n as usize..);
                        skip -= n;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    offset += chunk.len() as u64;
                    if offset > size {
                        return Err(RegistryError::SizeMismatch {
                            registry: self.host.clone(),
                            digest: digest.clone(),
                            expected: size,
                            got: offset,
                        });
                    }
                    progress(chunk.len() as u64);
                    failures = 0;
                    if tx.send(chunk).await.is_err() {
                        // The consumer stopped (it failed, and reports why): nothing more to do.
                        return Ok(());
                    }
                    if offset > 0 {
                        crate::failpoint::hit("blob-downloading");
                    }
                }
                if offset < size {
                    return Err(RegistryError::Unreachable {
                        registry: self.host.clone(),
                        message: format!("connection closed after {offset} of {size} bytes of {digest}"),
                    });
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(RegistryError::Status { status: 401, .. }) if !reauthed => {
                    reauthed = true;
                    self.authenticate().await?;
                }
                Err(e) if e.retryable() && failures + 1 < MAX_ATTEMPTS => {
                    let delay = backoff(failures, retry_after);
                    tracing::warn!(registry = %self.host, %digest, offset, error = %e, ?delay, "blob download interrupted, retrying");
                    tokio::time::sleep(delay).await;
                    failures += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Exponential backoff from 250 ms, capped at 10 s; a server's `Retry-After` wins (capped at 60 s).
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(d) = retry_after {
        return d.min(Duration::from_secs(60));
    }
    Duration::from_millis(250u64 << attempt.min(6)).min(Duration::from_secs(10))
}

/// rustls needs one process-wide crypto provider; drun uses ring (smaller and quicker to build than aws-lc).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        assert_eq!(backoff(0, None), Duration::from_millis(250));
        assert_eq!(backoff(2, None), Duration::from_millis(1000));
        assert_eq!(backoff(30, None), Duration::from_secs(10));
        assert_eq!(backoff(0, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(backoff(0, Some(Duration::from_secs(3600))), Duration::from_secs(60));
    }
}
