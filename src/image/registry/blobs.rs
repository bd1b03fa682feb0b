//! Fetching blobs: an image config read whole (within [`MAX_CONFIG`] bytes, verified here), and a layer blob
//! streamed in order, exactly once per byte, resumed after a dropped connection from the received offset. The
//! layer's consumer verifies it.

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::answers::{chain, error_body, header_retry_after};
use super::retry::{backoff, MAX_ATTEMPTS};
use super::{Registry, RegistryError};
use crate::digest::Digest;
use crate::image::limits::{self, MAX_CONFIG};

impl Registry {
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
            // At most MAX_CONFIG (checked above): only a capacity hint.
            let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            while let Some(chunk) = rx.recv().await {
                out.extend_from_slice(&chunk);
            }
            out
        };
        let (res, data) = tokio::join!(fetch, collect);
        res?;
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(RegistryError::BlobDigest {
                registry: self.host.clone(),
                expected: digest.clone(),
                actual,
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
                        // At most the chunk's length, so it fits in usize.
                        let n = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
                        chunk = chunk.slice(n..);
                        skip -= n as u64;
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
