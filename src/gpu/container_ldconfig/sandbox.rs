//! Running the host's static `ldconfig` on the container's root: in a forked child chrooted there, as uid 0 of
//! the image without any capability and unable to gain one, with bounded memory and time. The child allocates
//! nothing between fork and exec (see [`crate::sys`]).

use std::ffi::c_char;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};

use super::LdCacheError;
use crate::sys::fork::{fork_child, ChildReport};

/// How long `ldconfig` may take: a FIFO the image names in its ld.so.conf includes would block it forever.
const LDCONFIG_TIMEOUT: Duration = Duration::from_secs(60);
/// The address space `ldconfig` may use: it maps one library at a time, but a hostile configuration file of
/// gigabytes in one line would otherwise be read into memory whole.
const LDCONFIG_MAX_ADDRESS_SPACE: u64 = 4 << 30;
/// The child's status when it could not exec ldconfig (as a shell's "command not found").
const CANNOT_EXEC: i32 = crate::exit::NOT_FOUND;

/// Runs the host's ldconfig (`exe`) chrooted in `root`, within [`LDCONFIG_TIMEOUT`].
pub(super) fn run_ldconfig(root: BorrowedFd<'_>, exe: BorrowedFd<'_>) -> Result<(), LdCacheError> {
    // All the child needs, made before the fork: it may not allocate.
    let argv: [*const c_char; 2] = [c"ldconfig".as_ptr(), std::ptr::null()];
    let envp: [*const c_char; 1] = [std::ptr::null()];
    let limit = LDCONFIG_MAX_ADDRESS_SPACE;
    let in_child = |report: &ChildReport| {
        if let Err(e) = nix::unistd::fchdir(root) {
            report.errno("cannot enter the root", e);
            return CANNOT_EXEC;
        }
        // SAFETY: chroot(2) with a NUL-terminated static path.
        if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
            report.errno("cannot chroot into the root", Errno::last());
            return CANNOT_EXEC;
        }
        if let Err(e) = setrlimit(Resource::RLIMIT_AS, limit, limit) {
            report.errno("cannot limit its address space", e);
            return CANNOT_EXEC;
        }
        if let Err(e) = drop_privileges() {
            report.errno("cannot drop its privileges", e);
            return CANNOT_EXEC;
        }
        // SAFETY: argv and envp are NULL-terminated arrays of NUL-terminated static strings, alive until the call;
        // `exe` is the open descriptor of the host's ldconfig, inherited across fork. fexecve(3) is
        // async-signal-safe.
        unsafe { libc::fexecve(exe.as_raw_fd(), argv.as_ptr(), envp.as_ptr()) };
        report.errno("cannot execute ldconfig", Errno::last());
        CANNOT_EXEC
    };
    // SAFETY: `in_child` makes system calls only (fchdir, chroot, setrlimit, prctl, capset, fexecve, write) on
    // descriptors and buffers made before the fork; it allocates nothing, takes no lock and ends in exec or
    // `_exit`: what a child of this multithreaded process may do (fork(2), signal-safety(7); see `crate::sys`).
    let child = unsafe { fork_child(in_child) }.map_err(LdCacheError::Fork)?;
    let exit = child.wait_within(LDCONFIG_TIMEOUT).map_err(LdCacheError::Fork)?;
    if exit.timed_out {
        return Err(LdCacheError::Timeout(LDCONFIG_TIMEOUT));
    }
    if !exit.succeeded() {
        return Err(LdCacheError::Ldconfig(exit.describe()));
    }
    Ok(())
}

/// Leaves ldconfig, which parses the image's configuration and ELF files, only what it needs: uid 0 in the image's
/// root (its files are root's), without any capability, and unable to gain one (no_new_privs clamps what exec
/// would give root). A parser bug in ldconfig then cannot reach beyond the chroot as a capable root could.
/// System calls only, no allocation: this runs in a forked child.
fn drop_privileges() -> nix::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl(2) on this process only, with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Errno::last());
    }
    // Bounding set first (needs CAP_SETPCAP, which is dropped last with the rest); EINVAL past the kernel's last
    // capability ends the loop.
    for cap in 0..64 {
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            break;
        }
    }
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) on this process (pid 0) reads the version-3 header and its two data structs, which live on
    // the stack for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) } != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ldconfig_runs_without_any_capability_and_cannot_gain_one() {
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new("cat");
        c.arg("/proc/self/status");
        // SAFETY: drop_privileges makes system calls only and allocates nothing, as a pre-exec hook must.
        unsafe { c.pre_exec(|| super::drop_privileges().map_err(std::io::Error::from)) };
        let out = c.output().unwrap();
        assert!(out.status.success());
        let status = String::from_utf8_lossy(&out.stdout);
        for (key, want) in [
            ("CapEff:", "0000000000000000"),
            ("CapPrm:", "0000000000000000"),
            ("CapBnd:", "0000000000000000"),
            ("NoNewPrivs:", "1"),
        ] {
            let got = status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
            assert_eq!(got, Some(want), "{key} in\n{status}");
        }
    }
}
