//! Run directories: one per container under `<state>/containers/<id>/`, locked (flock) by the drun process that
//! runs it. A directory whose lock is free belongs to a drun that died (e.g. SIGKILLed); the next drun, or
//! `drun prune`, cleans up what it left: processes, cgroups, mounts, libcontainer state, files. A detached run
//! (`drun run -d`) keeps its directory after it ended, its record (with how it ended) and its log only, until
//! `drun rm` (see [`crate::run::finished`]).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::run::cgroups::{CgroupPlan, Version};

/// What `drun ps` shows and what clean-up needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub started: time::OffsetDateTime,
    /// Empty when the container has no cgroup of its own (rootless without delegation).
    pub cgroup_path: String,
    pub cgroup_v2: bool,
    /// cgroup v1: the container's cgroups not at `cgroup_path` (below drun's own cgroup of another hierarchy),
    /// relative to /sys/fs/cgroup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_dirs: Vec<String>,
    /// Start time (clock ticks after boot) of `pid`: a container without a cgroup is killed by pid, and only
    /// if the pid still names the same process.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// Store keys of the layers the root file system is made of (kept from garbage collection while running; see
    /// [`crate::image::store::LayerRecord::key`]).
    pub layers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<(String, String)>,
    /// Started with `-d`: supervised by a monitor process, its output kept in a log file in the run directory.
    #[serde(default)]
    pub detached: bool,
    /// The drun that holds the run's lock (the foreground drun, or a detached run's monitor): the lock alone does
    /// not say that it lives, since the container's init, made by a clone of that drun, holds a copy of the lock
    /// until its exec. A drun SIGKILLed between creating and starting the container leaves that init waiting for
    /// the start for ever, holding the lock. See [`supervisor_died`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<Supervisor>,
    /// With `-d --rm`: the run directory goes when the container ends (otherwise it stays until `drun rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// The signal `drun stop` sends first (`--stop-signal`, the image's StopSignal; SIGTERM when `None`).
    #[serde(default)]
    pub stop_signal: Option<i32>,
    /// How many times `--restart on-failure` started the container again (Docker's RestartCount).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restart_count: u32,
    /// How it ended: set once a detached run's container has ended and everything but its record and log is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitRecord>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How a run ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// The container's status (128+N for signal N); `None` when nobody saw it end.
    pub code: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub finished: time::OffsetDateTime,
    /// Its monitor died (e.g. SIGKILLed) and a later drun ended and cleaned up the container.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub monitor_killed: bool,
}

impl ExitRecord {
    pub fn now(code: Option<i32>) -> ExitRecord {
        ExitRecord {
            code,
            finished: time::OffsetDateTime::now_utc(),
            monitor_killed: false,
        }
    }
}

/// A process that supervises a run, as [`RunInfo::supervisor`] records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Supervisor {
    pub pid: i32,
    /// Its start time (clock ticks after boot): the pid names it only while this matches.
    pub start: u64,
    /// Its pid namespace (`/proc/self/ns/pid`): a drun in another one reads `pid` as another process.
    pub pid_ns: String,
}

impl Supervisor {
    /// This process.
    pub fn this_process() -> Option<Supervisor> {
        let pid = i32::try_from(std::process::id()).ok()?;
        Some(Supervisor {
            pid,
            start: start_time(pid)?,
            pid_ns: own_pid_ns()?,
        })
    }
}

fn own_pid_ns() -> Option<String> {
    fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn ns_number(ns: &str) -> String {
    ns.chars().filter(char::is_ascii_digit).collect()
}

/// Whether a run directory is one being created (a hidden name, see [`RunDir::create`]) by a drun that still lives:
/// one whose name does not say who creates it is given a minute.
fn being_created(e: &fs::DirEntry) -> bool {
    let name = e.file_name().to_string_lossy().into_owned();
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let creator: Option<(i32, u64, String)> = rest.split_once('.').and_then(|(_, tag)| {
        let mut parts = tag.splitn(3, '-');
        Some((
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.to_string(),
        ))
    });
    match creator {
        Some((pid, start, ns)) if own_pid_ns().is_some_and(|own| ns_number(&own) == ns) => {
            start_time(pid) == Some(start)
        }
        _ => e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|a| a < std::time::Duration::from_secs(60)),
    }
}

