//! Talking to a registry: scheme and TLS choice, credentials, the token dance, manifests, and blob downloads
//! that survive faults — every answer read within a cap.
//!
//! The requests are made here on a `reqwest` client rather than through `oci-client`'s `Client` (drun still uses
//! its `Reference` and error types): `oci-client` reads manifests, token answers and error bodies whole into
//! memory whatever their size (a hostile registry's endless error body grew drun to gigabytes), and it does not
//! expose what a robust layer download needs — the `Retry-After` header of a 429/503 answer, and resuming a
//! dropped connection from the received offset with a `Range` request while the consumer keeps its
//! decompression state. What the distribution protocol needs for pulling is small: `GET /v2/`, the bearer-token
//! request its `WWW-Authenticate` challenge names (parsed by `http-auth`, as `oci-client` does), and `GET`s of
//! manifests and blobs. Every body is read through [`read_capped`] (see [`crate::image::limits`]).
//!
//! TLS connections are verified against the system's CA certificates (as `rustls-native-certs` finds them), the
//! `ca_files` of the configuration, and — only on a host without any CA certificates, as minimal CI images
//! are — Mozilla's root certificates from `webpki-root-certs`. Nothing about certificates can fail a pull from a
//! plain-HTTP registry.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use oci_client::errors::{OciEnvelope, OciErrorCode};
use oci_client::Reference;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::digest::Digest;
use crate::image::auth::{credentials_for, AuthError, Credentials};
use crate::image::limits::{self, TooLarge, MAX_CONFIG, MAX_ERROR_BODY, MAX_MANIFEST, MAX_TOKEN};

/// Media types drun accepts for manifests and indexes.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

const MAX_ATTEMPTS: u32 = 8;

const CA_FILES_HINT: &str =
    "add the registry's CA certificate to `ca_files` in /etc/drun/config.toml (or ~/.config/drun/config.toml)";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} is unreachable: {message}")]
    Unreachable { registry: String, message: String },
    #[error("TLS certificate of {registry} is not trusted: {message}\n  hint: {hint}")]
    Certificate {
        registry: String,
        message: String,
        hint: String,
    },
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
        /// The answer's `Retry-After`, honoured by the retry.
        retry_after: Option<Duration>,
    },
    #[error("{what} from {registry} is too large: {limit}")]
    TooLarge {
        registry: String,
        what: String,
        limit: TooLarge,
    },
    #[error("{registry}: {message}")]
    Other { registry: String, message: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("failed to read CA certificate {path}")]
    CaFile {
        path: std::path::PathBuf,
        source: limits::ReadError,
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

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
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

/// A response body read whole, but never more than `cap` bytes: a larger `Content-Length` is refused before
/// anything is read, and reading stops as soon as more than `cap` bytes came (a body without a length, or one
/// longer than it said).
async fn read_capped(resp: reqwest::Response, cap: u64) -> Result<Result<Bytes, TooLarge>, reqwest::Error> {
    if let Some(n) = resp.content_length() {
        if let Err(e) = limits::check_declared(n, cap) {
            return Ok(Err(e));
        }
    }
    let mut out = BytesMut::with_capacity(resp.content_length().unwrap_or(0) as usize);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let size = (out.len() + chunk.len()) as u64;
        if size > cap {
            return Ok(Err(TooLarge::read(size, cap)));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Ok(out.freeze()))
}

/// The start of an error answer's body (at most [`MAX_ERROR_BODY`] bytes; the rest is never read).
async fn error_body(resp: reqwest::Response) -> Bytes {
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = MAX_ERROR_BODY as usize - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() as u64 >= MAX_ERROR_BODY {
            break;
        }
    }
    out.freeze()
}

/// An error body for a message: the registry's error list when it sent one, else its first 300 characters.
fn error_text(body: &[u8]) -> (String, Option<OciEnvelope>) {
    match serde_json::from_slice::<OciEnvelope>(body) {
        Ok(env) if !env.errors.is_empty() => {
            let msg = env
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            (msg, Some(env))
        }
        _ => (String::from_utf8_lossy(body).trim().chars().take(300).collect(), None),
    }
}

fn header_retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The bearer challenge of a `WWW-Authenticate` header: where to ask for a token.
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

fn bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let challenges = http_auth::parse_challenges(header).ok()?;
    let c = challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case("bearer"))?;
    let param = |name: &str| {
        c.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_unescaped())
    };
    Some(BearerChallenge {
        realm: param("realm")?,
        service: param("service"),
    })
}

