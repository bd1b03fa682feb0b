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
//! manifests and blobs. Every body is read through `answers::read_capped` (see [`crate::image::limits`]).
//!
//! TLS connections are verified against the system's CA certificates (as `rustls-native-certs` finds them), the
//! `ca_files` of the configuration, and — only on a host without any CA certificates, as minimal CI images
//! are — Mozilla's root certificates from `webpki-root-certs`. Nothing about certificates can fail a pull from a
//! plain-HTTP registry.
//!
//! The files: `config.rs` (the registry configuration), `tls.rs` (certificates, the client, HTTPS or HTTP),
//! `token.rs` (credentials into an `Authorization` header: the token dance), `answers.rs` (one request's answer:
//! bounded bodies, errors from status codes), `retry.rs` (which failures are retried, and when), `manifests.rs`
//! (fetching a manifest or index), `blobs.rs` (fetching a config, streaming a layer blob with resumption).

mod answers;
mod blobs;
pub mod config;
mod manifests;
mod retry;
mod tls;
mod token;

use std::time::Duration;

use oci_client::Reference;

pub use manifests::MANIFEST_TYPES;
pub use tls::install_crypto_provider;
pub use token::TokenAnswerError;

use crate::digest::Digest;
use crate::image::auth::{credentials_for, AuthError, Credentials};
use crate::image::limits::{self, TooLarge};
use config::Config;

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
    #[error("cannot build an HTTP client for {registry}")]
    Client { registry: String, source: reqwest::Error },
    #[error("invalid token answer from {realm:?} for {registry}")]
    TokenAnswer {
        registry: String,
        realm: String,
        source: TokenAnswerError,
    },
    #[error("invalid manifest for {reference} from {registry}: its digest is {actual}, expected {expected}")]
    ManifestDigest {
        registry: String,
        reference: String,
        expected: String,
        actual: Digest,
    },
    #[error("invalid blob {expected} from {registry}: its content hashes to {actual}")]
    BlobDigest {
        registry: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("cannot read the CA certificate file {path:?}")]
    CaFile {
        path: std::path::PathBuf,
        source: limits::ReadError,
    },
    #[error("invalid CA certificate file {path:?}: expected PEM certificates")]
    CaFileContent {
        path: std::path::PathBuf,
        source: reqwest::Error,
    },
    #[error("invalid CA certificate file {path:?}: there is no PEM certificate in it")]
    CaFileEmpty { path: std::path::PathBuf },
    #[error("blob {digest} from {registry}: expected {expected} bytes, got {got}")]
    SizeMismatch {
        registry: String,
        digest: Digest,
        expected: u64,
        got: u64,
    },
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

impl Registry {
    /// Chooses HTTPS or (for loopback and `insecure` registries, when the server does not speak TLS) plain HTTP,
    /// reads the user's credentials and authenticates for pulling `reference`.
    pub async fn connect(cfg: &Config, reference: &Reference) -> Result<Registry, RegistryError> {
        install_crypto_provider();
        let host = reference.resolve_registry().to_string();
        let (http, cert_hint) = tls::client_for(cfg, &host)?;
        let scheme = tls::probe_scheme(&http, &host, cfg.allows_http(&host), &cert_hint).await?;
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
}
