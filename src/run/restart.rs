//! `--restart on-failure:N`, as Docker's daemon does it: after a non-zero exit the same container (same id, name,
//! writable layer, log and cgroup limits) is started again, at most N times, after a back-off of 100 ms that
//! doubles with each restart (at most a minute) and starts over once the container ran for 10 s. The drun that
//! supervises the container (the foreground drun, or a detached run's monitor) does it, so nothing is restarted
//! once that drun is gone.
//!
//! A container that was stopped on purpose is not restarted: SIGINT or SIGTERM to its supervisor, or `drun stop`
//! and `drun kill`, which leave a mark in the run directory ([`request_stop`]) before they signal it.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::plan::RestartPolicy;
use crate::run::signals::Forwarding;

/// The mark `drun stop` and `drun kill` leave in the run directory.
const STOP_MARK: &str = "stop-requested";

/// Docker's first back-off, doubled with every restart.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Docker's longest back-off.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A container that ran this long starts the back-off over, as Docker's does.
const RESET_AFTER: Duration = Duration::from_secs(10);

/// Marks the run in `dir` as stopped on purpose: its supervisor does not restart it. The run directory is its
/// owner's (private), so only its owner's drun can mark it.
pub fn request_stop(dir: &Path) {
    match crate::sys::safe_fs::write_new(&dir.join(STOP_MARK), b"", 0o600) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => tracing::debug!(error = %e, "cannot mark the container as stopped on purpose"),
    }
}

/// Whether `drun stop` or `drun kill` marked the run in `dir` ([`request_stop`]).
pub fn stop_requested(dir: &Path) -> bool {
    dir.join(STOP_MARK).symlink_metadata().is_ok()
}

/// The restarts of one run: how many so far, and the back-off before the next.
pub struct Restarts {
    policy: RestartPolicy,
    pub count: u32,
    /// SIGINT or SIGTERM came during a back-off: the run was interrupted.
    pub interrupted: bool,
    delay: Duration,
    started: Instant,
}

impl Restarts {
    pub fn new(policy: RestartPolicy) -> Restarts {
        Restarts {
            policy,
            count: 0,
            interrupted: false,
            delay: FIRST_DELAY,
            started: Instant::now(),
        }
    }

    /// The container (re)started now.
    pub fn started(&mut self) {
        self.started = Instant::now();
    }

    /// Whether the container that exited with `code` (`interrupted`: its supervisor was told to end it) is
    /// started again; counts the restart. Its run directory is `dir`.
    pub fn again(&mut self, code: i32, interrupted: bool, dir: &Path) -> bool {
        let RestartPolicy::OnFailure(max) = self.policy else {
            return false;
        };
        if code == 0 || interrupted || self.count >= max || stop_requested(dir) {
            return false;
        }
        if self.started.elapsed() >= RESET_AFTER {
            self.delay = FIRST_DELAY;
        }
        self.count += 1;
        true
    }

    /// The back-off before this restart; doubles the next one's.
    fn next_delay(&mut self) -> Duration {
        let now = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        now
    }

    /// Waits out the back-off before the next start; false when a signal (`signals`, still blocked and read
    /// from their signalfd) or `drun stop` says not to start it again.
    pub fn back_off(&mut self, signals: &Forwarding, dir: &Path) -> bool {
        let until = Instant::now() + self.next_delay();
        loop {
            if signals.take_late_interrupt() {
                self.interrupted = true;
                return false;
            }
            if stop_requested(dir) {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            // Woken by a signal at once; `drun stop`'s mark is looked at every 50 ms.
            let slice = left.min(Duration::from_millis(50));
            let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(slice.as_millis()).unwrap_or(50).max(1);
            let _ = poll(&mut fds, PollTimeout::from(ms));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods, reason = "test scaffolding in a temporary directory")]

    use super::*;

    #[test]
    fn restarts_only_failures_up_to_the_maximum_and_not_after_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Restarts::new(RestartPolicy::OnFailure(2));
        assert!(!r.again(0, false, dir.path()), "a success is not restarted");
        assert!(
            !r.again(1, true, dir.path()),
            "an interrupted container is not restarted"
        );
        assert!(r.again(1, false, dir.path()));
        assert!(r.again(137, false, dir.path()));
        assert!(!r.again(1, false, dir.path()), "at most two restarts");
        assert_eq!(r.count, 2);
        let mut r = Restarts::new(RestartPolicy::OnFailure(5));
        request_stop(dir.path());
        request_stop(dir.path());
        assert!(!r.again(1, false, dir.path()), "stopped on purpose");
        assert!(!Restarts::new(RestartPolicy::No).again(1, false, tempfile::tempdir().unwrap().path()));
    }

    #[test]
    fn the_back_off_doubles_up_to_a_minute() {
        let mut r = Restarts::new(RestartPolicy::OnFailure(100));
        let mut delays = Vec::new();
        for _ in 0..12 {
            delays.push(r.next_delay());
        }
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[3], Duration::from_millis(800));
        assert_eq!(delays[11], MAX_DELAY);
        // A container that ran for 10 s starts the back-off over.
        r.started -= RESET_AFTER;
        assert!(r.again(1, false, tempfile::tempdir().unwrap().path()));
        assert_eq!(r.next_delay(), FIRST_DELAY);
    }
}
