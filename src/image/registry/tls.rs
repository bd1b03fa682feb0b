//! TLS and the scheme: which certificates a registry's is verified against (the system's, the configured
//! `ca_files`, Mozilla's on a host without any), the HTTP client built on them, and whether a registry is spoken
//! to over HTTPS or, where allowed and the server does not speak TLS, plain HTTP. An untrusted certificate is an
//! error that says how to fix it, never a fallback to HTTP.

use std::time::Duration;

use super::answers::chain;
use super::config::Config;
use super::RegistryError;
use crate::image::limits;

const CA_FILES_HINT: &str =
    "add the registry's CA certificate to `ca_files` in /etc/drun/config.toml (or ~/.config/drun/config.toml)";

/// Whether a request error's text says a certificate was not trusted.
pub(super) fn is_cert_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("certificate") || m.contains("unknownissuer") || m.contains("unknown issuer")
}

/// The `ca_files` that apply to `host`, read (within [`limits::MAX_CA_FILE`]) and parsed.
fn load_certs(cfg: &Config, host: &str) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let mut certs = Vec::new();
    for path in cfg.ca_files.iter().chain(cfg.registry(host).ca_files.iter()) {
        let pem =
            limits::read_file_capped(path, limits::MAX_CA_FILE, true).map_err(|source| RegistryError::CaFile {
                path: path.clone(),
                source,
            })?;
        let found = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| RegistryError::CaFileContent {
            path: path.clone(),
            source,
        })?;
        if found.is_empty() {
            return Err(RegistryError::CaFileEmpty { path: path.clone() });
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

/// An HTTP client that trusts `roots`, or verifies nothing (an `insecure` registry) without them.
fn http_client(roots: Option<Vec<reqwest::Certificate>>) -> Result<reqwest::Client, reqwest::Error> {
    let b = reqwest::Client::builder()
        .user_agent(concat!("drun/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60));
    let b = match roots {
        Some(roots) => b.tls_certs_only(roots),
        // An `insecure` registry: no verification, so no roots either.
        None => b.danger_accept_invalid_certs(true),
    };
    b.build()
}

/// The HTTP client for `host`, and what to tell the user about a certificate it does not trust.
pub(super) fn client_for(cfg: &Config, host: &str) -> Result<(reqwest::Client, String), RegistryError> {
    let extra = load_certs(cfg, host)?;
    let (roots, cert_hint) = if cfg.registry(host).insecure {
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
    let http = http_client(roots).map_err(|source| RegistryError::Client {
        registry: host.to_string(),
        source,
    })?;
    Ok((http, cert_hint))
}

/// `https`, or `http` where `allow_http` and the server does not speak TLS; three tries.
pub(super) async fn probe_scheme(
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

/// rustls needs one process-wide crypto provider; drun uses ring (smaller and quicker to build than aws-lc).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_built_with_or_without_system_roots() {
        install_crypto_provider();
        let (roots, _) = root_certificates(vec![]);
        assert!(!roots.is_empty(), "the system's roots or Mozilla's");
        http_client(Some(roots)).unwrap();
        http_client(None).unwrap();
    }
}
