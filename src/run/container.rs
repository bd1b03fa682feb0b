//! Running a container: image → root file system → spec → libcontainer → supervision → clean-up.
//!
//! libcontainer creates the container with raw clone3 and runs Rust code in the child, so it must be called from
//! a single-threaded process: the pull (tokio, writer threads) finishes and drops its threads before anything
//! here starts. The container's init is drun's child; drun waits for it itself (no automatic reaper) and forwards
//! signals to it.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::image::pull::{pull, PullOptions};
use crate::image::registry::config::Config;
use crate::image::source::{lookup_names, ImageSource};
use crate::image::store::{ImageRecord, Store};
use crate::plan::{MountSpec, NetworkMode, PullPolicy, RunPlan, DEFAULT_PATH};
use crate::run::cgroups::{CgroupPlan, Version};
use crate::run::rootfs;
use crate::run::spec::{self, SpecInputs};
use crate::run::state::{self, RunDir, RunInfo};
use crate::run::user;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pull(#[from] crate::image::pull::PullError),
    #[error(transparent)]
    Store(#[from] crate::image::store::StoreError),
    #[error("image {0} is not in the store and --pull=never was given")]
    NotPulled(String),
    #[error("image config of {image} is unreadable: {message}")]
    Config { image: String, message: String },
    #[error("no command specified: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("a container named {0:?} is already running")]
    NameInUse(String),
    #[error("failed to prepare the container: {what}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Cgroup(#[from] crate::run::cgroups::CgroupError),
    #[error("--init needs catatonit (Debian package `catatonit`), which is not installed")]
    NoInit,
    #[error("libcontainer failed to {what}")]
    Runtime {
        what: &'static str,
        source: libcontainer::error::LibcontainerError,
    },
    #[error("{path}: {message}")]
    Exec { path: String, message: String, code: i32 },
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error(transparent)]
    Seccomp(#[from] crate::run::seccomp::FilterError),
    #[error("a run has at most one copy-on-write (overlay) mount")]
    TwoOverlays,
    #[error("--require-limits: cannot enforce {limits}: {reason}")]
    Limits { limits: String, reason: String },
}

impl RunError {
    /// The exit status this error maps to (125 unless the command itself could not be run).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Exec { code, .. } => *code,
            _ => crate::exit::DRUN_ERROR,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Makes sure the image is in the store per the pull policy and returns its record, with its layers unpacked
/// for this process's ID mapping (a rootless `--userns keep-id` run needs its own copies: pulled again, from
/// `--blob-cache` when it has the blobs).
pub fn ensure_image(store: &Store, cfg: &Config, plan: &RunPlan, quiet: bool) -> Result<ImageRecord, RunError> {
    let record = ensure_record(store, cfg, plan, quiet)?;
    if record.layers.iter().all(|l| store.has_layer(store.idmap(), &l.key())) {
        return Ok(record);
    }
    if plan.pull == PullPolicy::Never {
        return Err(RunError::Config {
            image: record.name.clone(),
            message: format!(
                "its layers are not unpacked for this ID mapping ({}) and --pull=never was given",
                store.idmap()
            ),
        });
    }
    tracing::debug!(image = %record.name, idmap = store.idmap(), "unpacking the image's layers for this ID mapping");
    let source = ImageSource::parse(&record.name).map_err(|e| RunError::Config {
        image: record.name.clone(),
        message: e.to_string(),
    })?;
    let opts = PullOptions {
        platform: plan.platform.clone(),
        quiet,
    };
    pull(store, cfg, &source, &opts)?;
    Ok(store.image(&record.name)?.unwrap_or(record))
}

fn ensure_record(store: &Store, cfg: &Config, plan: &RunPlan, quiet: bool) -> Result<ImageRecord, RunError> {
    // The warm path: no reference parsing at all when the store already knows the name.
    if plan.pull != PullPolicy::Always {
        if let Some(r) = store.image_by_alias(&plan.image)? {
            return Ok(r);
        }
    }
    let source = ImageSource::parse(&plan.image).map_err(|e| RunError::Config {
        image: plan.image.clone(),
        message: e.to_string(),
    })?;
    let names = lookup_names(&plan.image);
    let find = || {
        let r = store.find_image(&plan.image, &names)?;
        store.save_alias(&plan.image, &r.name)?;
        Ok::<_, crate::image::store::StoreError>(r)
    };
    let opts = PullOptions {
        platform: plan.platform.clone(),
        quiet,
    };
    match plan.pull {
        PullPolicy::Always => {
            pull(store, cfg, &source, &opts)?;
            Ok(find()?)
        }
        PullPolicy::Never => find().map_err(|_| RunError::NotPulled(plan.image.clone())),
        PullPolicy::Missing => match find() {
            Ok(r) => Ok(r),
            Err(_) => {
                let report = pull(store, cfg, &source, &opts)?;
                // A docker archive records its own names; anything else is found under its canonical name.
                match report.records.into_iter().next() {
                    Some(r) if store.image(&source.canonical_name())?.is_none() => Ok(r),
                    _ => Ok(find()?),
                }
            }
        },
    }
}

/// The process arguments by Docker's rules: an `--entrypoint` replaces the image's Entrypoint and drops its Cmd;
/// a command replaces Cmd.
pub fn resolve_args(
    plan: &RunPlan,
    image_entrypoint: &[String],
    image_cmd: &[String],
) -> Result<Vec<String>, RunError> {
    let (entry, cmd): (Vec<String>, Vec<String>) = match &plan.entrypoint {
        Some(e) => (e.clone(), plan.command.clone().unwrap_or_default()),
        None => (
            image_entrypoint.to_vec(),
            plan.command.clone().unwrap_or_else(|| image_cmd.to_vec()),
        ),
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(RunError::NoCommand);
    }
    Ok(args)
}

/// Environment: PATH and HOSTNAME defaults, the image's Env, HOME from the user, then the plan's settings.
pub fn resolve_env(plan: &RunPlan, image_env: &[String], hostname: &str, home: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), hostname.into()),
    ];
    let set = |k: &str, v: &str, env: &mut Vec<(String, String)>| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v, &mut env);
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        set("HOME", home, &mut env);
    }
    if plan.tty && !env.iter().any(|(k, _)| k == "TERM") {
        set("TERM", "xterm", &mut env);
    }
    for (k, v) in &plan.env {
        set(k, v, &mut env);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Checks, before anything starts, that `args[0]` can be executed in the root file system: 127 if it does not
/// exist, 126 if it is not an executable file.
fn check_executable(
    root: &Path,
    mounts: &[MountSpec],
    args: &[String],
    env: &[String],
    cwd: &str,
) -> Result<(), RunError> {
    use std::os::unix::fs::PermissionsExt;
    let prog = &args[0];
    let candidates: Vec<String> = if prog.contains('/') {
        vec![if prog.starts_with('/') {
            prog.clone()
        } else {
            format!("{}/{prog}", cwd.trim_end_matches('/'))
        }]
    } else {
        let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{}/{prog}", d.trim_end_matches('/')))
            .collect()
    };
    let mut not_exec = None;
    for c in &candidates {
        // A path below a volume is looked up on the host; below a tmpfs it cannot be known yet.
        let meta = match mount_covering(mounts, c) {
            Some((MountSpec::Bind { source, .. } | MountSpec::Overlay { source, .. }, rest)) => {
                std::fs::metadata(if rest.is_empty() {
                    source.clone()
                } else {
                    source.join(rest)
                })
                .ok()
            }
            Some((MountSpec::Tmpfs { .. }, _)) => return Ok(()),
            None => rootfs::stat_in_root(root, c),
        };
        if let Some(m) = meta {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(());
            }
            not_exec.get_or_insert((
                c.clone(),
                if m.is_dir() {
                    "is a directory"
                } else {
                    "permission denied: not executable"
                },
            ));
        }
    }
    match not_exec {
        Some((path, why)) => Err(RunError::Exec {
            path,
            message: format!("cannot execute: {why}"),
            code: crate::exit::CANNOT_EXECUTE,
        }),
        None if prog.contains('/') => Err(RunError::Exec {
            path: prog.clone(),
            message: "no such file or directory in the image".into(),
            code: crate::exit::NOT_FOUND,
        }),
        None => Err(RunError::Exec {
            path: prog.clone(),
            message: "executable file not found in $PATH".into(),
            code: crate::exit::NOT_FOUND,
        }),
    }
}

