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
//! The first drun of the step (per `--userns` mode) creates the namespace; each drun in it leaves a **holder**
//! there and writes the holder's pid and the namespace's inode number to `<dir>/JOB.STEP.<mode>`; the others join
//! the namespace of a listed holder. The file is locked (`flock`) while a drun decides, so ranks starting together
//! agree. `<dir>` is private to the caller (`$XDG_RUNTIME_DIR/drun/userns`, else `/tmp/drun-UID/userns`): another
//! user could only make drun refuse to share, never make it join a namespace that is not the caller's own.
//!
//! The containers of the namespace must not reach the host through the holder, which is in their namespace with
//! every capability there. So the holder is a forked copy of drun that never executes anything (the kernel then
//! judges access to it by the host's user namespace, where containers have no capability), is **not dumpable**
//! (no `ptrace`, no `/proc/PID/{root,cwd,fd,mem,ns}` for anyone but the host's root), sits in a mount namespace of
//! its own whose root is an empty read-only tmpfs (nothing of the host's to see even if it were reached), and keeps
//! only two descriptors: its namespace and a listening socket, `<dir>/JOB.STEP.<mode>.<PID>.sock`, on which it
//! hands the namespace (`SCM_RIGHTS`) to processes of its own user. A joiner cannot open a non-dumpable
//! holder's `/proc/PID/ns/user` itself. The holder dies with its drun (`PR_SET_PDEATHSIG`).

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{recvmsg, sockopt, ControlMessageOwned, MsgFlags};

use super::idmap::IdMap;
use super::UsernsMode;

/// Records bigger than this are not read (a step has at most a few hundred ranks on a node, 20 bytes each).
const RECORD_LIMIT: u64 = 64 * 1024;
/// How long a drun waits for the step's record before it makes a namespace of its own.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long a joiner waits for a holder's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

static SHARED: AtomicBool = AtomicBool::new(false);

/// Whether this drun's namespace is its step's shared one: ranks of the step on this node reach each other's
/// memory and /proc/PID/fd.
pub fn shared_with_step() -> bool {
    SHARED.load(Ordering::Relaxed)
}