/// A token service's answer: Docker's `token` or OAuth2's `access_token`.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A connection to one registry for one repository.
pub struct Registry {
    pub host: String,
    scheme: &'static str,
    http: reqwest::Client,
    creds: Credentials,
    reference: Reference,
    /// The value of the `Authorization` header for every request.
    authorization: tokio::sync::Mutex<Option<String>>,
    /// What to do about a certificate that is not trusted.
    cert_hint: String,
}

/// The `ca_files` that apply to `host`, read (within [`limits::MAX_CA_FILE`]) and parsed.
fn load_certs(cfg: &Config, host: &str) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let mut certs = Vec::new();
    for path in cfg.ca_files.iter().chain(cfg.registry(host).ca_files.iter()) {
        let err = |source| RegistryError::CaFile {
            path: path.clone(),
            source,
        };
        let pem = limits::read_file_capped(path, limits::MAX_CA_FILE, true).map_err(err)?;
        let found = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, chain(&e)).into()))?;
        if found.is_empty() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no PEM certificate in it",
            )
            .into()));
        }
        certs.extend(found);
    }
    Ok(certs)
}

/// The certificates a registry's TLS certificate is verified against, and whether the system had any: the
/// system's CA certificates (as `rustls-native-certs` finds them, honouring `SSL_CERT_FILE` and `SSL_CERT_DIR`),
/// or Mozilla's root certificates when it has none; and `extra` (the configured `ca_files`).
///
/// reqwest's own default (its platform verifier) fails to build any client — even one only ever used for plain
/// HTTP — on a host without CA certificates, so the roots are chosen here and handed to it.
fn root_certificates(extra: Vec<reqwest::Certificate>) -> (Vec<reqwest::Certificate>, bool) {
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "reading the system's CA certificates");
    }
    let mut roots: Vec<reqwest::Certificate> = native
        .certs
        .iter()
        .filter_map(|c| reqwest::Certificate::from_der(c).ok())
        .collect();
    let system = !roots.is_empty();
    if system {
        tracing::debug!(certificates = roots.len(), "using the system's CA certificates");
    } else {
        tracing::debug!(
            "no CA certificates on this host (install ca-certificates); using Mozilla's root certificates (webpki-root-certs)"
        );
        roots.extend(
            webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .filter_map(|c| reqwest::Certificate::from_der(c).ok()),
        );
    }
    roots.extend(extra);
    (roots, system)
}