/// The last mount (later ones shadow earlier ones) whose destination contains `path`, and the rest of `path`
/// below that destination (relative, empty for the destination itself).
fn mount_covering<'a, 'p>(mounts: &'a [MountSpec], path: &'p str) -> Option<(&'a MountSpec, &'p str)> {
    mounts.iter().rev().find_map(|m| {
        let dest = match m {
            MountSpec::Bind { destination, .. }
            | MountSpec::Tmpfs { destination, .. }
            | MountSpec::Overlay { destination, .. } => destination.trim_end_matches('/'),
        };
        let rest = path.strip_prefix(dest)?;
        (rest.is_empty() || rest.starts_with('/')).then(|| (m, rest.trim_start_matches('/')))
    })
}

fn random_id() -> String {
    let mut b = [0u8; 32];
    #[allow(clippy::disallowed_methods)] // the kernel's device
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    hex::encode(b)
}

/// `/dev/shm` size: the plan's, else the memory limit, else half of RAM (what a host's /dev/shm gets). Docker's
/// 64 MiB default is the classic cause of PyTorch DataLoader bus errors.
fn shm_bytes(plan: &RunPlan) -> u64 {
    if let Some(s) = plan.shm_size {
        return s.0;
    }
    if let Some(m) = plan.memory {
        return m.0;
    }
    let total_kib = crate::safe_fs::read_system("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(2 << 20);
    total_kib * 1024 / 2
}

/// Whether an init for `--init` is installed.
pub fn init_available() -> bool {
    find_init().is_some()
}

/// catatonit, the init for `--init`: statically linked, so it runs in any image.
fn find_init() -> Option<PathBuf> {
    [
        "/usr/bin/catatonit",
        "/usr/libexec/catatonit/catatonit",
        "/usr/libexec/podman/catatonit",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// A network namespace with only loopback, up (as `docker run --network none` gives), bound to `path`. Made
/// in a forked child, which shares drun's mount namespace: drun itself never leaves the host's network
/// namespace (rootless, it could not return to it).
fn make_netns(path: &Path) -> Result<(), RunError> {
    use nix::sched::{unshare, CloneFlags};
    crate::safe_fs::create_new(path, 0o600).map_err(io("create the network namespace file"))?;
    let (r, w) = nix::unistd::pipe().map_err(|e| io("create a pipe")(e.into()))?;
    // SAFETY: drun is single-threaded while it runs containers; the child makes a few syscalls and exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| io("fork")(e.into()))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            // Nothing here allocates: a fork child may only make plain system calls.
            let step = (|| -> Result<(), (&'static str, nix::errno::Errno)> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("create a network namespace", e))?;
                nix::mount::mount(
                    Some("/proc/self/ns/net"),
                    path,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
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
            // SAFETY: leaving the forked child without running drun's destructors.
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

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass, which outlives the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The files Docker provides in /etc, written into the run directory and bind-mounted.
fn etc_files(dir: &Path, hostname: &str) -> Result<Vec<(PathBuf, &'static str)>, RunError> {
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    );
    let resolv = crate::safe_fs::read_system("/etc/resolv.conf").unwrap_or_default();
    let files = [
        ("hosts", hosts, "/etc/hosts"),
        ("hostname", format!("{hostname}\n"), "/etc/hostname"),
        ("resolv.conf", resolv, "/etc/resolv.conf"),
    ];
    let mut out = Vec::new();
    for (name, content, dst) in files {
        let p = dir.join(name);
        // Bind-mounted into the container, where any of its users reads them; the run directory keeps them from
        // the host's other users.
        crate::safe_fs::write_new(&p, content.as_bytes(), 0o644).map_err(io(format!("write {}", p.display())))?;
        out.push((p, dst));
    }
    Ok(out)
}

/// Limits a rootless run cannot enforce: one warning naming each, or an error with `--require-limits`.
fn check_limits(cgroup: &CgroupPlan, plan: &RunPlan) -> Result<(), RunError> {
    let missing = cgroup.unenforced(plan);
    if missing.is_empty() {
        return Ok(());
    }
    let limits = missing.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(", ");
    let mut reasons: Vec<&str> = missing.iter().map(|(_, r)| r.as_str()).collect();
    reasons.dedup();
    let reason = reasons.join("; ");
    if plan.require_limits {
        return Err(RunError::Limits { limits, reason });
    }
    tracing::warn!("limits NOT enforced: {limits} ({reason}); pass --require-limits to refuse to run instead");
    Ok(())
}

/// What a caller (the workflow runner) hooks into a run.
#[derive(Default)]
pub struct RunHooks<'a> {
    /// When set, the container's stdout and stderr share one pipe (so their order is kept); drun copies it to its
    /// own stdout and to this file.
    pub log: Option<&'a mut File>,
    /// Called once the image's root file system, the command's environment and working directory are known,
    /// before the container is created; an error ends the run (e.g. a program the caller needs is missing).
    pub before_start: Option<&'a mut dyn FnMut(&StartView) -> Result<(), RunError>>,
    /// Called once the container has exited (whatever its status, also after an interrupt), before anything is
    /// unmounted, with the host path of the copy-on-write mount as the container left it.
    pub after_exit: Option<&'a mut dyn FnMut(&ExitView)>,
}

/// The container as it will start, for a [`RunHooks::before_start`] check.
pub struct StartView<'a> {
    root: &'a Path,
    mounts: &'a [MountSpec],
    env: &'a [String],
    cwd: &'a str,
}

impl StartView<'_> {
    /// Whether `program` is an executable the container's command could run (looked up in its PATH, inside its
    /// root file system and volumes, as the command itself is).
    pub fn has_program(&self, program: &str) -> bool {
        check_executable(
            self.root,
            self.mounts,
            std::slice::from_ref(&program.to_string()),
            self.env,
            self.cwd,
        )
        .is_ok()
    }
}

/// What the container left, seen from the host, while it still exists.
pub struct ExitView<'a> {
    /// The copy-on-write mount ([`MountSpec::Overlay`]) as the container left it; `None` unless `ended`.
    pub overlay: Option<&'a Path>,
    /// Every process of the container has ended: what it wrote can no longer change under a copy.
    pub ended: bool,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The container's status (128+N for signal N).
    pub code: i32,
    /// drun received SIGINT or SIGTERM while the container ran.
    pub interrupted: bool,
}

/// Runs `plan` in the foreground and returns the container's exit status.
pub fn run(store: &Store, cfg: &Config, plan: &RunPlan, state_dir: &Path, quiet: bool) -> Result<i32, RunError> {
    run_with(store, cfg, plan, state_dir, quiet, &mut RunHooks::default()).map(|o| o.code)
}

/// [`run`] with hooks; returns how the container ended.
pub fn run_with(
    store: &Store,
    cfg: &Config,
    plan: &RunPlan,
    state_dir: &Path,
    quiet: bool,
    hooks: &mut RunHooks,
) -> Result<Outcome, RunError> {
    let record = ensure_image(store, cfg, plan, quiet)?;
    let config_bytes = store
        .read_blob(&record.config_digest)?
        .ok_or_else(|| RunError::Config {
            image: record.name.clone(),
            message: "config blob missing from the store".into(),
        })?;
    let image_cfg =
        oci_spec::image::ImageConfiguration::from_reader(&config_bytes[..]).map_err(|e| RunError::Config {
            image: record.name.clone(),
            message: e.to_string(),
        })?;
    let icfg = image_cfg.config().clone().unwrap_or_default();

    state::reap_stale(state_dir);
    if let Some(n) = &plan.name {
        if state::list(state_dir).iter().any(|i| i.name.as_deref() == Some(n)) {
            return Err(RunError::NameInUse(n.clone()));
        }
    }
    let id = random_id();
    let short = id[..12].to_string();
    let run_dir = RunDir::create(state_dir, &id).map_err(io("create the run directory"))?;
    let guard = Cleanup {
        state: state_dir.to_path_buf(),
        dir: run_dir.path.clone(),
        info: None,
        container: None,
        console_socket: None,
        warmup: None,
        exited: false,
    };
    run_in(
        store, plan, &record, &icfg, state_dir, &id, &short, &run_dir, guard, hooks,
    )
}

/// Everything a run leaves behind, removed on drop whatever happened.
struct Cleanup {
    state: PathBuf,
    dir: PathBuf,
    info: Option<RunInfo>,
    container: Option<libcontainer::container::Container>,
    console_socket: Option<PathBuf>,
    /// Stopped once the container has started (its processes are in their cgroup).
    warmup: Option<crate::run::warmup::Warmup>,
    /// The container's init was reaped and nothing of it can run any more.
    exited: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // First, so that the cgroup is not being created while it is removed.
        self.warmup = None;
        if let Some(mut c) = self.container.take() {
            if let Err(e) = c.delete(true) {
                tracing::warn!(error = %e, "libcontainer could not delete the container; cleaning up by hand");
            }
        }
        if let Some(p) = &self.console_socket {
            let _ = std::fs::remove_file(p);
        }
        // Unmounts the root file system and network namespace, removes cgroups and the run directory.
        match &self.info {
            Some(info) if self.exited => state::cleanup_exited(&self.state, &self.dir, info),
            info => state::cleanup(&self.state, &self.dir, info.as_ref()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    store: &Store,
    plan: &RunPlan,
    record: &ImageRecord,
    icfg: &oci_spec::image::Config,
    state_dir: &Path,
    id: &str,
    short: &str,
    run_dir: &RunDir,
    mut guard: Cleanup,
    hooks: &mut RunHooks,
) -> Result<Outcome, RunError> {
    let dir = &run_dir.path;
    let cgroup = CgroupPlan::prepare(short)?;
    check_limits(&cgroup, plan)?;
    if let (Some(size), crate::plan::Sharing::Host) = (plan.shm_size, plan.ipc_mode()) {
        tracing::warn!("--shm-size {size} is NOT applied: with --ipc host the container uses the host's /dev/shm");
    }
    let mut info = RunInfo {
        id: id.to_string(),
        name: plan.name.clone(),
        image: record.name.clone(),
        command: vec![],
        pid: None,
        started: time::OffsetDateTime::now_utc(),
        cgroup_path: cgroup.path.clone(),
        pid_start: None,
        cgroup_v2: cgroup.version == Version::V2,
        layers: record.layers.iter().map(|l| l.key()).collect(),
        labels: plan.labels.clone(),
    };
    // Registered under the store's shared lock: garbage collection either ran before or sees this run's layers.
    let (root, _kind) = {
        let _shared = store.lock_shared()?;
        let layers: Vec<PathBuf> = record
            .layers
            .iter()
            .map(|l| store.layer_root(store.idmap(), &l.key()))
            .collect();
        if let Some(missing) = layers.iter().find(|p| !p.is_dir()) {
            return Err(RunError::Config {
                image: record.name.clone(),
                message: format!("layer {} is missing; pull the image again", missing.display()),
            });
        }
        run_dir.write_info(&info).map_err(io("write run info"))?;
        guard.info = Some(info.clone());
        // The container's cgroup is created (and the kernel's migration path warmed) on a thread while the root
        // file system and the spec are prepared; recorded in `info` first, so clean-up finds it whatever happens.
        let (cg, limits) = (cgroup.clone(), plan.clone());
        guard.warmup = Some(crate::run::warmup::Warmup::start(Box::new(move || {
            cg.create_dirs(&limits)?;
            cg.write_limits(&limits)
        })));
        rootfs::prepare(dir, &layers)?
    };
    // A copy-on-write mount (a workflow's project directory): its own overlay with the host directory as the
    // lower layer, bind-mounted before every other mount, so volumes and artifact mounts below it land on top.
    let mut overlays = plan.mounts.iter().filter_map(|m| match m {
        MountSpec::Overlay { source, destination } => Some((source, destination)),
        _ => None,
    });
    let overlay = overlays.next();
    if overlays.next().is_some() {
        return Err(RunError::TwoOverlays);
    }
    let overlay_view = match overlay {
        Some((source, _)) => Some(rootfs::prepare_project(dir, source)?),
        None => None,
    };
    let owned_plan;
    let plan = match (overlay, &overlay_view) {
        (Some((_, destination)), Some(view)) => {
            let mut with = plan.clone();
            with.mounts.retain(|m| !matches!(m, MountSpec::Overlay { .. }));
            with.mounts.insert(
                0,
                MountSpec::Bind {
                    source: view.clone(),
                    destination: destination.clone(),
                    read_only: false,
                },
            );
            owned_plan = with;
            &owned_plan
        }
        _ => plan,
    };

    let hostname = plan.hostname.clone().unwrap_or_else(|| short.to_string());
    let entry = icfg.entrypoint().clone().unwrap_or_default();
    let cmd = icfg.cmd().clone().unwrap_or_default();
    let mut args = resolve_args(plan, &entry, &cmd)?;
    let cwd = plan
        .workdir
        .clone()
        .or_else(|| icfg.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let keep_id = crate::sys::userns::current().filter(|ns| ns.mode == crate::sys::userns::UsernsMode::KeepId);
    let user_spec = match (&plan.user, keep_id) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(ns)) => Some(user::add_keep_id_entry(&root, ns)?),
        (None, None) => icfg.user().clone(),
    };
    let mut user = user::resolve(&root, user_spec.as_deref())?;
    if let Some(ns) = crate::sys::userns::current() {
        user::check_mapped(&mut user, user_spec.as_deref().unwrap_or("root"), ns)?;
    }
    let env = resolve_env(plan, &icfg.env().clone().unwrap_or_default(), &hostname, &user.home);
    check_executable(&root, &plan.mounts, &args, &env, &cwd)?;
    if let Some(before) = hooks.before_start.as_mut() {
        before(&StartView {
            root: &root,
            mounts: &plan.mounts,
            env: &env,
            cwd: &cwd,
        })?;
    }
    if !cwd.starts_with('/') {
        return Err(RunError::Exec {
            path: cwd,
            message: "the working directory must be absolute".into(),
            code: crate::exit::DRUN_ERROR,
        });
    }
    // Created where it will be seen: in a volume's source when one covers it, else in the root file system.
    match mount_covering(&plan.mounts, &cwd) {
        Some((MountSpec::Bind { source, .. }, rest)) => {
            if !rest.is_empty() {
                rootfs::mkdir_in_root(source, rest).map_err(io(format!("create the working directory {cwd}")))?;
            }
        }
        Some((MountSpec::Tmpfs { .. } | MountSpec::Overlay { .. }, _)) => {}
        None => rootfs::mkdir_in_root(&root, &cwd).map_err(io(format!("create the working directory {cwd}")))?,
    }

    let init = if plan.init {
        let p = find_init().ok_or(RunError::NoInit)?;
        let group = plan.init_signals_group.then(|| "-g".to_string());
        args = std::iter::once("/dev/init".to_string())
            .chain(group)
            .chain(std::iter::once("--".to_string()))
            .chain(args)
            .collect();
        Some(p)
    } else {
        None
    };
    info.command = args.clone();
    let netns = if plan.network == NetworkMode::None {
        let p = dir.join("netns");
        make_netns(&p)?;
        Some(p)
    } else {
        None
    };
    let etc = etc_files(dir, &hostname)?;
    let gpus = crate::gpu::prepare(
        plan.gpus.as_ref(),
        &plan.devices,
        &plan.cdi_spec_dirs,
        &env,
        &dir.join("cdi"),
    )?;
    guard.warmup.as_ref().expect("started above").prelude_result()?;
    cgroup.hide_host_hierarchy()?;
    let mut spec_json = spec::build(&SpecInputs {
        plan,
        args,
        env,
        cwd,
        user,
        rootfs: &root,
        hostname,
        shm_bytes: shm_bytes(plan),
        cgroup: &cgroup,
        etc_files: etc,
        netns,
        init,
    })?;
    if let Some(g) = gpus {
        g.apply(&mut spec_json, &root)?;
    }
    // libcontainer's delete() of a stopped container runs its poststop hooks, then removes its cgroups and state
    // directory, which `state::cleanup` removes as well (~1.5 ms of cgroup path lookups saved per run).
    let poststop_hooks = spec_json
        .pointer("/hooks/poststop")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|h| !h.is_empty());
    let filter = crate::run::seccomp::take_precompiled(&mut spec_json, store)?;
    // The spec holds the container's environment (secrets passed with -e): its owner's alone.
    let bundle = dir.join("bundle");
    crate::safe_fs::create_dir_mode(&bundle, 0o700).map_err(io("create the bundle"))?;
    crate::safe_fs::write_new(
        &bundle.join("config.json"),
        &serde_json::to_vec_pretty(&spec_json).expect("spec serialises"),
        0o600,
    )
    .map_err(io("write config.json"))?;

    // Made private with the state directory (`state::ensure_private`).
    let lc_root = state::libcontainer_dir(state_dir);
    let rt = |what| move |source| RunError::Runtime { what, source };
    let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(&lc_root)
        .map_err(rt("use its state directory"))?
        .validate_id()
        .map_err(rt("accept the container id"))?
        .with_executor(crate::run::seccomp::Executor { filter });
    if !plan.interactive {
        #[allow(clippy::disallowed_methods)] // the kernel's device
        let null = File::open("/dev/null").map_err(io("open /dev/null"))?;
        builder = builder.with_stdin(null);
    }
    // One pipe for stdout and stderr: the order of what the container writes is kept, for the log.
    let output = match &hooks.log {
        Some(_) => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RunError::Io {
                what: "create the output pipe".into(),
                source: e.into(),
            })?;
            let w2 = w.try_clone().map_err(io("duplicate the output pipe"))?;
            builder = builder.with_stdout(w).with_stderr(w2);
            Some(r)
        }
        None => None,
    };
    // With a terminal, libcontainer sends the pty master over a console socket, which it accepts only for a
    // "detached" container: its init is then re-parented, so drun becomes a child subreaper to stay its parent.
    let console = if plan.tty {
        let path = crate::run::tty::socket_path(short);
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(io("create the console socket"))?;
        guard.console_socket = Some(path.clone());
        builder = builder.with_console_socket(Some(&path));
        Some(listener)
    } else {
        None
    };
    // A detached init is re-parented, and with the host's pid namespace the container's processes outlive its
    // init: drun stays their parent, so that it can end every one of them (`reap::end_all`).
    let host_pids = plan.pid_mode() == crate::plan::Sharing::Host;
    let inherited = if plan.tty || host_pids {
        Some(crate::run::reap::become_subreaper().map_err(io("become a child subreaper"))?)
    } else {
        None
    };
    // The container's processes inherit ignored signals across exec: drun's own SIGPIPE (ignored by Rust) or a
    // SIGINT ignored by the shell that started drun in the background would reach them. Docker gives defaults.
    let ignored = DefaultSignals::set();
    // libcontainer creates the mount points in the root file system (into the run's upper layer) before the
    // spec's umask applies: under Docker's 0022, as runc would, not drun's private 0077. Nothing else creates
    // files meanwhile (the warm-up thread only writes existing cgroup files), and whatever libcontainer keeps
    // in its state directory stays behind the private state directory.
    let built = crate::safe_fs::with_umask(0o022, || {
        builder
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(plan.tty)
            .build()
    });
    drop(ignored);
    let container = built.map_err(rt("create the container"))?;
    // libcontainer links another nix version: carry the pid across as a plain integer.
    let pid = container.pid().map(|p| Pid::from_raw(p.as_raw()));
    guard.container = Some(container);
    info.pid = pid.map(Pid::as_raw);
    info.pid_start = pid.and_then(|p| state::start_time(p.as_raw()));
    run_dir.write_info(&info).map_err(io("write run info"))?;
    guard.info = Some(info);
    if let Some(f) = &plan.cidfile {
        // Docker refuses an existing cidfile too; made for the caller, under their umask.
        crate::safe_fs::write_new(f, id.as_bytes(), crate::safe_fs::for_caller(0o666))
            .map_err(io(format!("write {}", f.display())))?;
    }
    let pid = pid.ok_or_else(|| RunError::Io {
        what: "learn the container's pid".into(),
        source: std::io::Error::other("libcontainer reported none"),
    })?;

    // Signals are blocked only now: the container's process already exists with the default mask.
    let signals = forwarded_signals();
    signals.thread_block().map_err(|e| RunError::Io {
        what: "block signals".into(),
        source: e.into(),
    })?;
    let sfd = SignalFd::with_flags(
        &signals,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )
    .map_err(|e| RunError::Io {
        what: "create a signalfd".into(),
        source: e.into(),
    })?;
    guard
        .container
        .as_mut()
        .expect("container is set")
        .start()
        .map_err(rt("start the container"))?;
    guard.warmup = None;
    let master = match &console {
        Some(l) => Some(
            crate::run::tty::receive_master(l, std::time::Duration::from_secs(10))
                .map_err(io("receive the container's terminal"))?,
        ),
        None => None,
    };
    let _raw = master
        .as_ref()
        .filter(|_| std::io::IsTerminal::is_terminal(&std::io::stdin()))
        .map(|m| {
            crate::run::tty::copy_window_size(m.as_fd());
            crate::run::tty::RawMode::enter()
        });
    let mut log = Output {
        pipe: output.map(File::from),
        log: hooks.log.as_deref_mut(),
    };
    let status = supervise(pid, &sfd, master.as_ref(), plan.interactive, &mut log);
    if status.is_ok() && !poststop_hooks {
        // The init is reaped: nothing of the container runs outside its cgroup, which `Cleanup` removes.
        guard.container = None;
    }
    // With its own pid namespace, the reaped init took every process of the container with it.
    guard.exited = status.is_ok() && !host_pids;
    // Nothing is copied out of a container while any of its processes lives: with the host's pid namespace they
    // outlive the init, and an init that was not reaped may still run.
    let ended = guard.exited || crate::run::reap::end_all(status.is_err().then_some(pid), &cgroup, inherited.as_ref());
    if let Some(after) = hooks.after_exit.as_mut() {
        if !ended {
            tracing::error!("processes of the container survived SIGKILL: nothing is copied out of it");
        }
        after(&ExitView {
            overlay: overlay_view.as_deref().filter(|_| ended),
            ended,
        });
    }
    // Signals that came after the container exited are taken here: unblocked, they would kill drun before it
    // cleans up.
    let mut late_interrupt = false;
    while let Ok(Some(si)) = sfd.read_signal() {
        late_interrupt |= [libc::SIGINT, libc::SIGTERM].contains(&(si.ssi_signo as i32));
    }
    let _ = signals.thread_unblock();
    drop(guard);
    status.map(|mut o| {
        o.interrupted |= late_interrupt;
        o
    })
}

