//! While the container runs: drun waits for its init, forwards signals to it (`signals`), copies its output
//! (`output`) and, with a terminal, copies between drun's stdio and the container's pty master (`tty`).

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::run::output::{drain, Output};
use crate::run::signals::Forwarding;
use crate::run::{Outcome, RunError};

/// Forwards signals to the container's init `pid` until it exits and returns how it ended. With a terminal
/// (`master`), copies between drun's stdio (stdin only when `interactive`) and the container's pty.
pub fn supervise(
    pid: Pid,
    signals: &mut Forwarding,
    master: Option<&OwnedFd>,
    interactive: bool,
    output: &mut Output,
) -> Result<Outcome, RunError> {
    let mut master_open = master.is_some();
    let mut stdin_open = master.is_some() && interactive;
    // One File over the master for both directions (reads and writes on a pty master are independent).
    let mut term = master.map(|m| File::from(m.try_clone().expect("dup the terminal")));
    let pidfd = pidfd_open(pid);
    let wait_error = |source| RunError::Io {
        what: "wait for the container".into(),
        source,
    };
    loop {
        let stdin = std::io::stdin();
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if let Some(p) = &pidfd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        let tty_at = fds.len();
        if let (Some(m), true) = (master, master_open) {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
        }
        let stdin_at = fds.len();
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        // The output pipes, stdout's then stderr's: each copied only when poll says so (arrival order, `output`).
        let out_fds = output.fds();
        let mut out_at = [None, None];
        for (slot, fd) in out_at.iter_mut().zip(out_fds) {
            if let Some(fd) = fd {
                *slot = Some(fds.len());
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        // Without a pidfd (Linux < 5.3) nothing wakes the poll when the init exits: it looks every 100 ms.
        let timeout = if pidfd.is_some() {
            PollTimeout::NONE
        } else {
            PollTimeout::from(100u16)
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(wait_error(e.into())),
        }
        let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        let (tty_ready, stdin_ready) = (master_open && ready(tty_at), stdin_open && ready(stdin_at));
        let out_ready = out_at.map(|at| at.is_some_and(ready));
        drop(fds);
        output.pump_ready(out_ready);
        if tty_ready {
            master_open = crate::run::tty::pump(term.as_mut().expect("master is open"), &mut output.sink);
        }
        if stdin_ready {
            if let Some(w) = term.as_mut() {
                stdin_open = crate::run::tty::pump(&mut stdin.lock(), w);
            }
        }
        signals.forward_pending(pid, master);
        let code = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => code,
            Ok(WaitStatus::Signaled(_, sig, _)) => crate::exit::from_signal(sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::ECHILD) => {
                return Err(wait_error(std::io::Error::other("its process is not drun's child")))
            }
            Err(e) => return Err(wait_error(e.into())),
        };
        drain(master, master_open, &mut output.sink);
        output.pump();
        return Ok(Outcome {
            code,
            interrupted: signals.interrupted(),
        });
    }
}

/// A descriptor that becomes readable when `pid` (drun's child) exits; `None` where the kernel has no pidfds.
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes no pointers; a non-negative result is a new descriptor, owned below.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = i32::try_from(raw).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
