//! One request's answer: bodies read within a cap (a larger declared length refused before anything is read),
//! error answers turned into [`RegistryError`]s from their status and the registry's error body, and failed
//! requests told apart (an untrusted certificate, or the registry out of reach).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use oci_client::errors::{OciEnvelope, OciErrorCode};

use super::{Registry, RegistryError};
use crate::image::limits::{self, TooLarge, MAX_ERROR_BODY};

/// Full error text of a source chain on one line (reqwest hides the useful part in its sources).
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
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

/// A response body read whole, but never more than `cap` bytes: a larger `Content-Length` is refused before
/// anything is read, and reading stops as soon as more than `cap` bytes came (a body without a length, or one
/// longer than it said).
pub(super) async fn read_capped(resp: reqwest::Response, cap: u64) -> Result<Result<Bytes, TooLarge>, reqwest::Error> {
    if let Some(n) = resp.content_length() {
        if let Err(e) = limits::check_declared(n, cap) {
            return Ok(Err(e));
        }
    }
    // At most `cap` (checked above): only a capacity hint.
    let mut out = BytesMut::with_capacity(usize::try_from(resp.content_length().unwrap_or(0)).unwrap_or(0));
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
pub(super) async fn error_body(resp: reqwest::Response) -> Bytes {
    let cap = usize::try_from(MAX_ERROR_BODY).unwrap_or(usize::MAX);
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = cap - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
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

/// The `Retry-After` of an answer, in seconds (the HTTP-date form is not used by registries).
pub(super) fn header_retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl Registry {
    /// A failed request (no answer): an untrusted certificate, or the registry out of reach.
    pub(super) fn request_error(&self, e: reqwest::Error) -> RegistryError {
        let message = chain(&e);
        if super::tls::is_cert_error(&message) {
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

    pub(super) fn too_large(&self, what: &str, limit: TooLarge) -> RegistryError {
        RegistryError::TooLarge {
            registry: self.host.clone(),
            what: what.to_string(),
            limit,
        }
    }

    /// The error for a non-success answer `status` to `url`, from its (bounded) body.
    pub(super) fn status_error(
        &self,
        status: u16,
        url: &str,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> RegistryError {
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
    pub(super) async fn get_small(
        &self,
        url: &str,
        accept: Option<&str>,
        cap: u64,
        what: &str,
    ) -> Result<Bytes, RegistryError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