/// The container's output pipe (workflows) and where it goes besides drun's stdout.
struct Output<'a> {
    pipe: Option<File>,
    log: Option<&'a mut File>,
}

impl Output<'_> {
    /// Copies what is available now; the pipe is dropped once it is closed.
    fn pump(&mut self) {
        let Some(p) = self.pipe.as_mut() else { return };
        if !copy_available(p, self.log.as_deref_mut()) {
            self.pipe = None;
        }
    }
}

/// Signals drun ignores, set to their default action for as long as this lives, then ignored again.
struct DefaultSignals(Vec<(Signal, nix::sys::signal::SigAction)>);

impl DefaultSignals {
    fn set() -> DefaultSignals {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
        let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        let mut changed = Vec::new();
        for sig in Signal::iterator().filter(|s| ![Signal::SIGKILL, Signal::SIGSTOP].contains(s)) {
            // SAFETY: a null new action only reads the current one into `cur`, which outlives the call.
            let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
            let ignored = unsafe { libc::sigaction(sig as i32, std::ptr::null(), &mut cur) } == 0
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
            // SAFETY: restores the action saved by `set`.
            let _ = unsafe { nix::sys::signal::sigaction(*sig, old) };
        }
    }
}

/// Copies what the container wrote to its terminal before it exited.
fn drain(master: Option<&OwnedFd>, open: bool) {
    let Some(m) = master.filter(|_| open) else { return };
    if let Ok(dup) = m.try_clone() {
        copy_available(&mut File::from(dup), None);
    }
}

