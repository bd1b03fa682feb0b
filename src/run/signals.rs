//! Signals: those drun forwards to the container (taken through a signalfd from just before the start until the
//! clean-up; a second SIGINT within 3 s kills), and those drun ignores, given their default action while the
//! container is created so that its processes do not inherit them ignored.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::run::RunError;

/// The signals drun passes on to the container.
fn forwarded_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        s.add(sig);
    }
    s
}

/// The forwarded signals, blocked for normal delivery and read from a signalfd instead.
pub struct Forwarding {
    set: SigSet,
    fd: SignalFd,
    last_interrupt: Option<Instant>,
    interrupted: bool,
    /// What SIGTERM becomes (`--stop-signal`): drun's SIGTERM is the "stop" a daemon's `docker stop` would send.
    stop_signal: Signal,
}

impl Forwarding {
    /// Blocks the forwarded signals (only once the container's process exists, with the default mask) and opens
    /// the signalfd they are read from.
    pub fn block(stop_signal: Option<Signal>) -> Result<Forwarding, RunError> {
        let set = forwarded_signals();
        set.thread_block().map_err(|e| RunError::Io {
            what: "block signals".into(),
            source: e.into(),
        })?;
        let fd =
            SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(|e| RunError::Io {
                what: "create a signalfd".into(),
                source: e.into(),
            })?;
        Ok(Forwarding {
            set,
            fd,
            last_interrupt: None,
            interrupted: false,
            stop_signal: stop_signal.unwrap_or(Signal::SIGTERM),
        })
    }

    /// The signalfd, readable when a signal is pending.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Forwards every pending signal to the container's init `pid`; SIGWINCH instead resizes the container's
    /// terminal (`master`), whose foreground process group the kernel tells itself.
    pub fn forward_pending(&mut self, pid: Pid, master: Option<&OwnedFd>) {
        while let Ok(Some(si)) = self.fd.read_signal() {
            let Some(sig) = i32::try_from(si.ssi_signo).ok().and_then(|n| Signal::try_from(n).ok()) else {
                continue;
            };
            if sig == Signal::SIGWINCH {
                if let Some(m) = master {
                    crate::run::tty::copy_window_size(m.as_fd());
                    continue;
                }
            }
            let now = Instant::now();
            let forced =
                sig == Signal::SIGINT && self.last_interrupt.is_some_and(|t| now.duration_since(t).as_secs() < 3);
            if sig == Signal::SIGINT {
                self.last_interrupt = Some(now);
            }
            self.interrupted |= matches!(sig, Signal::SIGINT | Signal::SIGTERM);
            let send = match sig {
                _ if forced => Signal::SIGKILL,
                Signal::SIGTERM => self.stop_signal,
                _ => sig,
            };
            tracing::debug!(signal = %sig, forwarded = %send, "forwarding a signal to the container");
            let _ = kill(pid, send);
        }
    }

    /// Whether SIGINT or SIGTERM was forwarded.
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// Takes the signals that came after the container exited (unblocked, they would kill drun before it cleans
    /// up); true if one was SIGINT or SIGTERM.
    pub fn take_late_interrupt(&self) -> bool {
        let mut late = false;
        while let Ok(Some(si)) = self.fd.read_signal() {
            late |= matches!(i32::try_from(si.ssi_signo), Ok(libc::SIGINT | libc::SIGTERM));
        }
        late
    }

    /// Delivers the forwarded signals normally again.
    pub fn unblock(&self) {
        let _ = self.set.thread_unblock();
    }
}

/// Signals drun ignores, set to their default action for as long as this lives, then ignored again.
pub struct DefaultSignals(Vec<(Signal, nix::sys::signal::SigAction)>);

impl DefaultSignals {
    /// The container's processes inherit ignored signals across exec: drun's own SIGPIPE (ignored by Rust) or a
    /// SIGINT ignored by the shell that started drun in the background would reach them. Docker gives defaults.
    pub fn set() -> DefaultSignals {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
        let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        let mut changed = Vec::new();
        for sig in Signal::iterator().filter(|s| ![Signal::SIGKILL, Signal::SIGSTOP].contains(s)) {
            // SAFETY: sigaction is plain old data; all-zero is a valid value, filled in by the call below.
            let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: a null new action only reads the current one into `cur`, which outlives the call.
            let ignored = unsafe { libc::sigaction(sig as libc::c_int, std::ptr::null(), &mut cur) } == 0
                && cur.sa_sigaction == libc::SIG_IGN;
            if ignored {
                // SAFETY: installing SIG_DFL runs no code of ours in a signal context; `drop` puts the old one back.
                if let Ok(old) = unsafe { sigaction(sig, &dfl) } {
                    changed.push((sig, old));
                }
            }
        }
        DefaultSignals(changed)
    }
}

impl Drop for DefaultSignals {
    fn drop(&mut self) {
        for (sig, old) in &self.0 {
            // SAFETY: restores the action `set` saved, which was installed before: no handler of ours is new.
            let _ = unsafe { nix::sys::signal::sigaction(*sig, old) };
        }
    }
}
