//! One user namespace for the rootless ranks of a Slurm step on a node.
//!
//! Each rootless drun would otherwise make a namespace of its own, and the kernel lets a process read another's
//! memory (`process_vm_readv`, the single-copy path of MPI's shared-memory transports) or open its
//! `/proc/PID/fd/N` (how UCX shares its memory) only from the target's own user namespace with at least its
//! capabilities, or with `CAP_SYS_PTRACE` over it: never between sibling namespaces, even of one user. MPI ranks
//! in separate namespaces therefore fell back to copying twice (Open MPI) or to UCX's TCP transport (MPICH), whose
//! `MPI_Finalize` in Debian 12's MPICH 4.0 and UCX 1.13 sometimes never returns (on the host as well, with
//! `UCX_TLS=tcp,self`). Rootless Podman and Docker run all of a user's containers in one namespace, where none of
//! this happens; drun does the same for the containers of one step on one node.
//!
//! The first drun of the step (per `--userns` mode) creates the namespace; each drun in it leaves a holder there
//! (a forked copy that only waits, and dies with its drun) and writes the holder's pid and the namespace's inode
//! number to `<dir>/JOB.STEP.<mode>`; the others join the namespace of a listed holder still in it (the inode
//! number guards against a reused pid), which the kernel allows only to the namespace's owner. A holder, not drun
//! itself: libcontainer makes drun non-dumpable while it creates the container, and the kernel then refuses
//! others its /proc/PID/ns/user. The
//! file is locked (`flock`) while a drun decides, so ranks starting together agree. `<dir>` is private to the
//! caller (`$XDG_RUNTIME_DIR/drun/userns`, else `/tmp/drun-UID/userns`): another user could only make drun refuse
//! to share, never make it join a namespace that is not the caller's own.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{Flock, FlockArg};

use super::idmap::IdMap;
use super::UsernsMode;

/// Records bigger than this are not read (a step has at most a few hundred ranks on a node, 20 bytes each).
const RECORD_LIMIT: u64 = 64 * 1024;

static SHARED: AtomicBool = AtomicBool::new(false);

/// Whether this drun's namespace is its step's shared one: ranks of the step on this node reach each other's
/// memory and /proc/PID/fd.
pub fn shared_with_step() -> bool {
    SHARED.load(Ordering::Relaxed)
}

/// The step's record, locked until dropped.
pub(super) struct StepRecord {
    file: Flock<File>,
}

/// `JOB.STEP` of the Slurm step this drun is a task of (`srun`), or None (outside a step, or in a batch script).
fn step_key() -> Option<String> {
    let digits = |k: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    };
    Some(format!("{}.{}", digits("SLURM_JOB_ID")?, digits("SLURM_STEP_ID")?))
}

/// The caller's private directory for the records, created 0700; None when it cannot be had privately.
fn record_dir(uid: u32) -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == uid));
    let base = match xdg {
        Some(d) => d.join("drun"),
        None => PathBuf::from(format!("/tmp/drun-{uid}")),
    };
    let dir = base.join("userns");
    for d in [&base, &dir] {
        crate::sys::safe_fs::create_dir_mode(d, 0o700).ok()?;
        let m = std::fs::symlink_metadata(d).ok()?;
        if m.uid() != uid || m.mode() & 0o077 != 0 {
            tracing::debug!(dir = %d.display(), "not private to the caller: the step's user namespace is not shared");
            return None;
        }
    }
    Some(dir)
}