/// The step's record, locked until dropped.
pub(super) struct StepRecord {
    file: Flock<File>,
    dir: PathBuf,
    /// `JOB.STEP.<mode>`: the record's name, and the start of its holders' socket names.
    stem: String,
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
        if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
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
        let stem = format!("{key}.{mode}");
        let path = dir.join(&stem);
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
        // Held for the few milliseconds a drun takes to join or to create and record a namespace. A holder of
        // the lock that does not let go (stopped by a signal of the user's) costs the others LOCK_WAIT, after which
        // they make namespaces of their own.
        let start = std::time::Instant::now();
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(file) => return Some(StepRecord { file, dir, stem }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if start.elapsed() < LOCK_WAIT => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, e)) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot lock the step's user namespace record");
                    return None;
                }
            }
        }
    }

    fn socket(&self, holder: i32) -> PathBuf {
        self.dir.join(format!("{}.{holder}.sock", self.stem))
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

    /// The user namespace of a recorded holder still alive whose mappings are `uids` and `gids`, as its holder
    /// hands it over: what to join instead of creating one.
    pub(super) fn find(&mut self, uids: &[IdMap], gids: &[IdMap]) -> Option<(i32, OwnedFd)> {
        self.members().into_iter().rev().find_map(|(pid, ino)| {
            let socket = self.socket(pid);
            let (ns, peer) = match ask_holder(&socket) {
                Ok(got) => got,
                Err(e) => {
                    tracing::debug!(pid, error = %e, "the holder of the step's user namespace did not answer");
                    return None;
                }
            };
            // The answer is the recorded namespace, from the recorded holder (not a process that took its pid),
            // and a child of this drun's own namespace: not one nested below it by a process of the user (a
            // container that sees the record directory).
            let same_ns = nix::sys::stat::fstat(ns.as_fd()).is_ok_and(|st| st.st_ino == ino);
            if peer != pid || !same_ns || !child_of_own(&ns) {
                return None;
            }
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let maps_match = |file: &str, want: &[IdMap]| {
                crate::sys::safe_fs::read_system(proc.join(file)).is_ok_and(|t| super::enter::parse_id_map(&t) == want)
            };
            (maps_match("uid_map", uids) && maps_match("gid_map", gids)).then_some((pid, ns))
        })
    }

    /// Leaves a holder in the namespace this process is now in and adds it to the record (dropping members that
    /// are gone). Must be called while the process has a single thread.
    pub(super) fn add_self(mut self, joined: bool) {
        if joined {
            SHARED.store(true, Ordering::Relaxed);
        }
        // metadata, not symlink_metadata: the namespace's inode, not the /proc link's.
        let Ok(own) = std::fs::metadata("/proc/self/ns/user").map(|m| m.ino()) else {
            return;
        };
        let Some(holder) = spawn_holder(&self.dir, |pid| self.socket(pid)) else {
            return;
        };
        // A member whose holder is gone is dropped with its socket.
        let mut members: Vec<(i32, u64)> = Vec::new();
        for (pid, ino) in self.members() {
            if std::fs::symlink_metadata(format!("/proc/{pid}")).is_ok() {
                members.push((pid, ino));
            } else {
                let _ = std::fs::remove_file(self.socket(pid));
            }
        }
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

/// Removes the records in `dir` of steps that are over (not written for [`STALE`], and no listed holder alive),
/// and the sockets of holders that are gone.
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let alive = |pid: &str| {
        pid.parse::<u32>()
            .is_ok_and(|pid| std::fs::symlink_metadata(format!("/proc/{pid}")).is_ok())
    };
    for entry in entries.flatten().take(PRUNE_MAX) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_suffix(".sock") {
            if !rest.rsplit('.').next().is_some_and(alive) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
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
        let any_alive = String::from_utf8_lossy(&text)
            .lines()
            .any(|l| l.split(' ').next().is_some_and(alive));
        if !any_alive {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether user namespace `ns`'s parent is this process's own namespace.
fn child_of_own(ns: &OwnedFd) -> bool {
    // SAFETY: NS_GET_PARENT on a namespace descriptor this function borrows; it returns a new descriptor or -1.
    let parent = unsafe { libc::ioctl(ns.as_raw_fd(), libc::NS_GET_PARENT) };
    if parent < 0 {
        return false;
    }
    // SAFETY: a new descriptor from the ioctl, owned by nothing else.
    let parent = unsafe { OwnedFd::from_raw_fd(parent) };
    let own = std::fs::metadata("/proc/self/ns/user").map(|m| (m.dev(), m.ino()));
    let theirs = nix::sys::stat::fstat(parent.as_fd()).map(|st| (st.st_dev, st.st_ino));
    matches!((own, theirs), (Ok(a), Ok(b)) if a == b)
}

/// Joins the namespace `ns` found by [`StepRecord::find`].
pub(super) fn join(ns: &OwnedFd) -> nix::Result<()> {
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWUSER)
}

/// Asks the holder listening on `socket` for its namespace: the descriptor and the holder's pid (the kernel's
/// word for who answered).
fn ask_holder(socket: &Path) -> std::io::Result<(OwnedFd, i32)> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let peer = nix::sys::socket::getsockopt(&stream, sockopt::PeerCredentials)?;
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: SCM_RIGHTS installed these descriptors in this process just now; nothing else owns them.
            received.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    match (received.len(), received.pop()) {
        (1, Some(fd)) => Ok((fd, peer.pid())),
        _ => Err(std::io::Error::other("the holder sent no namespace")),
    }
}

/// The holder's descriptors are moved to at least this number, and every lower one is closed.
const HOLDER_FDS_FROM: RawFd = 100;

/// Starts the holder (see the module docs): a listening socket bound at `socket(pid)` in `dir`, a forked child that
/// confines itself and answers on it until this process ends. Its pid once it is ready, or None.
fn spawn_holder(dir: &Path, socket: impl Fn(i32) -> PathBuf) -> Option<i32> {
    let parent = nix::unistd::getpid();
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    // The socket is named after the holder's pid, which only the child knows: it binds it itself, before it
    // leaves the host's mount namespace. The directory's path is made here, where allocating is ordinary.
    let dir_c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: the caller (`enter`, under `is_single_threaded`) has one thread, so the child is a complete copy
    // with no lock held by another thread: it may allocate. It leaves only through `_exit`.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(ready_w);
            let mut byte = [0u8; 1];
            let ready = File::from(ready_r).read(&mut byte).is_ok_and(|n| n == 1);
            if ready {
                Some(child.as_raw())
            } else {
                let _ = nix::sys::wait::waitpid(child, None);
                tracing::debug!("the holder of the step's user namespace could not start");
                None
            }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ready_r);
            let code = match holder_start(parent, &socket(nix::unistd::getpid().as_raw()), &dir_c, ready_w) {
                Ok(never) => match never {},
                Err(_) => 1,
            };
            // SAFETY: leaves the forked child without running drun's exit handlers.
            unsafe { libc::_exit(code) }
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot fork the holder of the step's user namespace");
            None
        }
    }
}