fn http_client(roots: Option<Vec<reqwest::Certificate>>) -> Result<reqwest::Client, String> {
    let b = reqwest::Client::builder()
        .user_agent(concat!("drun/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60));
    let b = match roots {
        Some(roots) => b.tls_certs_only(roots),
        // An `insecure` registry: no verification, so no roots either.
        None => b.danger_accept_invalid_certs(true),
    };
    b.build().map_err(|e| chain(&e))
}

impl Registry {
    /// Chooses HTTPS or (for loopback and `insecure` registries, when the server does not speak TLS) plain HTTP,
    /// reads the user's credentials and authenticates for pulling `reference`.
    pub async fn connect(cfg: &Config, reference: &Reference) -> Result<Registry, RegistryError> {
        install_crypto_provider();
        let host = reference.resolve_registry().to_string();
        let rcfg = cfg.registry(&host);
        let extra = load_certs(cfg, &host)?;
        let (roots, cert_hint) = if rcfg.insecure {
            (None, CA_FILES_HINT.to_string())
        } else {
            let (roots, system) = root_certificates(extra);
            let hint = if system {
                CA_FILES_HINT.to_string()
            } else {
                format!(
                    "this host has no CA certificates of its own (drun checked against Mozilla's root certificates): \
                     install the ca-certificates package, or {CA_FILES_HINT}"
                )
            };
            (Some(roots), hint)
        };
        let http = http_client(roots).map_err(|message| RegistryError::Other {
            registry: host.clone(),
            message,
        })?;

        let scheme = Self::probe_scheme(&http, &host, cfg.allows_http(&host), &cert_hint).await?;
        let creds = credentials_for(reference.registry())?;
        tracing::debug!(registry = %host, scheme, credentials = ?creds, "connecting");
        let reg = Registry {
            host,
            scheme,
            http,
            creds,
            reference: reference.clone(),
            authorization: tokio::sync::Mutex::new(None),
            cert_hint,
        };
        reg.authenticate().await?;
        Ok(reg)
    }

    async fn probe_scheme(
        http: &reqwest::Client,
        host: &str,
        allow_http: bool,
        cert_hint: &str,
    ) -> Result<&'static str, RegistryError> {
        let url = format!("https://{host}/v2/");
        let mut last = String::new();
        for attempt in 0..3 {
            // Only the status line and headers are read: the body is dropped unread.
            match http.get(&url).timeout(Duration::from_secs(10)).send().await {
                Ok(_) => return Ok("https"),
                Err(e) => {
                    last = chain(&e);
                    if is_cert_error(&last) {
                        return Err(RegistryError::Certificate {
                            registry: host.to_string(),
                            message: last,
                            hint: cert_hint.to_string(),
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

    /// A failed request (no answer): an untrusted certificate, or the registry out of reach.
    fn request_error(&self, e: reqwest::Error) -> RegistryError {
        let message = chain(&e);
        if is_cert_error(&message) {
            RegistryError::Certificate {
                registry: self.host.clone(),
                message,
                hint: self.cert_hint.clone(),
            }
        } else {
            RegistryError::Unreachable {
                registry: self.host.clone(),
                message,
            }
        }
    }

    fn too_large(&self, what: &str, limit: TooLarge) -> RegistryError {
        RegistryError::TooLarge {
            registry: self.host.clone(),
            what: what.to_string(),
            limit,
        }
    }

    /// The error for a non-success answer `status` to `url`, from its (bounded) body.
    fn status_error(&self, status: u16, url: &str, body: &[u8], retry_after: Option<Duration>) -> RegistryError {
        let registry = self.host.clone();
        let reference = self.reference.whole();
        let (text, envelope) = error_text(body);
        let has = |codes: &[OciErrorCode]| {
            envelope
                .as_ref()
                .is_some_and(|env| env.errors.iter().any(|e| codes.contains(&e.code)))
        };
        let not_found = has(&[
            OciErrorCode::ManifestUnknown,
            OciErrorCode::NameUnknown,
            OciErrorCode::BlobUnknown,
        ]);
        let denied = has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]);
        let message = if text.is_empty() {
            format!("{status} for {url}")
        } else {
            format!("{text} ({status} for {url})")
        };
        if status == 401 || status == 403 || denied {
            RegistryError::Unauthorized {
                registry,
                reference,
                message,
            }
        } else if status == 404 || not_found {
            RegistryError::NotFound {
                registry,
                reference,
                message,
            }
        } else {
            RegistryError::Status {
                registry,
                url: url.to_string(),
                status,
                message: text,
                retry_after,
            }
        }
    }

    /// `GET url` of a document of at most `cap` bytes (`what` names it in errors), once.
    async fn get_small(&self, url: &str, accept: Option<&str>, cap: u64, what: &str) -> Result<Bytes, RegistryError> {
        let mut req = self.http.get(url);
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        if let Some(h) = self.authorization.lock().await.clone() {
            req = req.header(reqwest::header::AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| self.request_error(e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let after = header_retry_after(&resp);
            let body = error_body(resp).await;
            return Err(self.status_error(status, url, &body, after));
        }
        read_capped(resp, cap)
            .await
            .map_err(|e| self.request_error(e))?
            .map_err(|limit| self.too_large(what, limit))
    }

    /// The `Authorization` header for this repository: the identity token of the credentials, or a bearer token
    /// from the token service the registry's challenge names (asked with the credentials, if any), or basic
    /// auth when the registry asks for that.
    async fn authenticate(&self) -> Result<(), RegistryError> {
        let header = match &self.creds {
            Credentials::Token(t) => Some(format!("Bearer {t}")),
            _ => self.with_retries("authenticate", || self.negotiate()).await?,
        };
        *self.authorization.lock().await = header;
        Ok(())
    }

    fn basic_header(&self) -> Option<String> {
        match &self.creds {
            Credentials::Basic { username, password } => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
                ))
            }
            _ => None,
        }
    }

    async fn negotiate(&self) -> Result<Option<String>, RegistryError> {
        let url = format!("{}://{}/v2/", self.scheme, self.host);
        let resp = self.http.get(&url).send().await.map_err(|e| self.request_error(e))?;
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_challenge);
        // The body of the /v2/ answer is never read.
        drop(resp);
        let Some(challenge) = challenge else {
            return Ok(self.basic_header());
        };
        let scope = format!("repository:{}:pull", self.reference.repository());
        let mut query = vec![("scope", scope.as_str())];
        if let Some(s) = &challenge.service {
            query.push(("service", s.as_str()));
        }
        tracing::debug!(realm = %challenge.realm, service = ?challenge.service, scope, "asking for a token");
        let mut req = self.http.get(&challenge.realm).query(&query);
        if let Credentials::Basic { username, password } = &self.creds {
            req = req.basic_auth(username, Some(password));
        }
        let resp = req.send().await.map_err(|e| self.request_error(e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let after = header_retry_after(&resp);
            let body = error_body(resp).await;
            return Err(self.status_error(status, &challenge.realm, &body, after));
        }
        let what = format!("the token answer of {}", challenge.realm);
        let body = read_capped(resp, MAX_TOKEN)
            .await
            .map_err(|e| self.request_error(e))?
            .map_err(|limit| self.too_large(&what, limit))?;
        let bad = |why: String| RegistryError::Other {
            registry: self.host.clone(),
            message: format!("unusable token answer from {}: {why}", challenge.realm),
        };
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        let token = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token)
            .ok_or_else(|| bad("it has no token".into()))?;
        let header = format!("Bearer {token}");
        reqwest::header::HeaderValue::from_str(&header).map_err(|_| bad("the token is not a header value".into()))?;
        Ok(Some(header))
    }

    async fn with_retries<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.retryable() && attempt + 1 < MAX_ATTEMPTS => {
                    let delay = backoff(attempt, e.retry_after());
                    tracing::warn!(registry = %self.host, error = %e, ?delay, "{what} failed, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetches a manifest or index (at most [`MAX_MANIFEST`] bytes) by tag or digest. Returns its bytes and
    /// digest, verified against the reference's digest when it has one.
    pub async fn manifest(&self, reference: &Reference) -> Result<(Bytes, Digest), RegistryError> {
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme,
            self.host,
            reference.repository(),
            reference.digest().or(reference.tag()).unwrap_or("latest")
        );
        let accept = MANIFEST_TYPES.join(", ");
        let what = format!("the manifest of {}", reference.whole());
        let data = self
            .with_retries("fetching the manifest", || {
                self.get_small(&url, Some(&accept), MAX_MANIFEST, &what)
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

    /// Downloads an image config (at most [`MAX_CONFIG`] bytes, checked against the size its descriptor
    /// declares before anything is allocated), verified.
    pub async fn blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, RegistryError> {
        limits::check_declared(size, MAX_CONFIG).map_err(|limit| {
            self.too_large(
                &format!("the image config {digest} of {}", self.reference.whole()),
                limit,
            )
        })?;
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
                let resp = req.send().await.map_err(|e| self.request_error(e))?;
                let status = resp.status().as_u16();
                retry_after = header_retry_after(&resp);
                let mut skip = match status {
                    200 => offset,
                    206 => 0,
                    401 if !reauthed => {
                        return Err(RegistryError::Status {
                            registry: self.host.clone(),
                            url: url.clone(),
                            status: 401,
                            message: "token expired".into(),
                            retry_after: None,
                        });
                    }
                    404 => {
                        return Err(RegistryError::NotFound {
                            registry: self.host.clone(),
                            reference: self.reference.whole(),
                            message: format!("blob {digest} ({url})"),
                        })
                    }
                    s => {
                        let body = error_body(resp).await;
                        return Err(self.status_error(s, &url, &body, retry_after));
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
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
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

    #[test]
    fn parses_bearer_challenges() {
        let c = bearer_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="x""#)
            .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert!(bearer_challenge(r#"Basic realm="registry""#).is_none());
        assert!(bearer_challenge("Bearer service=\"no realm\"").is_none());
    }

    #[test]
    fn error_bodies_become_messages() {
        let (msg, env) =
            error_text(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#);
        assert_eq!(msg, "ManifestUnknown: manifest unknown");
        assert!(env.is_some());
        let (msg, env) = error_text("  not json\n".repeat(100).as_bytes());
        assert_eq!(msg.chars().count(), 300);
        assert!(env.is_none());
    }

    #[test]
    fn a_client_is_built_with_or_without_system_roots() {
        install_crypto_provider();
        let (roots, _) = root_certificates(vec![]);
        assert!(!roots.is_empty(), "the system's roots or Mozilla's");
        http_client(Some(roots)).unwrap();
        http_client(None).unwrap();
    }
}
