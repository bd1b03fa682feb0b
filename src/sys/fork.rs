//! Forking a child that makes a few system calls and reports back through a pipe: the one place drun calls
//! fork(2). A child never returns into the parent's code: it always ends in `_exit(2)`. The rules a child keeps
//! are written once in [`crate::sys`].

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

/// The most of a child's report the parent keeps (the rest is read and dropped, so the child never blocks).
const REPORT_CAP: usize = 64 << 10;

/// The exit status of a child whose code panicked instead of returning a status (a bug: see [`fork_child`]).
const CHILD_PANICKED: i32 = 70;

/// Whether this process has exactly one thread now (counted in `/proc/self/task`). `false` when it cannot tell.
pub fn is_single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("cannot create the pipe a child process reports through")]
    Pipe(#[source] Errno),
    #[error("cannot fork a child process")]
    Fork(#[source] Errno),
    #[error("cannot wait for child process {pid}")]
    Wait {
        pid: Pid,
        #[source]
        source: Errno,
    },
    #[error("cannot read the report of child process {pid}")]
    Report {
        pid: Pid,
        #[source]
        source: io::Error,
    },
}

/// The write end of the pipe a forked child reports through; the parent reads it when it waits. Writing
/// allocates nothing and takes no lock.
#[derive(Debug)]
pub struct ChildReport {
    fd: OwnedFd,
}

impl ChildReport {
    /// Writes `parts` one after the other. A failed write is dropped: the exit status still tells the parent.
    pub fn write(&self, parts: &[&str]) {
        for part in parts {
            let mut bytes = part.as_bytes();
            while !bytes.is_empty() {
                match nix::unistd::write(self.fd.as_fd(), bytes) {
                    Ok(0) => return,
                    Ok(n) => bytes = &bytes[n..],
                    Err(Errno::EINTR) => {}
                    Err(_) => return,
                }
            }
        }
    }

    /// Writes `step: <what the errno means>`.
    pub fn errno(&self, step: &str, errno: Errno) {
        self.write(&[step, ": ", errno.desc()]);
    }
}

/// How a child ended and what it reported.
#[derive(Debug)]
pub struct ChildExit {
    pub status: WaitStatus,
    /// What the child wrote to its [`ChildReport`] (lossy UTF-8, at most 64 KiB).
    pub report: String,
    /// Whether it was killed for running past the time limit of [`ForkedChild::wait_within`].
    pub timed_out: bool,
}

impl ChildExit {
    /// Whether the child exited with status 0.
    pub fn succeeded(&self) -> bool {
        !self.timed_out && matches!(self.status, WaitStatus::Exited(_, 0))
    }

    /// The child's report, or how it ended when it said nothing.
    pub fn describe(&self) -> String {
        let report = self.report.trim();
        if !report.is_empty() {
            return report.to_string();
        }
        match self.status {
            WaitStatus::Exited(_, code) => format!("it exited with status {code} without a message"),
            WaitStatus::Signaled(_, signal, _) => format!("it was killed by {signal}"),
            other => format!("it ended as {other:?}"),
        }
    }
}

/// A forked child not yet waited for. Dropped without [`wait`](Self::wait), it is killed and reaped.
#[derive(Debug)]
pub struct ForkedChild {
    pid: Pid,
    report: Option<File>,
    reaped: bool,
}

/// Forks. The child runs `child` and `_exit`s with the status it returns; the parent gets the child to wait for.
/// `child` may write what went wrong to the [`ChildReport`] it is given.
///
/// # Safety
///
/// `child` runs in the forked copy of this process, where only the calling thread exists. The caller guarantees
/// one of (see [`crate::sys`]):
/// - `child` calls only async-signal-safe functions (signal-safety(7)): raw system calls, no allocation, no lock,
///   no panic; or
/// - this process has a single thread now ([`is_single_threaded`] said so, and nothing has started one since), so
///   the child is a complete copy and may allocate and spawn processes.
///
/// Either way the descriptors `child` uses stay open until it ends, and it never returns into the caller's frames
/// (this function `_exit`s for it, also should it panic).
pub unsafe fn fork_child<F: FnOnce(&ChildReport) -> i32>(child: F) -> Result<ForkedChild, ForkError> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ForkError::Pipe)?;
    // SAFETY: the caller guarantees that `child` keeps to what a child of this process may do (see above); the
    // child below runs nothing else but `drop` of a descriptor (close(2)) before `_exit(2)`.
    match unsafe { nix::unistd::fork() }.map_err(ForkError::Fork)? {
        ForkResult::Child => {
            drop(read);
            let guard = ExitOnUnwind;
            let code = child(&ChildReport { fd: write });
            std::mem::forget(guard);
            // SAFETY: _exit(2) is async-signal-safe and ends the child without the parent's atexit handlers,
            // destructors or stdio buffers (copies of the parent's), as fork(2) requires.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write);
            Ok(ForkedChild {
                pid: child,
                report: Some(File::from(read)),
                reaped: false,
            })
        }
    }
}

/// Ends a forked child whose code unwinds (a panic), instead of letting it unwind into the parent's frames.
struct ExitOnUnwind;