/// Copies what `src` holds now to drun's stdout (and `log`), without waiting. Returns false once `src` is closed
/// (EOF, or EIO from a terminal whose other side closed).
fn copy_available(src: &mut File, mut log: Option<&mut File>) -> bool {
    use std::io::{Read, Write};
    let _ = nix::fcntl::fcntl(
        src.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut buf = [0u8; 16384];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
                if let Some(l) = log.as_mut() {
                    let _ = l.write_all(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

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

/// Forwards signals to the container's init until it exits; a second SIGINT within 3 s kills it. With a
/// terminal, copies between drun's stdio and the container's pty master.
fn supervise(
    pid: Pid,
    sfd: &SignalFd,
    master: Option<&OwnedFd>,
    interactive: bool,
    output: &mut Output,
) -> Result<Outcome, RunError> {
    let mut interrupted = false;
    let mut master_open = master.is_some();
    let mut stdin_open = master.is_some() && interactive;
    // One File over the master for both directions (reads and writes on a pty master are independent).
    let mut term = master.map(|m| File::from(m.try_clone().expect("dup the terminal")));
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: pidfd_open(2) on our own child; the result is checked and then owned.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) } as i32;
    let pidfd = if raw >= 0 {
        // SAFETY: raw is a fresh descriptor we own.
        Some(unsafe { OwnedFd::from_raw_fd(raw) })
    } else {
        None
    };
    let mut last_int: Option<std::time::Instant> = None;
    loop {
        let stdin = std::io::stdin();
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
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
        let out_at = fds.len();
        let out_fd = output.pipe.as_ref().map(|p| p.as_fd());
        if let Some(fd) = out_fd {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let timeout = if pidfd.is_some() {
            PollTimeout::NONE
        } else {
            PollTimeout::from(100u16)
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(RunError::Io {
                    what: "wait for the container".into(),
                    source: e.into(),
                })
            }
        }
        let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        let (tty_ready, stdin_ready) = (master_open && ready(tty_at), stdin_open && ready(stdin_at));
        let out_ready = out_fd.is_some() && ready(out_at);
        drop(fds);
        if out_ready {
            output.pump();
        }
        if tty_ready {
            master_open = crate::run::tty::pump(term.as_mut().expect("master is open"), &mut std::io::stdout());
        }
        if stdin_ready {
            if let Some(w) = term.as_mut() {
                stdin_open = crate::run::tty::pump(&mut stdin.lock(), w);
            }
        }
        while let Ok(Some(si)) = sfd.read_signal() {
            let Ok(sig) = Signal::try_from(si.ssi_signo as i32) else {
                continue;
            };
            if sig == Signal::SIGWINCH {
                if let Some(m) = master {
                    // The kernel tells the container's foreground process group itself.
                    crate::run::tty::copy_window_size(m.as_fd());
                    continue;
                }
            }
            let now = std::time::Instant::now();
            let forced = sig == Signal::SIGINT && last_int.is_some_and(|t| now.duration_since(t).as_secs() < 3);
            if sig == Signal::SIGINT {
                last_int = Some(now);
            }
            interrupted |= matches!(sig, Signal::SIGINT | Signal::SIGTERM);
            let send = if forced { Signal::SIGKILL } else { sig };
            tracing::debug!(signal = %sig, forwarded = %send, "forwarding a signal to the container");
            let _ = kill(pid, send);
        }
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                drain(master, master_open);
                output.pump();
                return Ok(Outcome { code, interrupted });
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                drain(master, master_open);
                output.pump();
                return Ok(Outcome {
                    code: crate::exit::from_signal(sig as i32),
                    interrupted,
                });
            }
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => {
                return Err(RunError::Io {
                    what: "wait for the container".into(),
                    source: std::io::Error::other("its process is not drun's child"),
                })
            }
            Err(e) => {
                return Err(RunError::Io {
                    what: "wait for the container".into(),
                    source: e.into(),
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn docker_entrypoint_and_cmd_rules() {
        let mut p = RunPlan::default();
        assert_eq!(resolve_args(&p, &s(&["/ep"]), &s(&["a"])).unwrap(), s(&["/ep", "a"]));
        p.command = Some(s(&["b"]));
        assert_eq!(resolve_args(&p, &s(&["/ep"]), &s(&["a"])).unwrap(), s(&["/ep", "b"]));
        p.entrypoint = Some(s(&["/new"]));
        assert_eq!(resolve_args(&p, &s(&["/ep"]), &s(&["a"])).unwrap(), s(&["/new", "b"]));
        p.command = None;
        // --entrypoint drops the image's Cmd.
        assert_eq!(resolve_args(&p, &s(&["/ep"]), &s(&["a"])).unwrap(), s(&["/new"]));
        p.entrypoint = Some(vec![]);
        assert!(matches!(resolve_args(&p, &[], &[]), Err(RunError::NoCommand)));
    }

    #[test]
    fn env_merging() {
        let p = RunPlan {
            env: vec![("FOO".into(), "cli".into()), ("NEW".into(), "1".into())],
            ..Default::default()
        };
        let env = resolve_env(&p, &s(&["PATH=/img/bin", "FOO=image"]), "h", "/root");
        assert_eq!(
            env,
            s(&["PATH=/img/bin", "HOSTNAME=h", "FOO=cli", "HOME=/root", "NEW=1"])
        );
    }
}