/// Whether the run's record names a supervisor that is gone (seen from the same pid namespace): whatever holds
/// the run's lock then is a process the dead drun left (see [`RunInfo::supervisor`]), not a live run.
fn supervisor_died(dir: &Path) -> bool {
    read_info(dir)
        .and_then(|i| i.supervisor)
        .is_some_and(|s| own_pid_ns().as_deref() == Some(s.pid_ns.as_str()) && start_time(s.pid) != Some(s.start))
}

impl RunInfo {
    /// The record stays after the container ended, until `drun rm`.
    pub fn kept(&self) -> bool {
        self.detached && !self.auto_remove
    }
}

/// The default state directory: `/run/drun` for root. Rootless: `$XDG_RUNTIME_DIR/drun` when that directory
/// exists, is the caller's and writable (`srun` may carry a login node's value that does not exist here), else
/// `/tmp/drun-<uid>`. Both are local file systems: overlay refuses upper directories on NFS and GPFS.
pub fn default_state_dir() -> PathBuf {
    if !crate::sys::userns::is_rootless() {
        return PathBuf::from("/run/drun");
    }
    let (uid, _) = crate::sys::userns::caller_ids();
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        use std::os::unix::fs::MetadataExt;
        let usable = d.is_absolute()
            && fs::metadata(&d).is_ok_and(|m| m.is_dir() && m.uid() == uid)
            && nix::unistd::access(&d, nix::unistd::AccessFlags::W_OK).is_ok();
        if usable {
            return d.join("drun");
        }
        tracing::debug!(dir = %d.display(), "XDG_RUNTIME_DIR is not usable here; using a directory under /tmp");
    }
    let host_uid = crate::sys::userns::current().map_or(uid, |r| r.uid);
    PathBuf::from(format!("/tmp/drun-{host_uid}"))
}