impl Drop for ExitOnUnwind {
    fn drop(&mut self) {
        // SAFETY: only reached in the forked child while it unwinds; _exit(2) ends it at once (see `fork_child`).
        unsafe { libc::_exit(CHILD_PANICKED) }
    }
}

impl ForkedChild {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits for the child to end: its report is read to its end (the child closing the pipe, by exiting or by
    /// an exec, as it is close-on-exec), then its status.
    pub fn wait(mut self) -> Result<ChildExit, ForkError> {
        self.finish(None)
    }

    /// As [`wait`](Self::wait), but past `limit` the child is killed with SIGKILL and reaped
    /// ([`ChildExit::timed_out`]).
    pub fn wait_within(mut self, limit: Duration) -> Result<ChildExit, ForkError> {
        self.finish(Some(Instant::now() + limit))
    }

    fn finish(&mut self, deadline: Option<Instant>) -> Result<ChildExit, ForkError> {
        let pid = self.pid;
        let bytes = match self.report.take() {
            Some(file) => read_report(file, deadline).map_err(|source| ForkError::Report { pid, source })?,
            None => Vec::new(),
        };
        let (status, timed_out) = match deadline {
            None => (wait_blocking(pid)?, false),
            Some(deadline) => wait_until(pid, deadline)?,
        };
        self.reaped = true;
        Ok(ChildExit {
            status,
            report: String::from_utf8_lossy(&bytes).into_owned(),
            timed_out,
        })
    }
}

impl Drop for ForkedChild {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = wait_blocking(self.pid);
        }
    }
}

/// Reads the report pipe until every writer closed it (or `deadline`), keeping at most [`REPORT_CAP`] bytes.
fn read_report(mut file: File, deadline: Option<Instant>) -> io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    if let Some(deadline) = deadline {
        let fd = file.as_fd();
        let flags = OFlag::from_bits_retain(nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?);
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(kept);
            }
            let timeout = nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
            let mut fds = [nix::poll::PollFd::new(file.as_fd(), nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            match file.read(&mut chunk) {
                Ok(0) => return Ok(kept),
                Ok(n) => keep(&mut kept, &chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            }
        }
    }
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(kept),
            Ok(n) => keep(&mut kept, &chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn keep(kept: &mut Vec<u8>, bytes: &[u8]) {
    let room = REPORT_CAP.saturating_sub(kept.len());
    kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Waits for `pid` to end (an exit or a fatal signal).
fn wait_blocking(pid: Pid) -> Result<WaitStatus, ForkError> {
    loop {
        match waitpid(pid, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(status),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(source) => return Err(ForkError::Wait { pid, source }),
        }
    }
}

/// Waits for `pid` to end until `deadline`; then kills it and reaps it (`true`: it timed out).
fn wait_until(pid: Pid, deadline: Instant) -> Result<(WaitStatus, bool), ForkError> {
    let mut pause = Duration::from_millis(1);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok((status, false)),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(source) => return Err(ForkError::Wait { pid, source }),
        }
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            return Ok((wait_blocking(pid)?, true));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_reports_and_exits_with_its_status() {
        let in_child = |report: &ChildReport| {
            report.write(&["step", " went wrong"]);
            report.errno(" because", Errno::ENOENT);
            3
        };
        // SAFETY: the child only writes to its report pipe (write(2)) and returns a status.
        let child = unsafe { fork_child(in_child) }.unwrap();
        let exit = child.wait().unwrap();
        assert!(matches!(exit.status, WaitStatus::Exited(_, 3)), "{exit:?}");
        assert!(!exit.succeeded());
        assert_eq!(exit.report, "step went wrong because: No such file or directory");
        assert_eq!(exit.describe(), exit.report);
    }

    #[test]
    fn a_silent_success_and_a_silent_failure() {
        // SAFETY: the child returns a status and nothing else.
        let exit = unsafe { fork_child(|_| 0) }.unwrap().wait().unwrap();
        assert!(exit.succeeded() && exit.report.is_empty(), "{exit:?}");
        // SAFETY: as above.
        let exit = unsafe { fork_child(|_| 9) }.unwrap().wait().unwrap();
        assert_eq!(exit.describe(), "it exited with status 9 without a message");
    }

    /// A child that waits for a signal.
    fn pause(_: &ChildReport) -> i32 {
        // SAFETY: pause(2) takes no argument and is async-signal-safe.
        unsafe { libc::pause() };
        0
    }

    #[test]
    fn a_child_past_its_limit_is_killed() {
        let start = Instant::now();
        // SAFETY: the child only calls pause(2), which is async-signal-safe (and never returns here: it is killed).
        let child = unsafe { fork_child(pause) }.unwrap();
        let exit = child.wait_within(Duration::from_millis(50)).unwrap();
        assert!(exit.timed_out && !exit.succeeded(), "{exit:?}");
        assert!(
            matches!(exit.status, WaitStatus::Signaled(_, Signal::SIGKILL, _)),
            "{exit:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_dropped_child_is_killed_and_reaped() {
        // SAFETY: as above.
        let child = unsafe { fork_child(pause) }.unwrap();
        let pid = child.pid();
        drop(child);
        assert_eq!(waitpid(pid, Some(WaitPidFlag::WNOHANG)), Err(Errno::ECHILD));
    }
}
