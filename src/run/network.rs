//! `--network none`: a network namespace with only loopback, up (as `docker run --network none` gives), made by a
//! forked child and bound to a file in the run directory for the spec to join. With the host network (the
//! default) there is nothing to make.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
    crate::sys::safe_fs::create_new(path, 0o600).map_err(io_error("create the network namespace file"))?;
    // Everything the child needs is made here: it must not allocate.
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io_error("name the network namespace file")(std::io::Error::other(e)))?;
    let fail = |source| RunError::Io {
        what: "set up --network none".into(),
        source,
    };
    // SAFETY: drun may have other threads (the cgroup warm-up thread), so the child keeps to what
    // `sys::fork::fork_child` requires of it: plain system calls (unshare, mount, socket, ioctl, write) on values
    // prepared before the fork, no allocation, no lock, no panic.
    let child = unsafe {
        crate::sys::fork::fork_child(|report| {
            if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
                report.errno("create a network namespace", e);
                return 1;
            }
            if let Err(e) = nix::mount::mount(
                Some(c"/proc/self/ns/net"),
                target.as_c_str(),
                None::<&std::ffi::CStr>,
                nix::mount::MsFlags::MS_BIND,
                None::<&std::ffi::CStr>,
            ) {
                report.errno("bind the network namespace", e);
                return 1;
            }
            if let Err(e) = loopback_up() {
                report.errno(
                    "bring up loopback",
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                );
                return 1;
            }
            0
        })
    }
    .map_err(|e| fail(std::io::Error::other(e)))?;
    let exit = child.wait().map_err(|e| fail(std::io::Error::other(e)))?;
    if exit.succeeded() {
        Ok(())
    } else {
        Err(fail(std::io::Error::other(exit.describe())))
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
