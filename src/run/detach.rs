//! `drun run -d`, daemonless as Podman's conmon: the drun the user runs starts a monitor (drun itself, executed
//! again with the same arguments, in a session of its own) and waits until the monitor says the container runs,
//! then prints its id and exits. The monitor does the whole run as a foreground drun does (pull, user namespace,
//! root file system, start; its messages reach the caller's terminal until then), but writes the container's
//! output to a rotating log in the run directory (`logfile`). It stays the container's parent: it forwards
//! signals, reaps the container, records how it ended and cleans up all but the record and the log
//! (`cleanup`). Other drun commands reach it only through the state directory and the run's lock (`finished`).
//!
//! A front end that built the plan itself (a workflow's `detach: true` entry) starts the monitor with
//! [`launch_order`] instead: `drun monitor` (hidden) gets the plan, serialized, on a pipe of its own, so nothing
//! is parsed again and every value reaches the container as it was.
//!
//! The monitor's loop is `supervise`'s poll (signals, the init's pidfd, the output pipe): periodic work, such as
//! a health probe, would be one more timeout there.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

/// Names, in the monitor's environment, the descriptor it reports on. Removed as soon as the monitor reads it.
const MONITOR_FD_ENV: &str = "DRUN_MONITOR_FD";

/// Whether this process is a detached run's monitor.
pub fn is_monitor() -> bool {
    std::env::var_os(MONITOR_FD_ENV).is_some()
}

/// How starting a detached container went, as the drun that started its monitor sees it.
pub enum Launch {
    /// The container runs; its full id.
    Started(String),
    /// The monitor ended first, with this status (it printed why).
    Failed(i32),
}

/// Names, in the monitor's environment, the descriptor its order comes on ([`launch_order`]).
const ORDER_FD_ENV: &str = "DRUN_MONITOR_ORDER_FD";

/// The most an order may hold: a plan is a few KiB (its environment and mounts).
const MAX_ORDER: u64 = 16 << 20;

/// What a front end that built the plan itself (a workflow's detached entry) tells the monitor it starts: the
/// monitor runs exactly this, with nothing of the command line to parse again.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct MonitorOrder {
    pub plan: crate::plan::RunPlan,
    pub store_root: std::path::PathBuf,
    pub blob_cache: Option<std::path::PathBuf>,
    pub state_dir: std::path::PathBuf,
    pub log: crate::run::logfile::LogOptions,
    /// Nothing of the run stays once its container ended (`--rm`, docker-py's `auto_remove`).
    pub auto_remove: bool,
    pub quiet: bool,
}

/// `drun run -d`: starts the monitor (this command again) and waits for its word.
pub fn launch() -> io::Result<Launch> {
    let mut args = std::env::args_os();
    let arg0 = args.next();
    spawn_monitor(arg0, args.collect(), None)
}

/// Starts a monitor (`drun monitor`, hidden) that runs `order`, and waits for its word.
pub fn launch_order(order: &MonitorOrder) -> io::Result<Launch> {
    let bytes = serde_json::to_vec(order).map_err(io::Error::other)?;
    spawn_monitor(std::env::args_os().next(), vec!["monitor".into()], Some(&bytes))
}

/// In the monitor that [`launch_order`] started: its order, read from the descriptor its starter passed (bounded);
/// `None` when this process was not started so.
pub fn take_order() -> Option<io::Result<MonitorOrder>> {
    let value = std::env::var(ORDER_FD_ENV).ok()?;
    std::env::remove_var(ORDER_FD_ENV);
    let Some(fd) = inherited_pipe(&value) else {
        return Some(Err(io::Error::other("the monitor's order is not on a pipe")));
    };
    let mut bytes = Vec::new();
    Some(
        File::from(fd)
            .take(MAX_ORDER)
            .read_to_end(&mut bytes)
            .and_then(|_| serde_json::from_slice(&bytes).map_err(io::Error::other)),
    )
}

