//! `drun exec`: another process in a running container, through libcontainer's tenant builder. The process joins
//! the namespaces of the container's init and its cgroup, and gets its capabilities, no-new-privileges, rlimits
//! and seccomp filter: the spec's process is the template (`process.json` for the tenant), and the filter is the
//! one drun loaded in the container, kept in the run directory (`seccomp::save_for_exec`) and installed by the
//! same executor. Its environment is the container's plus the exec's `-e`; its user and working directory the
//! container's unless `-u`/`-w` say otherwise (names looked up in the container's /etc/passwd and /etc/group).
//!
//! The process lives in the container's pid namespace: when the container's init exits, the kernel kills it, and
//! the run's clean-up (which removes the cgroup) finds nothing of it left. A container without either (the host's
//! pid namespace and no cgroup of its own) is refused: nothing would end an exec'd process with it.
//!
//! [`run_in`] is the library entry (a health-check probe calls it with captured output); `commands::exec` finds
//! the container and, rootless, joins its user namespace first.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::plan::MountSpec;
use crate::run::seccomp::{self, Executor};
use crate::run::signals::{DefaultSignals, Forwarding};
use crate::run::state::{self, RunInfo};
use crate::run::{executable, io_error, output, supervise, tty, user, RunError};

/// What to run in the container, and how.
#[derive(Clone, Debug, Default)]
pub struct ExecSpec {
    /// The command and its arguments (looked up in the container's PATH).
    pub args: Vec<String>,
    /// Variables set over the container's environment (`-e`).
    pub env: Vec<(String, String)>,
    /// `-u USER[:GROUP]`: names from the container's /etc/passwd and /etc/group; the container's user if `None`.
    pub user: Option<String>,
    /// `-w DIR`: an absolute path in the container; the container's working directory if `None`.
    pub workdir: Option<String>,
    /// `-i`: drun's stdin is the process's (else /dev/null).
    pub interactive: bool,
    /// `-t`: a terminal (ignored when the output is captured).
    pub tty: bool,
    /// Keep the output (stdout and stderr together, at most this many bytes) instead of passing it on.
    pub capture: Option<usize>,
}

/// How an exec'd process ended.
#[derive(Debug)]
pub struct ExecOutcome {
    /// Its exit status (128+N when killed by signal N).
    pub code: i32,
    /// Its output when [`ExecSpec::capture`] asked for it.
    pub output: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no running container {0:?} (see `drun ps`)")]
    NotFound(String),
    #[error("{0:?} matches several containers; give more of the id")]
    Ambiguous(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("cannot exec in container {id}: {why}")]
    Refused { id: String, why: &'static str },
    #[error("invalid working directory {0:?}: it must be an absolute path")]
    RelativeWorkdir(String),
    #[error("cannot change to the working directory {0:?}: no such directory in the container")]
    NoWorkdir(String),
    #[error("cannot read the configuration of container {id}")]
    Config {
        id: String,
        #[source]
        source: std::io::Error,
    },
    /// libcontainer could not start the process (as Docker, 126: the command could not be run).
    #[error("cannot exec in container {id}: {message}")]
    Start { id: String, message: String },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::FilterError),
    #[error(transparent)]
    User(#[from] user::UserError),
}

impl ExecError {
    /// The exit status this error maps to: 127 (not found), 126 (cannot be executed), else drun's 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Run(e) => e.exit_code(),
            ExecError::Start { .. } | ExecError::NoWorkdir(_) => crate::exit::CANNOT_EXECUTE,
            _ => crate::exit::DRUN_ERROR,
        }
    }
}

/// The live container named `want` (its name, or its id or a unique prefix of it) in `state`, whose init is
/// still the process recorded.
pub fn find(state: &Path, want: &str) -> Result<RunInfo, ExecError> {
    let list = state::list(state);
    // Docker's order: a full id, then a name, then an id's beginning.
    let exact: Vec<&RunInfo> = list.iter().filter(|c| c.id == want).collect();
    let named: Vec<&RunInfo> = list.iter().filter(|c| c.name.as_deref() == Some(want)).collect();
    let matches: Vec<&RunInfo> = match (exact.is_empty(), named.is_empty()) {
        (false, _) => exact,
        (true, false) => named,
        (true, true) => list
            .iter()
            .filter(|c| !want.is_empty() && c.id.starts_with(want))
            .collect(),
    };
    let found = match matches.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(ExecError::NotFound(want.to_string())),
        _ => return Err(ExecError::Ambiguous(want.to_string())),
    };
    match (found.pid, found.pid_start) {
        (Some(pid), Some(start)) if state::start_time(pid) == Some(start) => Ok(found),
        _ => Err(ExecError::NotRunning(found.id[..12].to_string())),
    }
}

