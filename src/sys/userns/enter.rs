//! Entering the user namespace at start-up: choosing the mapping, unsharing, and writing the id maps (drun itself
//! for a single id; the setuid newuidmap/newgidmap, run from a child left outside, for subordinate ranges). Must
//! run while drun has one thread, before anything else.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::WaitStatus;

use super::error::{helper_advice, unshare_advice, UsernsError};
use super::idmap::{build_map, helper_args, proc_map_text, single_id_map, IdMap};
use super::subid::subordinate_ranges;
use super::{MappingKind, Rootless, UsernsMode, CURRENT};
use crate::sys::fork::{fork_child, is_single_threaded, ChildReport};

/// The status of the helper-running child when the parent never said to go on (its unshare failed).
const NEVER_TOLD_TO_GO: i32 = 1;
/// The status of the helper-running child when helper `i` failed is `FIRST_HELPER_FAILED + i`.
const FIRST_HELPER_FAILED: i32 = 2;

/// The user's passwd entry on the host (NSS: local files, LDAP, SSSD alike).
struct HostUser {
    name: Option<String>,
    home: Option<PathBuf>,
    shell: Option<String>,
    gecos: String,
}

fn host_user(uid: u32) -> HostUser {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => HostUser {
            name: Some(u.name),
            home: Some(u.dir),
            shell: Some(u.shell.display().to_string()),
            gecos: u.gecos.to_string_lossy().into_owned(),
        },
        _ => HostUser {
            name: None,
            home: std::env::var_os("HOME").map(PathBuf::from),
            shell: None,
            gecos: String::new(),
        },
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One run of newuidmap or newgidmap.
struct MapHelper {
    name: &'static str,
    tool: PathBuf,
    maps: Vec<IdMap>,
    /// The subid file the ranges come from, and the ranges (for the advice when the helper refuses).
    file: &'static str,
    ranges: Vec<(u32, u32)>,
}

/// What a map helper said when it refused (or why it could not be run).
struct HelperRefused(String);

impl MapHelper {
    /// Runs the helper on process `pid`.
    fn run(&self, pid: u32) -> Result<(), HelperRefused> {
        let out = Command::new(&self.tool)
            .arg(pid.to_string())
            .args(helper_args(&self.maps))
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(HelperRefused(format!(
                "{}{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            ))),
            Err(e) => Err(HelperRefused(e.to_string())),
        }
    }
}

/// Enters a new user namespace (and a private mount namespace) as described in the module docs. Must be called
/// while the process has a single thread (it checks). The result is kept for [`super::current`].
pub fn enter(mode: UsernsMode) -> Result<&'static Rootless, UsernsError> {
    if !is_single_threaded() {
        return Err(UsernsError::Threaded);
    }
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let user = host_user(uid);
    let subuids = subordinate_ranges(Path::new("/etc/subuid"), user.name.as_deref(), uid);
    let subgids = subordinate_ranges(Path::new("/etc/subgid"), user.name.as_deref(), uid);
    let helpers = (find_in_path("newuidmap"), find_in_path("newgidmap"));
    let (own_uid_inside, own_gid_inside) = match mode {
        UsernsMode::Auto => (0, 0),
        UsernsMode::KeepId => (uid, gid),
    };
    let subordinate = match (helpers, subuids.is_empty() || subgids.is_empty()) {
        ((Some(u), Some(g)), false) => Some((u, g)),
        (_, false) => {
            tracing::warn!(
                "{} has subordinate ids in /etc/subuid and /etc/subgid, but newuidmap/newgidmap are not installed \
                 (Debian/Ubuntu package `uidmap`, RHEL `shadow-utils`): using a single-id mapping, so only root \
                 exists in containers",
                user.name.as_deref().unwrap_or("this user")
            );
            None
        }
        _ => None,
    };
    let (uids, gids, kind) = match &subordinate {
        Some(_) => (
            build_map(uid, own_uid_inside, &subuids),
            build_map(gid, own_gid_inside, &subgids),
            MappingKind::Subordinate,
        ),
        None => (
            single_id_map(uid, own_uid_inside),
            single_id_map(gid, own_gid_inside),
            MappingKind::SingleId,
        ),
    };
    let user_name = user.name.clone();
    let ns = rootless(uid, gid, user, uids, gids, kind, mode);
    // A task of a Slurm step shares the namespace of the step's other containers on this node (see `step`).
    let mut step = super::step::StepRecord::open(uid, mode);
    let joined = match step.as_mut().and_then(|r| r.find(&ns.uids, &ns.gids)) {
        Some((pid, found)) => {
            // Before joining: the step's containers are in that namespace already, and from there a dumpable
            // drun, or the holder forked from it, could be traced or have its /proc/PID/root opened for good.
            set_dumpable(false)?;
            match super::step::join(&found) {
                Ok(()) => {
                    tracing::debug!(pid, mapping = %ns.describe(), "joined the user namespace of the step's containers");
                    true
                }
                Err(errno) => {
                    tracing::debug!(pid, %errno, "cannot join the user namespace of the step's containers");
                    // newuidmap maps only a process whose /proc/PID is the caller's: a dumpable one.
                    set_dumpable(true)?;
                    false
                }
            }
        }
        None => false,
    };
    if !joined {
        match subordinate {
            None => write_single_id_maps(&ns)?,
            Some((newuidmap, newgidmap)) => {
                let helpers = [
                    MapHelper {
                        name: "newuidmap",
                        tool: newuidmap,
                        maps: ns.uids.clone(),
                        file: "/etc/subuid",
                        ranges: subuids,
                    },
                    MapHelper {
                        name: "newgidmap",
                        tool: newgidmap,
                        maps: ns.gids.clone(),
                        file: "/etc/subgid",
                        ranges: subgids,
                    },
                ];
                let shown_user = user_name.unwrap_or_else(|| uid.to_string());
                unshare_with_helpers(&helpers, &shown_user)?;
            }
        }
        // Not dumpable from now on (until now, alone in a namespace of its own): before the holder is forked, so
        // that it never is either.
        set_dumpable(false)?;
    }
    private_mounts()?;
    if joined {
        crate::failpoint::pause("userns-joined");
    }
    if let Some(r) = step {
        r.add_self(joined);
    }
    tracing::debug!(mapping = %ns.describe(), "entered a user namespace");
    // For the drun processes this one starts inside the namespace (a health probe, a workflow's service): they
    // are rootless too, in this namespace ([`adopt`]). Single-threaded here (checked above): nothing reads the
    // environment concurrently.
    std::env::set_var(ENTERED_ENV, ns.uid.to_string());
    Ok(CURRENT.get_or_init(|| ns))
}

/// Set by a rootless drun once it entered its user namespace, to the caller's host uid.
const ENTERED_ENV: &str = "DRUN_ROOTLESS_UID";

/// A drun started by a rootless drun inside that drun's user namespace (a health probe's `drun exec`, a workflow
/// service's `drun run -d`) is root there, but rootless all the same: takes that namespace as its own, its
/// mapping read from /proc/self. `None` (nothing changes) for any other process, such as a real root's drun or
/// drun as root in a rootless Podman container (there the variable is not set).
pub fn adopt() -> Option<&'static Rootless> {
    let host_uid: u32 = std::env::var(ENTERED_ENV).ok()?.parse().ok()?;
    let read_map = |file: &str| -> Option<Vec<IdMap>> {
        let text = crate::sys::safe_fs::read_system(format!("/proc/self/{file}")).ok()?;
        Some(parse_id_map(&text))
    };
    let (uids, gids) = (read_map("uid_map")?, read_map("gid_map")?);
    // The caller, as the namespace maps it: refused unless it is the uid the variable names (the initial
    // namespace's identity mapping maps everyone).
    let inside = nix::unistd::geteuid().as_raw();
    let outside = uids
        .iter()
        .find(|m| inside >= m.inside && inside - m.inside < m.count)
        .map(|m| m.outside + (inside - m.inside))?;
    if outside != host_uid || uids.iter().any(|m| m.count == u32::MAX) {
        return None;
    }
    let gid_inside = nix::unistd::getegid().as_raw();
    let gid = gids
        .iter()
        .find(|m| gid_inside >= m.inside && gid_inside - m.inside < m.count)
        .map_or(gid_inside, |m| m.outside + (gid_inside - m.inside));
    let mode = if inside == 0 {
        UsernsMode::Auto
    } else {
        UsernsMode::KeepId
    };
    let adopted = from_maps(host_uid, gid, host_user(host_uid), uids, gids, mode);
    tracing::debug!(mapping = %adopted.describe(), "in the user namespace of the drun that started this one");
    Some(CURRENT.get_or_init(|| adopted))
}

/// The lines of a /proc/PID/{uid,gid}_map file.
pub(super) fn parse_id_map(text: &str) -> Vec<IdMap> {
    text.lines()
        .filter_map(|l| {
            let mut n = l.split_whitespace().map(|w| w.parse::<u32>().ok());
            Some(IdMap {
                inside: n.next()??,
                outside: n.next()??,
                count: n.next()??,
            })
        })
        .collect()
}

/// A namespace drun did not make itself ([`adopt`], [`join`]), from its mappings as the kernel shows them.
fn from_maps(uid: u32, gid: u32, user: HostUser, uids: Vec<IdMap>, gids: Vec<IdMap>, mode: UsernsMode) -> Rootless {
    let kind = if uids.len() > 1 {
        MappingKind::Subordinate
    } else {
        MappingKind::SingleId
    };
    rootless(uid, gid, user, uids, gids, kind, mode)
}

fn rootless(
    uid: u32,
    gid: u32,
    user: HostUser,
    uids: Vec<IdMap>,
    gids: Vec<IdMap>,
    kind: MappingKind,
    mode: UsernsMode,
) -> Rootless {
    Rootless {
        uid,
        gid,
        user: user.name,
        home: user.home,
        shell: user.shell,
        gecos: user.gecos,
        uids,
        gids,
        kind,
        mode,
    }
}

/// A mount namespace of drun's own (of the calling thread, when other threads share the process), in the user
/// namespace it is in, whose mounts propagate nowhere.
pub fn private_mounts() -> Result<(), UsernsError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(UsernsError::MountNamespace)?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(UsernsError::PrivateMounts)
}

