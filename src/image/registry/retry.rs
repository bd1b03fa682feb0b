//! Which registry failures are retried and when: connection errors, 429 and 5xx answers, with exponential backoff
//! or the server's `Retry-After`, at most [`MAX_ATTEMPTS`] times.

use std::time::Duration;

use super::{Registry, RegistryError};

/// Tries of one request (or, for a blob download, of one stretch without progress).
pub(super) const MAX_ATTEMPTS: u32 = 8;

impl RegistryError {
    /// Whether trying again may help: the registry was out of reach, overloaded or failing.
    pub(super) fn retryable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// How long the registry asked to wait, if it did.
    pub(super) fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Exponential backoff from 250 ms, capped at 10 s; a server's `Retry-After` wins (capped at 60 s).
pub(super) fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(d) = retry_after {
        return d.min(Duration::from_secs(60));
    }
    Duration::from_millis(250u64 << attempt.min(6)).min(Duration::from_secs(10))
}

impl Registry {
    /// Runs `f` until it succeeds, fails in a way that is not retried, or [`MAX_ATTEMPTS`] tries are spent;
    /// `what` names the request in the log.
    pub(super) async fn with_retries<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RegistryError>
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