/// Creates the state directory and its `containers/` and `libcontainer/` privately (0700) and refuses one that
/// someone else made or others may write to: what it holds decides what drun deletes and kills, its run
/// directories hold root file systems (setuid binaries and device nodes of images, reachable by any user who
/// can traverse to them) and the containers' configurations (their environment, secrets included). A directory
/// of ours that others may only read or traverse (an older drun made `/run/drun` 0711 and its run directories
/// 0755) is made private.
pub fn ensure_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Err(e) = fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    let uid = if crate::sys::userns::is_rootless() {
        crate::sys::userns::caller_ids().0
    } else {
        nix::unistd::geteuid().as_raw()
    };
    // Every directory above it too: one that someone else may write to lets them rename the state directory away
    // and put a tree of theirs in its place (whose records drun would then believe). A sticky directory (/tmp)
    // is fine: only the owner of an entry can rename it.
    // (Rootless, in drun's user namespace, the host's root and every other unmapped user look alike: only the
    // mode can be checked there, and what a replaced tree could make drun do is limited to the caller's rights.)
    let real = fs::canonicalize(dir)?;
    let rootless = crate::sys::userns::is_rootless();
    for a in real.ancestors().skip(1) {
        let m = fs::metadata(a)?;
        let trusted = |owner: u32| rootless || owner == 0 || owner == uid;
        if let Some(why) = crate::sys::safe_fs::open_to_others(&m, trusted, true) {
            return Err(std::io::Error::other(format!(
                "the state directory {} is inside {}, which {why}: another user could replace it; choose another \
                 with --state",
                dir.display(),
                a.display(),
            )));
        }
    }
    for d in [dir.to_path_buf(), containers_dir(dir), libcontainer_dir(dir)] {
        crate::sys::safe_fs::create_dir_mode(&d, 0o700)?;
        let f = crate::sys::safe_fs::open_dir_nofollow(&d)?;
        let m = f.metadata()?;
        if m.uid() != uid || m.mode() & 0o022 != 0 {
            return Err(std::io::Error::other(format!(
                "the state directory {} is not a private directory of yours (it must be owned by you and \
                 writable by no one else): remove it or choose another with --state",
                d.display()
            )));
        }
        if m.mode() & 0o077 != 0 {
            f.set_permissions(fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Field `n` (1-based, n ≥ 3) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = crate::sys::safe_fs::read_system(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(n - 3).map(str::to_string)
}

/// A process's start time in clock ticks after boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    stat_field(pid, 22)?.parse().ok()
}

/// A process's parent (field 4 of /proc/PID/stat).
pub fn parent_pid(pid: i32) -> Option<i32> {
    stat_field(pid, 4)?.parse().ok()
}

pub fn containers_dir(state: &Path) -> PathBuf {
    state.join("containers")
}

pub fn libcontainer_dir(state: &Path) -> PathBuf {
    state.join("libcontainer")
}

/// The state directory's lock on container names, held from a named run's check that its name is free until its
/// record holds the name.
pub struct NamesLock(#[allow(dead_code, reason = "held, never read")] Flock<File>);

impl NamesLock {
    pub fn take(state: &Path) -> std::io::Result<NamesLock> {
        ensure_private(state)?;
        let f = crate::sys::safe_fs::open_or_create(&state.join("names.lock"), 0o600)?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map(NamesLock)
            .map_err(|(_, e)| e.into())
    }
}

/// A live run's directory and lock.
pub struct RunDir {
    pub path: PathBuf,
    _lock: Flock<File>,
}

impl RunDir {
    /// Creates the directory under a hidden name (which reapers skip while its creator lives), locks it, and only
    /// then gives it its name: a concurrent `reap_stale` never sees an unlocked new run directory. The hidden name
    /// says who creates it (`.<id>.<pid>-<start>-<pid ns>`), so that a reaper knows at once when that drun died.
    pub fn create(state: &Path, id: &str) -> std::io::Result<RunDir> {
        let containers = containers_dir(state);
        let path = containers.join(id);
        let hidden = containers.join(match Supervisor::this_process() {
            Some(me) => format!(".{id}.{}-{}-{}", me.pid, me.start, ns_number(&me.pid_ns)),
            None => format!(".{id}"),
        });
        ensure_private(state)?;
        crate::sys::safe_fs::create_dir_mode(&hidden, 0o700)?;
        crate::failpoint::hit("run-dir-hidden");
        let f = crate::sys::safe_fs::create_new(&hidden.join("lock"), 0o600)?;
        let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| std::io::Error::from(e))?;
        fs::rename(&hidden, &path)?;
        Ok(RunDir { path, _lock: lock })
    }

    pub fn write_info(&self, info: &RunInfo) -> std::io::Result<()> {
        write_info(&self.path, info)
    }

    /// Writes how the run ended into its lock file, where `drun wait` reads it once the lock is free: also when
    /// the directory is gone by then (a foreground or `--rm` run).
    pub fn write_exit(&self, exit: &ExitRecord) -> std::io::Result<()> {
        write_exit(&self._lock, exit)
    }
}

pub(crate) fn write_info(dir: &Path, info: &RunInfo) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(info).expect("run info serialises");
    crate::sys::safe_fs::write_replace(&dir.join("info.json"), &bytes, 0o600)
}

fn write_exit(lock: &File, exit: &ExitRecord) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(exit).expect("exit record serialises");
    lock.set_len(0)?;
    lock.write_all_at(&bytes, 0)
}

/// How a run ended, as written into its lock file (`lock`: an open descriptor of it); `None` when nothing was.
pub(crate) fn read_exit(lock: &File) -> Option<ExitRecord> {
    let mut buf = vec![0u8; 4096];
    let n = lock.read_at(&mut buf, 0).ok()?;
    serde_json::from_slice(&buf[..n]).ok()
}