/// Makes drun not dumpable (`false`) before it shares a user namespace with anything else, there with every
/// capability and still seeing the host's files. Its containers are in that namespace too (and, inside a Slurm
/// step, see its pid): a container given `CAP_SYS_PTRACE` could otherwise trace drun, or open its
/// `/proc/PID/root` (a descriptor that stays usable once opened), and reach the host through it. A process that is
/// not dumpable is reached only with `CAP_SYS_PTRACE` over the user namespace its program was started in, the
/// host's, where containers have none. Children inherit it until they execute a program. (`true` again only for
/// newuidmap, which maps only a process whose /proc/PID is the caller's, before anything else is in the namespace.)
fn set_dumpable(dumpable: bool) -> Result<(), UsernsError> {
    // SAFETY: prctl with integer arguments only.
    match unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(dumpable), 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(UsernsError::NotDumpable(std::io::Error::last_os_error())),
    }
}

/// Unshares the user namespace and maps the caller's own ids, which needs no privilege.
fn write_single_id_maps(ns: &Rootless) -> Result<(), UsernsError> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|errno| UsernsError::Unshare {
        errno,
        advice: unshare_advice(errno),
    })?;
    let write = |path: &'static str, text: String| {
        crate::sys::safe_fs::write_system(path, text).map_err(|source| UsernsError::WriteMap { path, source })
    };
    // Without CAP_SETGID in the parent namespace, setgroups must be denied before gid_map is written.
    write("/proc/self/setgroups", "deny".to_string())?;
    write("/proc/self/uid_map", proc_map_text(&ns.uids))?;
    write("/proc/self/gid_map", proc_map_text(&ns.gids))
}