/// Runs `spec` in the running container `info` (from [`find`] on `state_dir`) and waits for it. Rootless, the
/// caller is already in the container's user namespace (`sys::userns::join`).
pub fn run_in(state_dir: &Path, info: &RunInfo, spec: &ExecSpec) -> Result<ExecOutcome, ExecError> {
    let short = info.id[..12].to_string();
    let pid = info.pid.ok_or_else(|| ExecError::NotRunning(short.clone()))?;
    let run_dir = state::containers_dir(state_dir).join(&info.id);
    let config = read_config(&run_dir).map_err(|source| ExecError::Config {
        id: short.clone(),
        source,
    })?;
    let refuse = |why| ExecError::Refused { id: short.clone(), why };
    let linux = config
        .linux()
        .as_ref()
        .ok_or_else(|| refuse("its configuration has no linux section"))?;
    if linux.seccomp().is_some() {
        // libcontainer loads such a profile in the container's init only; its tenants get none.
        return Err(refuse(
            "its seccomp profile is one libcontainer loads (user notification, or no-new-privileges off), which it \
             would not apply to the new process",
        ));
    }
    let own_pids = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Pid);
    if !own_pids && info.cgroup_path.is_empty() {
        return Err(refuse(
            "it shares the host's pid namespace and has no cgroup of its own, so nothing would end the new process \
             with the container",
        ));
    }
    let filter = seccomp::saved_for_exec(&run_dir)?;
    if info.cgroup_path.is_empty() {
        // As for the container itself (rootless, no cgroup of its own), so that libcgroups leaves it be, in the
        // container's cgroup namespace (which its spec does not list: the tenant would not join it).
        crate::run::cgroups::hide_host_hierarchy_rootless(&crate::run::cgroups::detect(), Some(pid))
            .map_err(RunError::from)?;
    }
    let template = config
        .process()
        .clone()
        .ok_or_else(|| refuse("its configuration has no process"))?;
    let process = tenant_process(pid, template, &config, spec)?;

    // One exec at a time sets up in this container: libcontainer leaves its notify socket behind in the
    // container's directory, removed below once the process has started (a concurrent exec still needs its own).
    let lock_file = crate::sys::safe_fs::open_or_create(&run_dir.join("exec.lock"), 0o600)
        .map_err(io_error("lock the container for exec"))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| io_error("lock the container for exec")(e.into()))?;
    let lc_dir = state::libcontainer_dir(state_dir).join(&info.id);
    let before = tenant_sockets(&lc_dir);
    let process_file = run_dir.join(format!("exec-{}.json", std::process::id()));
    let json = serde_json::to_vec(&process).expect("a process serialises");
    crate::sys::safe_fs::write_replace(&process_file, &json, 0o600).map_err(io_error("write the exec's process"))?;
    let v1 = !info.cgroup_path.is_empty()
        && matches!(crate::run::cgroups::detect(), crate::run::cgroups::Version::V1 { .. });
    let absent = if v1 {
        absent_v1_dirs(&info.cgroup_path)
    } else {
        Vec::new()
    };
    // On v1 the process moves itself into the init's cgroups before its command runs.
    let join = if v1 { init_cgroup_files(pid)? } else { vec![] };
    let started = start(
        state_dir,
        info,
        &process_file,
        filter,
        join.iter().map(AsRawFd::as_raw_fd).collect(),
        spec,
    );
    drop(join);
    for d in &absent {
        let _ = std::fs::remove_dir(d);
    }
    let _ = std::fs::remove_file(&process_file);
    for s in tenant_sockets(&lc_dir).difference(&before) {
        let _ = std::fs::remove_file(lc_dir.join(s));
    }
    drop(lock);
    let mut started = started?;

    let terminal = match &started.console {
        Some(c) => Some(tty::Terminal::attach(c).map_err(io_error("receive the exec's terminal"))?),
        None => None,
    };
    let master = terminal.as_ref().map(|t| &t.master);
    let mut out = match started.output.take() {
        Some(pipe) => output::Output::captured(pipe, spec.capture.unwrap_or(0)),
        None => output::Output::new(None, None, None),
    };
    let status = supervise::supervise(started.pid, &mut started.signals, master, spec.interactive, &mut out);
    drop(terminal);
    drop(started.console_path.take());
    started.signals.take_late_interrupt();
    started.signals.unblock();
    let outcome = status?;
    Ok(ExecOutcome {
        code: outcome.code,
        output: out.capture,
    })
}