/// A run's record, if it is one drun could have written: a 64-hex-digit id, and a cgroup (if any) that is the
/// container's own `…/drun-<short id>`. Clean-up deletes and kills by what it says, so nothing else is believed.
pub(crate) fn read_info(dir: &Path) -> Option<RunInfo> {
    let bytes = crate::sys::safe_fs::read_bounded(&dir.join("info.json"), 1 << 20).ok()?;
    let info: RunInfo = serde_json::from_slice(&bytes).ok()?;
    let id_ok = info.id.len() == 64 && info.id.bytes().all(|b| b.is_ascii_hexdigit());
    let cgroup_ok = info.cgroup_path.is_empty()
        || (info
            .cgroup_path
            .ends_with(&format!("/drun-{}", &info.id[..12.min(info.id.len())]))
            && !info.cgroup_path.split('/').any(|c| c == ".." || c == "."));
    let dirs_ok = info.cgroup_dirs.iter().all(|d| {
        !d.starts_with('/')
            && d.ends_with(&format!("/drun-{}", &info.id[..12.min(info.id.len())]))
            && !d.split('/').any(|c| c == ".." || c == "." || c.is_empty())
    });
    let named = dir.file_name().is_some_and(|n| n == info.id.as_str());
    if id_ok && cgroup_ok && dirs_ok && named {
        Some(info)
    } else {
        tracing::warn!(dir = %dir.display(), "ignoring a run record drun did not write");
        None
    }
}

/// Run directories: real directories only (a symlink planted there leads nowhere).
pub(crate) fn run_dirs(state: &Path) -> Vec<fs::DirEntry> {
    fs::read_dir(containers_dir(state))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the run directory's lock is held by a live drun. The probe is a shared lock: probes do not get in
/// each other's way, and a reaper's exclusive attempt fails only for the moment one lasts.
pub(crate) fn is_live(dir: &Path) -> bool {
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dir.join("lock"))
    else {
        return false;
    };
    Flock::lock(f, FlockArg::LockSharedNonblock).is_err() && !supervisor_died(dir)
}

/// Live containers, oldest first.
pub fn list(state: &Path) -> Vec<RunInfo> {
    let mut out: Vec<RunInfo> = run_dirs(state)
        .into_iter()
        .map(|e| e.path())
        .filter(|p| is_live(p))
        .filter_map(|p| read_info(&p))
        .filter(|i| i.exit.is_none())
        .collect();
    out.sort_by_key(|i| i.started);
    out
}

/// Layers used by live containers.
pub fn live_layers(state: &Path) -> Vec<String> {
    list(state).into_iter().flat_map(|i| i.layers).collect()
}

/// Cleans up after drun processes that died while running a container. Returns how many runs were reaped.
pub fn reap_stale(state: &Path) -> usize {
    let mut n = 0;
    for e in run_dirs(state) {
        let dir = e.path();
        // Being created (see RunDir::create), unless a drun died in the moment between creating and naming it.
        if being_created(&e) {
            continue;
        }
        // Take the lock ourselves so a concurrent reaper or a starting run cannot race us.
        let Ok(f) = crate::sys::safe_fs::open_or_create(&dir.join("lock"), 0o600) else {
            continue;
        };
        let lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((f, _)) if supervisor_died(&dir) => match take_from_orphan(state, &dir, f) {
                Some(lock) => lock,
                None => continue,
            },
            Err(_) => continue,
        };
        let info = read_info(&dir);
        match info {
            // A detached run that ended: its record and log stay until `drun rm`.
            Some(i) if i.exit.is_some() => continue,
            Some(mut i) if i.kept() => {
                tracing::debug!(dir = %dir.display(), "cleaning up after a monitor that died");
                let exit = ExitRecord {
                    monitor_killed: true,
                    ..ExitRecord::now(None)
                };
                cleanup_keeping_record(state, &dir, &i);
                i.exit = Some(exit.clone());
                i.pid = None;
                let _ = write_exit(&lock, &exit);
                if let Err(e) = write_info(&dir, &i) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot record how a container ended");
                }
            }
            info => {
                tracing::debug!(dir = %dir.display(), "cleaning up after a drun that died");
                cleanup(state, &dir, info.as_ref());
            }
        }
        n += 1;
    }
    // Shared squashfs mounts whose runs all died (their references dropped above, or never written).
    crate::run::shared_mount::sweep(state);
    n
}

