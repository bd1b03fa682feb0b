//! Runs as `drun ps -a`, `logs`, `wait`, `stop` and `rm` see them, through the state directory and run locks only:
//! running (the lock held by the drun or the monitor that supervises it) or ended (a detached run's record, kept
//! until `drun rm`), found by name or id prefix; waiting for one to end, signalling and removing one.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::run::state::{self, ExitRecord, RunInfo};

/// One run of the state directory.
#[derive(Clone, Debug)]
pub struct Run {
    pub info: RunInfo,
    pub dir: PathBuf,
    /// Its supervisor was alive when it was listed.
    pub running: bool,
}

/// Why no single run was found.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no such container {0:?} (see `drun ps -a`)")]
    NotFound(String),
    #[error("{0:?} matches several containers; give more of the id")]
    Ambiguous(String),
}

/// Running and ended runs, oldest first. A run whose supervisor died (neither) is left out: `state::reap_stale`
/// deals with it.
pub fn list_all(state_dir: &Path) -> Vec<Run> {
    let mut out: Vec<Run> = state::run_dirs(state_dir)
        .into_iter()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let dir = e.path();
            let info = state::read_info(&dir)?;
            let running = info.exit.is_none() && state::is_live(&dir);
            (running || info.exit.is_some()).then_some(Run { info, dir, running })
        })
        .collect();
    out.sort_by_key(|r| r.info.started);
    out
}

/// The run named `want`, or whose id starts with it.
pub fn find(state_dir: &Path, want: &str) -> Result<Run, FindError> {
    let all = list_all(state_dir);
    // Docker's order: a full id, then a name, then an id's beginning (so a name cannot stand for another's id).
    if let Some(r) = all.iter().find(|r| r.info.id == want) {
        return Ok(r.clone());
    }
    if let Some(r) = all.iter().find(|r| r.info.name.as_deref() == Some(want)) {
        return Ok(r.clone());
    }
    let mut matches = all
        .into_iter()
        .filter(|r| !want.is_empty() && r.info.id.starts_with(want));
    match (matches.next(), matches.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(FindError::NotFound(want.to_string())),
        _ => Err(FindError::Ambiguous(want.to_string())),
    }
}

impl Run {
    /// The first 12 digits of its id.
    pub fn short_id(&self) -> &str {
        &self.info.id[..12]
    }

    /// Whether it runs now.
    pub fn is_running(&self) -> bool {
        state::read_info(&self.dir).is_some_and(|i| i.exit.is_none()) && state::is_live(&self.dir)
    }

    /// Sends `signal` to its init, if that process is still the container's (its start time says so).
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        // The init as the record names it now: a restarted container (`run::restart`) has a new one.
        let now = state::read_info(&self.dir);
        let info = now.as_ref().unwrap_or(&self.info);
        let (Some(pid), Some(start)) = (info.pid, info.pid_start) else {
            return Ok(());
        };
        if state::start_time(pid) != Some(start) {
            return Ok(());
        }
        let sig = nix::sys::signal::Signal::try_from(signal).map_err(std::io::Error::from)?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops it (nothing to do when it has ended): its stop signal, SIGKILL after `grace` (at once when zero);
    /// returns once it has ended.
    pub fn stop(&self, grace: Duration) -> std::io::Result<()> {
        // How long a SIGKILLed container may take to be reaped and cleaned up.
        const AFTER_KILL: Duration = Duration::from_secs(60);
        if !self.is_running() {
            return Ok(());
        }
        // Stopped on purpose: its supervisor does not restart it (`--restart on-failure`).
        crate::run::restart::request_stop(&self.dir);
        if !grace.is_zero() {
            self.signal(self.info.stop_signal.unwrap_or(libc::SIGTERM))?;
            if self.wait_stopped(grace) {
                return Ok(());
            }
        }
        self.signal(libc::SIGKILL)?;
        if !self.wait_stopped(AFTER_KILL) {
            return Err(std::io::Error::other(format!(
                "it still runs {}s after SIGKILL",
                AFTER_KILL.as_secs()
            )));
        }
        Ok(())
    }

    /// Waits up to `limit` for it to end; true if it did.
    pub fn wait_stopped(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !self.is_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Blocks until it ended and returns how (`None`: nobody saw it end; its monitor was killed). Its
    /// supervisor writes how it ended into the lock file before it lets go of the lock: read through this
    /// process's own descriptor, that outlasts a directory removed meanwhile (a foreground or `--rm` run).
    pub fn wait(&self, state_dir: &Path) -> Option<ExitRecord> {
        if let Some(exit) = &self.info.exit {
            return Some(exit.clone());
        }
        let lock = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.dir.join("lock"));
        if let Ok(f) = lock {
            let held = loop {
                match Flock::lock(f.try_clone().ok()?, FlockArg::LockShared) {
                    Ok(l) => break l,
                    Err((_, nix::errno::Errno::EINTR)) => continue,
                    Err(_) => return None,
                }
            };
            if let Some(exit) = state::read_exit(&held) {
                return Some(exit);
            }
        }
        // Its supervisor died without a word: clean up after it, as any drun does, which records a kept run's end.
        state::reap_stale(state_dir);
        state::read_info(&self.dir).and_then(|i| i.exit)
    }

    /// Removes what is left of it (it must have ended): its directory, and anything a crash left.
    pub fn remove(&self, state_dir: &Path) -> std::io::Result<()> {
        let lock = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(self.dir.join("lock"));
        let f = match lock {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        // Others (ps, logs) only probe the lock for a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut f = f;
        let _lock = loop {
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((back, _)) if Instant::now() < deadline => {
                    f = back;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, e)) => return Err(std::io::Error::other(format!("its run directory stays locked: {e}"))),
            }
        };
        state::cleanup(state_dir, &self.dir, Some(&self.info));
        Ok(())
    }

    /// What `drun ps` shows in its STATUS column, as Docker words it.
    pub fn status(&self, now: time::OffsetDateTime) -> String {
        if self.running {
            // Between an exit and its restart (`--restart on-failure`), the container has no process.
            if self.info.pid.is_none() && self.info.restart_count > 0 {
                return format!("Restarting ({})", self.info.restart_count);
            }
            let up = format!("Up {}", human(now - self.info.started));
            return match crate::run::health::read(&self.dir) {
                Some(h) => format!("{up} ({})", h.ps_label()),
                None => up,
            };
        }
        match &self.info.exit {
            Some(e) => {
                let ago = human(now - e.finished);
                match (e.code, e.monitor_killed) {
                    (Some(code), _) => format!("Exited ({code}) {ago} ago"),
                    (None, true) => format!("Unknown (monitor killed) {ago} ago"),
                    (None, false) => format!("Unknown {ago} ago"),
                }
            }
            None => "Unknown".to_string(),
        }
    }
}

/// A duration as Docker's `ps` says it: "Less than a second", "5 seconds", "About a minute", "3 hours" ….
fn human(d: time::Duration) -> String {
    let s = d.whole_seconds().max(0);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_dockers() {
        let h = |s| super::human(time::Duration::seconds(s));
        assert_eq!(h(0), "Less than a second");
        assert_eq!(h(5), "5 seconds");
        assert_eq!(h(90), "About a minute");
        assert_eq!(h(600), "10 minutes");
        assert_eq!(h(4000), "About an hour");
        assert_eq!(h(10_000), "2 hours");
        assert_eq!(h(3 * 86400), "3 days");
    }
}