/// cgroup v1: the directories of the container's libcontainer cgroup `path` (with its parents), in every
/// hierarchy, that do not exist now. libcontainer's tenant goes to `path` in every hierarchy, re-creating those
/// that `CgroupPlan::settle` removed after moving the init elsewhere; they are removed again once empty.
fn absent_v1_dirs(path: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(mounts) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for m in mounts.flatten() {
        let mount = m.path();
        if !std::fs::symlink_metadata(&mount).is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let mut dir = mount.join(path.trim_start_matches('/'));
        while dir != mount && !dir.exists() {
            out.push(dir.clone());
            dir.pop();
        }
    }
    out
}

/// cgroup v1: the `cgroup.procs` files of the container's init `init` in each hierarchy, opened for writing; the
/// exec'd process writes itself into them before its command runs (drun's executor). `CgroupPlan::settle` put the
/// init below drun's own cgroup of each hierarchy, which libcontainer's tenant builder does not know of: it puts
/// the process at its one recorded path, re-creating cgroups there (`absent`, removed again afterwards).
fn init_cgroup_files(init: i32) -> Result<Vec<OwnedFd>, ExecError> {
    let text = crate::sys::safe_fs::read_system(format!("/proc/{init}/cgroup"))
        .map_err(io_error("read the container's cgroups"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, rel) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        if ctrls.is_empty() || ctrls.starts_with("name=") || rel.split('/').any(|c| c == "..") {
            continue;
        }
        let procs = Path::new("/sys/fs/cgroup")
            .join(ctrls)
            .join(rel.trim_start_matches('/'))
            .join("cgroup.procs");
        let fd = nix::fcntl::open(
            &procs,
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io_error("open the container's cgroup")(e.into()))?;
        out.push(fd);
    }
    Ok(out)
}

