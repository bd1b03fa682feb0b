//! `--network none`: a network namespace with only loopback, up (as `docker run --network none` gives), made by a
//! forked child and bound to a file in the run directory for the spec to join. With the host network (the
//! default) there is nothing to make.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::wait::{waitpid, WaitStatus};

use crate::plan::{NetworkMode, RunPlan};
use crate::run::{io_error, RunError};

/// `IFF_UP` (1) as the `c_short` of `ifreq.ifr_flags`.
#[allow(clippy::cast_possible_truncation)] // IFF_UP is 1
const IFF_UP: libc::c_short = libc::IFF_UP as libc::c_short;

/// The network namespace the container joins: `Some(path)` for `--network none` (made at `run_dir/netns`),
/// `None` for the host's.
pub fn prepare(plan: &RunPlan, run_dir: &Path) -> Result<Option<PathBuf>, RunError> {
    if plan.network != NetworkMode::None {
        return Ok(None);
    }
    let path = run_dir.join("netns");
    make_netns(&path)?;
    Ok(Some(path))
}

/// A network namespace with only loopback, up, bound to `path`. Made in a forked child, which shares drun's mount
/// namespace: drun itself never leaves the host's network namespace (rootless, it could not return to it).
fn make_netns(path: &Path) -> Result<(), RunError> {
    use nix::sched::{unshare, CloneFlags};
    crate::safe_fs::create_new(path, 0o600).map_err(io_error("create the network namespace file"))?;
    // Everything the child needs is made here: it must not allocate.
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io_error("name the network namespace file")(std::io::Error::other(e)))?;
    let (r, w) = nix::unistd::pipe().map_err(|e| io_error("create a pipe")(e.into()))?;
    // SAFETY: drun may have other threads (the cgroup warm-up thread), so until it exits the child may only call
    // async-signal-safe functions (fork(2), signal-safety(7)): it makes plain system calls (unshare, mount,
    // socket, ioctl, write, close) on values prepared before the fork, allocates nothing, takes no lock and
    // leaves with _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| io_error("fork")(e.into()))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let step = (|| -> Result<(), (&'static str, nix::errno::Errno)> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("create a network namespace", e))?;
                nix::mount::mount(
                    Some(c"/proc/self/ns/net"),
                    target.as_c_str(),
                    None::<&std::ffi::CStr>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&std::ffi::CStr>,
                )
                .map_err(|e| ("bind the network namespace", e))?;
                loopback_up().map_err(|e| {
                    (
                        "bring up loopback",
                        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    )
                })
            })();
            let code = match step {
                Ok(()) => 0,
                Err((what, e)) => {
                    for part in [what, ": ", e.desc()] {
                        let _ = nix::unistd::write(w.as_fd(), part.as_bytes());
                    }
                    1
                }
            };
            // SAFETY: _exit(2) is async-signal-safe and ends the child without running drun's destructors or
            // exit handlers, which could wait for locks another thread held at the fork.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let status = waitpid(child, None);
            let mut msg = String::new();
            let _ = std::io::Read::read_to_string(&mut File::from(r), &mut msg);
            match status {
                Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                _ => Err(RunError::Io {
                    what: "set up --network none".into(),
                    source: std::io::Error::other(if msg.is_empty() {
                        "the helper process failed".into()
                    } else {
                        msg
                    }),
                }),
            }
        }
    }
}

/// Brings up `lo` in the calling process's network namespace. Allocates nothing (it runs in a fork child).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket(2) takes no pointers; the descriptor it returns is checked, then owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed, which outlives the calls; `ifru_flags` is
    // the union member SIOCGIFFLAGS fills in.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= IFF_UP;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
