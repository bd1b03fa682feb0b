//! Creating and starting the container with libcontainer: its stdio, console socket and executor, drun as the
//! subreaper where the container's processes could outlive its init, the run record with the init's pid, the
//! cidfile. Ends once the container's command is running.

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::unistd::Pid;

use crate::plan::Sharing;
use crate::run::cgroups::CgroupPlan;
use crate::run::cleanup::Cleanup;
use crate::run::context::RunContext;
use crate::run::pmi::PassFd;
use crate::run::reap::Inherited;
use crate::run::seccomp::{Executor, Precompiled};
use crate::run::signals::{DefaultSignals, Forwarding};
use crate::run::state::{self, RunInfo};
use crate::run::{io_error, RunError};

/// A started container, as supervision needs it.
pub struct Started {
    /// The container's init, drun's child.
    pub pid: Pid,
    /// The container shares the host's pid namespace: its processes outlive its init.
    pub host_pids: bool,
    /// drun's children from before, when drun became the subreaper of the container's processes.
    pub inherited: Option<Inherited>,
    /// The console socket the container's terminal arrives on (`-t`).
    pub console: Option<UnixListener>,
    /// The read ends of the container's stdout and stderr pipes (a logged run).
    pub output: Option<crate::run::output::Pipes>,
    /// The signals drun forwards to it, blocked since just before the start.
    pub signals: Forwarding,
}

/// Creates the container from `bundle` (with `filter` loaded by drun's executor, and `pmi_fd` given the
/// container as fd 3), moves it into its `cgroup` where libcontainer could not put it (v1), and starts it;
/// `logged` gives its stdout and stderr a pipe each. `info` is recorded again with the init's pid. A `restart`
/// (`run::restart`) is given up, before the container's command runs, when `drun stop` or `drun kill` marked the
/// run meanwhile: they read the record's pid before they signal, so one that came before this record would be
/// lost.
#[allow(clippy::too_many_arguments)]
pub fn start(
    ctx: &RunContext,
    bundle: &Path,
    filter: Option<Precompiled>,
    pmi_fd: Option<std::os::fd::RawFd>,
    cgroup: &CgroupPlan,
    logged: bool,
    cgroup_writes: &[(PathBuf, String)],
    cleanup: &mut Cleanup,
    mut info: RunInfo,
    restart: bool,
) -> Result<Started, RunError> {
    let plan = ctx.plan;
    // Made private with the state directory (`state::ensure_private`).
    let lc_root = state::libcontainer_dir(ctx.state_dir);
    let libcontainer_error = |what| move |source| RunError::Runtime { what, source };
    let mut builder = ContainerBuilder::new(ctx.id.clone(), SyscallType::default())
        .with_root_path(&lc_root)
        .map_err(libcontainer_error("use its state directory"))?
        .validate_id()
        .map_err(libcontainer_error("accept the container id"))?
        .with_executor(PassFd {
            inner: Executor {
                filter,
                join_cgroups: vec![],
            },
            fd: pmi_fd,
        });
    if !plan.interactive {
        #[allow(clippy::disallowed_methods)] // the kernel's device
        let null = File::open("/dev/null").map_err(io_error("open /dev/null"))?;
        builder = builder.with_stdin(null);
    }
    // A pipe each for stdout and stderr, read in arrival order (see `output`): stdout alone is a workflow's output.
    let output = if logged {
        let (pipes, out_w, err_w) = crate::run::output::pipes().map_err(io_error("create the output pipes"))?;
        builder = builder.with_stdout(out_w).with_stderr(err_w);
        Some(pipes)
    } else {
        None
    };
    // With a terminal, libcontainer sends the pty master over a console socket, which it accepts only for a
    // "detached" container: its init is then re-parented, so drun becomes a child subreaper to stay its parent.
    let console = if plan.tty {
        let (socket, listener) =
            crate::run::tty::ConsoleSocket::bind().map_err(io_error("create the console socket"))?;
        builder = builder.with_console_socket(Some(&socket.path));
        cleanup.console_socket = Some(socket);
        Some(listener)
    } else {
        None
    };
    // A detached init is re-parented, and with the host's pid namespace the container's processes outlive its
    // init: drun stays their parent, so that it can end every one of them (`reap::end_all`).
    let host_pids = plan.pid_mode() == Sharing::Host;
    let inherited = if plan.tty || host_pids {
        Some(crate::run::reap::become_subreaper().map_err(io_error("become a child subreaper"))?)
    } else {
        None
    };
    let ignored = DefaultSignals::set();
    // libcontainer creates the mount points in the root file system (into the run's upper layer) before the
    // spec's umask applies: under Docker's 0022, as runc would, not drun's private 0077. Nothing else creates
    // files meanwhile (the warm-up thread only writes existing cgroup files), and whatever libcontainer keeps
    // in its state directory stays behind the private state directory.
    let built = crate::sys::safe_fs::with_umask(0o022, || {
        builder
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(plan.tty)
            .build()
    });
    drop(ignored);
    let container = built.map_err(libcontainer_error("create the container"))?;
    crate::failpoint::hit("run-created");
    // What libcgroups leaves undone (`CgroupPlan::v1_writes`), between its cgroup set-up and the start.
    for (f, value) in cgroup_writes {
        crate::sys::safe_fs::write_system(f, value).map_err(|e| io_error(format!("write {f:?}"))(e))?;
    }
    // libcontainer links another nix version: carry the pid across as a plain integer.
    let pid = container.pid().map(|p| Pid::from_raw(p.as_raw()));
    cleanup.container = Some(container);
    info.pid = pid.map(Pid::as_raw);
    info.pid_start = pid.and_then(|p| state::start_time(p.as_raw()));
    cleanup.record(info)?;
    if restart && crate::run::restart::stop_requested(&ctx.dir) {
        // Its init waits for the start: killed and forgotten now, as a container that never ran.
        cleanup.forget_container();
        return Err(RunError::StopRequested);
    }
    // Written once: a restarted container keeps its id.
    if let (Some(f), false) = (&plan.cidfile, restart) {
        // Docker refuses an existing cidfile too; made for the caller, under their umask.
        crate::sys::safe_fs::write_new(f, ctx.id.as_bytes(), crate::sys::safe_fs::for_caller(0o666))
            .map_err(|e| io_error(format!("write {f:?}"))(e))?;
    }
    let pid = pid.ok_or_else(|| RunError::Io {
        what: "learn the container's pid".into(),
        source: std::io::Error::other("libcontainer reported none"),
    })?;
    // Its init is the container's only process until the start: on v1, into its cgroup of each hierarchy.
    cgroup.settle(pid.as_raw())?;
    // Signals are blocked only now (on a restart they still are): the container's process unblocks them itself.
    let signals = Forwarding::block(plan.stop_signal)?;
    cleanup
        .container
        .as_mut()
        .expect("container is set")
        .start()
        .map_err(libcontainer_error("start the container"))?;
    // Its processes are in their cgroup: the warm-up has done its work.
    cleanup.warmup = None;
    Ok(Started {
        pid,
        host_pids,
        inherited,
        console,
        output,
        signals,
    })
}