impl StepRecord {
    /// The locked record of this step and mode, or None outside a step or when it cannot be used (then drun makes
    /// a namespace of its own, as outside a step).
    pub(super) fn open(uid: u32, mode: UsernsMode) -> Option<StepRecord> {
        let key = step_key()?;
        let mode = match mode {
            UsernsMode::Auto => "auto",
            UsernsMode::KeepId => "keep-id",
        };
        let dir = record_dir(uid)?;
        let path = dir.join(format!("{key}.{mode}"));
        if std::fs::symlink_metadata(&path).is_err() {
            // The first drun of the step here clears the records of steps that are over.
            prune(&dir);
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .and_then(|f| match f.metadata()?.is_file() {
                true => Ok(f),
                false => Err(std::io::Error::other("not a regular file")),
            });
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot open the step's user namespace record");
                return None;
            }
        };
        // Held for the few milliseconds a drun takes to join or to create and record a namespace.
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(file) => Some(StepRecord { file }),
            Err((_, e)) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot lock the step's user namespace record");
                None
            }
        }
    }

    /// The (pid, namespace inode) lines of the record.
    fn members(&mut self) -> Vec<(i32, u64)> {
        let mut text = String::new();
        let read = self
            .file
            .rewind()
            .and_then(|()| (&*self.file).take(RECORD_LIMIT).read_to_string(&mut text));
        if read.is_err() {
            return Vec::new();
        }
        text.lines()
            .filter_map(|l| {
                let (pid, ino) = l.split_once(' ')?;
                Some((pid.parse().ok()?, ino.parse().ok()?))
            })
            .collect()
    }

    /// Opens the user namespace of a recorded process still in it whose mappings are `uids` and `gids`: what to
    /// join instead of creating one.
    pub(super) fn find(&mut self, uids: &[IdMap], gids: &[IdMap]) -> Option<(i32, File)> {
        self.members().into_iter().rev().find_map(|(pid, ino)| {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            #[allow(clippy::disallowed_methods)] // the kernel's namespace file
            let ns = File::open(proc.join("ns/user")).ok()?;
            if ns.metadata().ok()?.ino() != ino {
                return None;
            }
            let maps_match = |file: &str, want: &[IdMap]| {
                crate::sys::safe_fs::read_system(proc.join(file)).is_ok_and(|t| super::enter::parse_id_map(&t) == want)
            };
            (maps_match("uid_map", uids) && maps_match("gid_map", gids)).then_some((pid, ns))
        })
    }

    /// Leaves a holder in the namespace this process is now in and adds it to the record (dropping members that
    /// are gone). Must be called while the process has a single thread.
    pub(super) fn add_self(mut self) {
        // metadata, not symlink_metadata: the namespace's inode, not the /proc link's.
        let Ok(own) = std::fs::metadata("/proc/self/ns/user").map(|m| m.ino()) else {
            return;
        };
        let Some(holder) = spawn_holder() else {
            return;
        };
        // A member of another namespace (one this drun could not join) cannot be examined from this one: kept
        // while its process exists.
        let live = |&(pid, ino): &(i32, u64)| match std::fs::metadata(format!("/proc/{pid}/ns/user")) {
            Ok(m) => m.ino() == ino,
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        };
        let mut members: Vec<(i32, u64)> = self.members().into_iter().filter(live).collect();
        members.push((holder, own));
        let text: String = members.iter().map(|(pid, ino)| format!("{pid} {ino}\n")).collect();
        let written = self
            .file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| (&*self.file).write_all(text.as_bytes()));
        match written {
            Ok(()) => SHARED.store(true, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "cannot record the step's user namespace"),
        }
    }
}

/// Records older than this whose processes are all gone are removed.
const STALE: std::time::Duration = std::time::Duration::from_secs(3600);
/// The most records looked at for removal at once.
const PRUNE_MAX: usize = 256;

/// Removes the records in `dir` of steps that are over: not written for [`STALE`], and no listed holder alive.
fn prune(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten().take(PRUNE_MAX) {
        let path = entry.path();
        let old = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if !old {
            continue;
        }
        let Ok(text) = crate::sys::safe_fs::read_bounded(&path, RECORD_LIMIT) else {
            continue;
        };
        let any_alive = String::from_utf8_lossy(&text).lines().any(|l| {
            l.split(' ')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| std::fs::symlink_metadata(format!("/proc/{pid}")).is_ok())
        });
        if !any_alive {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Joins the namespace `ns` found by [`StepRecord::find`].
pub(super) fn join(ns: &File) -> nix::Result<()> {
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWUSER)
}

/// Forks the holder: a child that keeps this process's user namespace open to joiners for as long as this process
/// lives (the kernel kills it when its parent exits), with no descriptor of drun's, and waits. Its pid, or None.
fn spawn_holder() -> Option<i32> {
    let parent = nix::unistd::getpid();
    // SAFETY: the caller (`enter`, under `is_single_threaded`) has one thread, so the child is a complete copy
    // with no lock held elsewhere; it calls only async-signal-safe system calls and leaves with `_exit`.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Some(child.as_raw()),
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: prctl, getppid, open, dup2, close_range, pause and _exit on values of this function only.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                if libc::getppid() != parent.as_raw() {
                    libc::_exit(0);
                }
                libc::prctl(libc::PR_SET_NAME, c"drun-userns".as_ptr());
                // Not stdout, stderr or srun's PMI socket: what reads them must not wait for this process.
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                loop {
                    libc::pause();
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot fork the holder of the step's user namespace");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn records_of_steps_that_are_over_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - 2 * STALE;
        let record = |name: &str, text: String, aged: bool| {
            let p = t.path().join(name);
            std::fs::write(&p, text).unwrap();
            if aged {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
            p
        };
        // pid 0 has no /proc entry: a holder that is gone.
        let over = record("1.0.auto", "0 4026531837\n".into(), true);
        let alive = record("2.0.auto", format!("{} 4026531837\n", std::process::id()), true);
        let recent = record("3.0.auto", "0 4026531837\n".into(), false);
        prune(t.path());
        assert!(!over.exists());
        assert!(alive.exists() && recent.exists());
    }
}