/// The holder, from its fork to its loop: returns only on a failure before it said it is ready.
fn holder_start(
    parent: nix::unistd::Pid,
    socket: &Path,
    dir: &std::ffi::CStr,
    ready: OwnedFd,
) -> std::io::Result<std::convert::Infallible> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    // Not dumpable first, before it holds anything worth reaching.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        libc::prctl(libc::PR_SET_NAME, c"drun-userns".as_ptr());
    }
    if nix::unistd::getppid() != parent {
        return Err(std::io::Error::other("drun is gone"));
    }
    // Its own namespace (reading its own /proc entry is allowed to a non-dumpable process).
    #[allow(clippy::disallowed_methods)] // the kernel's namespace file
    let ns = OwnedFd::from(File::open("/proc/self/ns/user")?);
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    // Nothing of the host's to see: an empty, read-only tmpfs as the root of a mount namespace of its own.
    super::private_mounts().map_err(std::io::Error::other)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("none"), dir, Some("tmpfs"), flags, Some("size=4k,mode=0500"))?;
    nix::unistd::chdir(dir)?;
    nix::unistd::pivot_root(".", ".")?;
    umount2(".", MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")?;
    // Only the namespace and the socket stay open, above every descriptor it inherited, which are closed.
    let keep = |fd: &dyn AsRawFd| -> std::io::Result<OwnedFd> {
        // SAFETY: fcntl on a descriptor this function holds; the duplicate is owned by the result.
        let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HOLDER_FDS_FROM) };
        match dup {
            -1 => Err(std::io::Error::last_os_error()),
            // SAFETY: a new descriptor from F_DUPFD_CLOEXEC, owned by nothing else.
            fd => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        }
    };
    let (ns, listener) = (keep(&ns)?, UnixListener::from(keep(&listener)?));
    // Both are at least HOLDER_FDS_FROM, so positive.
    let fd_no = |fd: RawFd| u32::try_from(fd).unwrap_or(u32::MAX);
    let (a, b) = (fd_no(ns.as_raw_fd()), fd_no(listener.as_raw_fd()));
    let (lo, hi) = (a.min(b), a.max(b));
    nix::unistd::write(&ready, b"r")?;
    drop(ready);
    // SAFETY: closes descriptors this process no longer uses; the two kept ones lie outside the ranges (a range
    // whose first is above its last is refused, which is fine).
    unsafe {
        libc::syscall(libc::SYS_close_range, 0u32, fd_no(HOLDER_FDS_FROM - 1), 0u32);
        libc::syscall(libc::SYS_close_range, lo + 1, hi - 1, 0u32);
        libc::syscall(libc::SYS_close_range, hi.saturating_add(1), u32::MAX, 0u32);
    }
    // SAFETY: getuid cannot fail.
    let own_uid = unsafe { libc::getuid() };
    loop {
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        // Only processes of its own user (as this namespace sees them) are answered.
        let same_user = nix::sys::socket::getsockopt(&conn, sockopt::PeerCredentials).is_ok_and(|c| c.uid() == own_uid);
        if same_user {
            let fds = [ns.as_raw_fd()];
            let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
            let _ = nix::sys::socket::sendmsg::<()>(
                conn.as_raw_fd(),
                &[IoSlice::new(b"n")],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            );
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