/// Unshares the user namespace and has the setuid `helpers` write its maps. The maps of a namespace are written
/// from outside it: a child left in the parent namespace runs the helpers on this process once it has unshared.
fn unshare_with_helpers(helpers: &[MapHelper; 2], user: &str) -> Result<(), UsernsError> {
    let (go_read, go_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(UsernsError::Pipe)?;
    let parent = std::process::id();
    let go_write_fd = go_write.as_raw_fd();
    let in_child = |report: &ChildReport| {
        // The child's copy of the write end: closed, so that the parent closing its own reads as end of file.
        let _ = nix::unistd::close(go_write_fd);
        if !told_to_go(go_read.as_fd()) {
            return NEVER_TOLD_TO_GO;
        }
        for (status, helper) in (FIRST_HELPER_FAILED..).zip(helpers) {
            if let Err(HelperRefused(output)) = helper.run(parent) {
                report.write(&[&output]);
                return status;
            }
        }
        0
    };
    // SAFETY: `enter` checked that this process has a single thread, and nothing has started one since: the child
    // is a complete copy, with no lock held by another thread, so it may allocate and spawn the helpers (see
    // `crate::sys`). It ends in `_exit` (`fork_child` sees to it).
    let child = unsafe { fork_child(in_child) }.map_err(UsernsError::Fork)?;
    drop(go_read);
    if let Err(errno) = unshare(CloneFlags::CLONE_NEWUSER) {
        drop(go_write);
        let _ = child.wait();
        return Err(UsernsError::Unshare {
            errno,
            advice: unshare_advice(errno),
        });
    }
    let _ = nix::unistd::write(&go_write, b"1");
    drop(go_write);
    let exit = child.wait().map_err(UsernsError::Fork)?;
    let failed = match exit.status {
        WaitStatus::Exited(_, 0) if !exit.timed_out => return Ok(()),
        WaitStatus::Exited(_, code) => code
            .checked_sub(FIRST_HELPER_FAILED)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| helpers.get(i)),
        _ => None,
    };
    Err(match failed {
        Some(helper) => UsernsError::MapHelper {
            name: helper.name,
            tool: helper.tool.clone(),
            output: exit.report.trim().to_string(),
            advice: helper_advice(&helper.tool, helper.file, user, &helper.ranges),
        },
        None => UsernsError::HelperProcess(exit.describe()),
    })
}