/// The lock of a run whose drun died while a process it left holds the lock (a container's init that was never
/// started): ends the run's processes, then takes the lock once they are gone (within a few seconds).
fn take_from_orphan(state: &Path, dir: &Path, f: File) -> Option<Flock<File>> {
    let info = read_info(dir)?;
    tracing::debug!(dir = %dir.display(), "ending what a drun that died left holding its run's lock");
    if let (Some(pid), Some(start)) = (info.pid, info.pid_start) {
        if start_time(pid) == Some(start) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    remove_processes_and_cgroup(state, &info);
    let mut f = f;
    for _ in 0..100 {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(lock),
            Err((back, _)) => f = back,
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

/// The run directories [`reap_stale`] would clean up (their drun died), untouched.
pub fn stale_runs(state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in run_dirs(state) {
        let dir = e.path();
        if being_created(&e) || is_live(&dir) {
            continue;
        }
        // A detached run that ended keeps its record and log until `drun rm`: not debris.
        if read_info(&dir).is_some_and(|i| i.exit.is_some()) {
            continue;
        }
        out.push(dir);
    }
    out
}

/// Removes everything of one run: processes and cgroup, mounts, libcontainer state, the directory.
pub fn cleanup(state: &Path, dir: &Path, info: Option<&RunInfo>) {
    if let Some(info) = info {
        remove_processes_and_cgroup(state, info);
    }
    remove_mounts_and_dir(state, dir);
}

/// [`cleanup`] once nothing of the container can run any more (its init was reaped, and with it every process of
/// its pid namespace): the cgroup is removed on a second thread while the root file system is unmounted and the
/// directory removed.
pub fn cleanup_exited(state: &Path, dir: &Path, info: &RunInfo) {
    std::thread::scope(|s| {
        s.spawn(|| remove_processes_and_cgroup(state, info));
        remove_mounts_and_dir(state, dir);
    });
}

fn remove_processes_and_cgroup(state: &Path, info: &RunInfo) {
    let version = if info.cgroup_v2 {
        Version::V2
    } else {
        Version::V1 { memsw: false }
    };
    CgroupPlan::existing(version, info.cgroup_path.clone(), info.cgroup_dirs.clone()).remove();
    if let (true, Some(pid), Some(start)) = (info.cgroup_path.is_empty(), info.pid, info.pid_start) {
        // The container's init is PID 1 of its namespace (or the whole container with --pid host and no
        // cgroup: then only that process): killing it ends the namespace.
        if start_time(pid) == Some(start) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = fs::remove_dir_all(libcontainer_dir(state).join(&info.id));
}

/// What a detached run's directory keeps once its container ended: the lock, the record, the container's log
/// (`crate::run::logfile`) and the monitor's own messages.
fn kept_file(name: &str) -> bool {
    matches!(
        name,
        "lock" | "info.json" | crate::run::logfile::MONITOR_LOG | crate::run::health::HEALTH_FILE
    ) || crate::run::logfile::is_log_file(name)
}

/// [`cleanup`] of a run whose record and log stay (`RunInfo::kept`): everything else of the run goes.
pub fn cleanup_keeping_record(state: &Path, dir: &Path, info: &RunInfo) {
    remove_processes_and_cgroup(state, info);
    unmount(state, dir);
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_name().to_str().is_some_and(kept_file) {
            continue;
        }
        let path = e.path();
        if let Err(e) = crate::image::store::remove_tree(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove what a run left");
        }
    }
}

/// Unmounts the run's file systems, then drops its references to the node's shared squashfs mounts (unmounted
/// when it was the last run using them): before the directory goes, so that a clean-up killed half-way is done
/// again by the next `reap_stale`.
fn unmount(state: &Path, dir: &Path) {
    // The tmpfs of writable layers kept in memory last: the overlays above use it.
    for m in [
        "rootfs",
        "squash",
        "netns",
        "project/merged",
        crate::run::rootfs::MEMORY_DIR,
    ] {
        let _ = nix::mount::umount2(
            &dir.join(m),
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        );
    }
    if let Some(id) = dir.file_name().and_then(|n| n.to_str()) {
        crate::run::shared_mount::release(state, id);
    }
}

fn remove_mounts_and_dir(state: &Path, dir: &Path) {
    unmount(state, dir);
    if let Err(e) = crate::image::store::remove_tree(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a run directory");
    }
}