/// Starts drun again (`/proc/self/exe`, named `arg0`) with `args` as a monitor: in a session of its own, its
/// stdout `/dev/null`, its stderr this process's until it reports; `order` goes to it on a pipe of its own.
fn spawn_monitor(
    arg0: Option<std::ffi::OsString>,
    args: Vec<std::ffi::OsString>,
    order: Option<&[u8]>,
) -> io::Result<Launch> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // The write end goes to the monitor: inherited across exec.
    fcntl(&write, FcntlArg::F_SETFD(FdFlag::empty()))?;
    // The running binary, whatever its path now; named as the user called it, for `ps` and the like.
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = arg0 {
        cmd.arg0(arg0);
    }
    cmd.args(args)
        .env(MONITOR_FD_ENV, write.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let order_pipe = match order {
        Some(_) => {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            fcntl(&r, FcntlArg::F_SETFD(FdFlag::empty()))?;
            cmd.env(ORDER_FD_ENV, r.as_raw_fd().to_string());
            Some((r, w))
        }
        None => None,
    };
    // A session of its own: no terminal's hangup or job control reaches it or the container.
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2), which is
    // async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn()?;
    drop(write);
    if let (Some(bytes), Some((r, w))) = (order, order_pipe) {
        drop(r);
        // The monitor reads its whole order before anything else; a monitor that died first is seen below.
        let _ = File::from(w).write_all(bytes);
    }
    let mut said = String::new();
    File::from(read).take(256).read_to_string(&mut said)?;
    if let Some(id) = said.strip_prefix("started ").map(str::trim) {
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            // The monitor goes on; once this process exits it is the init's (or a subreaper's) child.
            return Ok(Launch::Started(id.to_string()));
        }
    }
    let status = child.wait()?;
    Ok(Launch::Failed(status.code().unwrap_or(crate::exit::DRUN_ERROR)))
}

/// The pipe whose descriptor number `value` names, left open by the drun that started this process: never a
/// descriptor of something else.
fn inherited_pipe(value: &str) -> Option<OwnedFd> {
    let raw: RawFd = value.parse().ok().filter(|fd| *fd > 2)?;
    // SAFETY: fstat(2) on any number is harmless (EBADF if it is not open); `st` is written by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` outlives the call.
    if unsafe { libc::fstat(raw, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return None;
    }
    // SAFETY: `raw` is an open pipe (checked above) that the drun which executed this process left open for
    // it; nothing else in this process refers to it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let _ = fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    Some(fd)
}

/// The write end of the stdin pipe of a `-d -i` container, held open for as long as the monitor lives.
static HELD_STDIN: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// `-d -i`: the monitor's stdin, which the container inherits, becomes a pipe that the monitor holds open and
/// never writes to, so a command that reads its input (`sh`, `cat`) waits for more instead of ending at once, as
/// with `docker run -di`.
pub fn hold_stdin_open() -> io::Result<()> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: dup2(2) onto stdin, which this process owns; `read` stays open for the call. The copy at fd 0 has
    // no close-on-exec flag (dup2 clears it), so the container's process inherits it.
    if unsafe { libc::dup2(read.as_raw_fd(), libc::STDIN_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = HELD_STDIN.set(write);
    Ok(())
}

/// The monitor's line back to the drun that started it.
pub struct Report {
    fd: OwnedFd,
}

impl Report {
    /// In the monitor: takes the descriptor its starter passed (`None` when this is not a monitor) and removes
    /// the variable that named it.
    pub fn take() -> Option<Report> {
        let value = std::env::var(MONITOR_FD_ENV).ok()?;
        std::env::remove_var(MONITOR_FD_ENV);
        let fd = inherited_pipe(&value)?;
        Some(Report { fd })
    }

    /// The container with id `id` runs: tells the waiting drun. From now on nobody reads the terminal this
    /// process was started from: drun's own messages go to `monitor.log` in the run directory `dir`.
    pub fn started(self, id: &str, dir: &Path) {
        #[allow(clippy::disallowed_methods)] // the kernel's device
        let log = crate::sys::safe_fs::create_new(&dir.join(crate::run::logfile::MONITOR_LOG), 0o600)
            .or_else(|_| File::options().write(true).open("/dev/null"));
        // Not the caller's terminal or pipe any more, which its reader would otherwise wait on.
        if let Ok(log) = log {
            // SAFETY: dup2(2) onto stderr, which this process owns; `log` stays open for the call.
            unsafe { libc::dup2(log.as_raw_fd(), libc::STDERR_FILENO) };
        }
        let _ = nix::unistd::write(&self.fd, format!("started {id}\n").as_bytes());
    }
}