/// Waits for the parent's go-ahead: one byte on `go` (end of file: the parent gave up).
fn told_to_go(go: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(go, &mut byte) {
            Ok(n) => return n == 1,
            Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// Joins the user namespace of process `pid` (a rootless container's, which is the namespace the drun running it
/// entered with [`enter`]) instead of creating one, and a private mount namespace there: `drun exec` works where the container's own drun does. The
/// caller must own that namespace (the kernel checks: only then does setns give drun its capabilities there). Must
/// be called while the process has a single thread (it checks). The mapping is read from the process.
pub fn join(pid: i32) -> Result<&'static Rootless, UsernsError> {
    use std::os::fd::AsFd;
    if !is_single_threaded() {
        return Err(UsernsError::Threaded);
    }
    let failed = |source: std::io::Error| UsernsError::Join { pid, source };
    let proc = PathBuf::from(format!("/proc/{pid}"));
    #[allow(clippy::disallowed_methods)] // the kernel's namespace file
    let ns = std::fs::File::open(proc.join("ns/user")).map_err(failed)?;
    let read_map = |file: &str| -> Result<Vec<IdMap>, UsernsError> {
        let text = crate::sys::safe_fs::read_system(proc.join(file)).map_err(failed)?;
        Ok(parse_id_map(&text))
    };
    let (uids, gids) = (read_map("uid_map")?, read_map("gid_map")?);
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let user = host_user(uid);
    set_dumpable(false)?;
    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWUSER).map_err(|e| failed(e.into()))?;
    private_mounts()?;
    let mode = match super::idmap::inside_id(&uids, uid) {
        Some(inside) if inside != 0 => UsernsMode::KeepId,
        _ => UsernsMode::Auto,
    };
    let joined = from_maps(uid, gid, user, uids, gids, mode);
    tracing::debug!(pid, mapping = %joined.describe(), "joined a container's user namespace");
    Ok(CURRENT.get_or_init(|| joined))
}