/// The container's configuration (`bundle/config.json` of its run directory, written by drun).
fn read_config(run_dir: &Path) -> std::io::Result<Spec> {
    let bytes = crate::sys::safe_fs::read_bounded(&run_dir.join("bundle").join("config.json"), 64 << 20)?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// The names of libcontainer's tenant sockets in the container's directory.
fn tenant_sockets(lc_dir: &Path) -> std::collections::HashSet<std::ffi::OsString> {
    std::fs::read_dir(lc_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("tenant-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The process libcontainer starts: the container's (capabilities, no-new-privileges, rlimits, AppArmor, OOM
/// score) with the exec's command, environment, user, working directory and terminal. Checks that the command
/// can be run, as `drun run` does, in the container's root as its init sees it.
fn tenant_process(
    pid: i32,
    mut process: oci_spec::runtime::Process,
    config: &Spec,
    spec: &ExecSpec,
) -> Result<oci_spec::runtime::Process, ExecError> {
    if spec.args.is_empty() {
        return Err(RunError::NoCommand.into());
    }
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let tty = spec.tty && spec.capture.is_none();
    let mut env: Vec<(String, String)> = process
        .env()
        .iter()
        .flatten()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let set = |env: &mut Vec<(String, String)>, k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    if let Some(u) = &spec.user {
        let mut resolved = user::resolve(&root, Some(u))?;
        if let Some(ns) = crate::sys::userns::current() {
            user::check_mapped(&mut resolved, u, ns)?;
        }
        // HOME follows the user, as it does for `docker exec -u` (the container's was its own user's).
        set(&mut env, "HOME", &resolved.home);
        let mut user = oci_spec::runtime::User::default();
        user.set_uid(resolved.uid)
            .set_gid(resolved.gid)
            .set_additional_gids(Some(resolved.additional_gids))
            .set_umask(process.user().umask());
        process.set_user(user);
    }
    if tty && !env.iter().any(|(k, _)| k == "TERM") {
        set(&mut env, "TERM", "xterm");
    }
    for (k, v) in &spec.env {
        set(&mut env, k, v);
    }
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cwd = match &spec.workdir {
        Some(w) if !w.starts_with('/') => return Err(ExecError::RelativeWorkdir(w.clone())),
        Some(w) => w.clone(),
        None => process.cwd().display().to_string(),
    };
    // The root as the init sees it holds the image's files; what volumes show is looked up on the host, and
    // whatever else is mounted (tmpfs, /dev, /proc) cannot be checked from here: the start itself says.
    let mounts: Vec<MountSpec> = config
        .mounts()
        .iter()
        .flatten()
        .map(|m| {
            let destination = m.destination().display().to_string();
            let bind =
                m.typ().as_deref() == Some("bind") || m.options().iter().flatten().any(|o| o == "bind" || o == "rbind");
            match m.source() {
                Some(source) if bind => MountSpec::Bind {
                    source: source.clone(),
                    destination,
                    read_only: false,
                },
                _ => MountSpec::Tmpfs {
                    destination,
                    options: vec![],
                },
            }
        })
        .collect();
    let dir =
        cwd.trim_matches('/').is_empty() || crate::run::rootfs::stat_in_root(&root, &cwd).is_some_and(|m| m.is_dir());
    if !dir && crate::run::mounts::covering(&mounts, &cwd).is_none() {
        return Err(ExecError::NoWorkdir(cwd));
    }
    executable::check(&root, &mounts, &spec.args, &env, &cwd)?;
    process
        .set_args(Some(spec.args.clone()))
        .set_env(Some(env))
        .set_cwd(cwd.into())
        .set_terminal(Some(tty))
        .set_console_size(None);
    Ok(process)
}

/// An exec'd process that has started.
struct Started {
    pid: Pid,
    console: Option<UnixListener>,
    /// Its directory goes when this is dropped.
    console_path: Option<crate::run::tty::ConsoleSocket>,
    output: Option<OwnedFd>,
    signals: Forwarding,
}

/// Starts the process described in `process_file` in the container, with drun's executor loading `filter`.
fn start(
    state_dir: &Path,
    info: &RunInfo,
    process_file: &Path,
    filter: Option<seccomp::Precompiled>,
    join_cgroups: Vec<std::os::fd::RawFd>,
    spec: &ExecSpec,
) -> Result<Started, ExecError> {
    let short = &info.id[..12];
    let libcontainer_error = |what| move |source| RunError::Runtime { what, source };
    let mut builder = ContainerBuilder::new(info.id.clone(), SyscallType::default())
        .with_root_path(state::libcontainer_dir(state_dir))
        .map_err(libcontainer_error("use its state directory"))?
        .with_executor(Executor { filter, join_cgroups });
    if !spec.interactive {
        #[allow(clippy::disallowed_methods)] // the kernel's device
        let null = std::fs::File::open("/dev/null").map_err(io_error("open /dev/null"))?;
        builder = builder.with_stdin(null);
    }
    let output = match spec.capture {
        Some(_) => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| io_error("create the output pipe")(e.into()))?;
            let w2 = w.try_clone().map_err(io_error("duplicate the output pipe"))?;
            builder = builder.with_stdout(w).with_stderr(w2);
            Some(r)
        }
        None => None,
    };
    let tty = spec.tty && spec.capture.is_none();
    let (console, console_path) = if tty {
        let (socket, listener) =
            crate::run::tty::ConsoleSocket::bind().map_err(io_error("create the console socket"))?;
        builder = builder.with_console_socket(Some(&socket.path));
        (Some(listener), Some(socket))
    } else {
        (None, None)
    };
    let ignored = DefaultSignals::set();
    let built = builder
        .as_tenant()
        .with_process(Some(process_file))
        .with_detach(tty)
        .build();
    drop(ignored);
    let pid = match built {
        Ok(pid) => Pid::from_raw(pid.as_raw()),
        Err(e) => {
            drop(console_path);
            return Err(ExecError::Start {
                id: short.to_string(),
                message: e.to_string(),
            });
        }
    };
    let signals = Forwarding::block(None)?;
    Ok(Started {
        pid,
        console,
        console_path,
        output,
        signals,
    })
}
