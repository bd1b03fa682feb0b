//! Everything a run leaves behind, removed when the run ends whatever happened: the container in libcontainer,
//! the console socket, the cgroup warm-up, the root file system and network namespace mounts, the cgroup and the
//! run directory (whose lock is released last). Also where drun makes sure nothing of the container still runs.

use std::path::{Path, PathBuf};

use crate::run::cgroups::{CgroupError, CgroupPlan, ResourceLimits};
use crate::run::context::RunContext;
use crate::run::start::Started;
use crate::run::state::{self, RunDir, RunInfo};
use crate::run::warmup::Warmup;
use crate::run::{io_error, RunError};

/// What a run leaves behind, removed on drop.
pub struct Cleanup {
    state_dir: PathBuf,
    /// Locked until everything else is gone (dropped after [`Drop::drop`] ran).
    run_dir: RunDir,
    /// The run's record as last written, if it was.
    info: Option<RunInfo>,
    pub container: Option<libcontainer::container::Container>,
    pub console_socket: Option<crate::run::tty::ConsoleSocket>,
    /// Stopped once the container has started (its processes are in their cgroup).
    pub warmup: Option<Warmup>,
    /// The container's init was reaped and nothing of it can run any more.
    exited: bool,
    /// How the container ended, once supervision is over.
    exit: Option<state::ExitRecord>,
}

impl Cleanup {
    pub fn new(ctx: &RunContext, run_dir: RunDir) -> Cleanup {
        Cleanup {
            state_dir: ctx.state_dir.to_path_buf(),
            run_dir,
            info: None,
            container: None,
            console_socket: None,
            warmup: None,
            exited: false,
            exit: None,
        }
    }

    /// Notes how the container ended (`code`: `None` when supervising it failed), for `drun wait` and a detached
    /// run's record.
    pub fn finished(&mut self, code: Option<i32>) {
        self.exit = Some(state::ExitRecord::now(code));
    }

    /// Writes the run's record (what `drun ps` shows, and what a later clean-up after a crash reads).
    pub fn record(&mut self, info: RunInfo) -> Result<(), RunError> {
        self.run_dir.write_info(&info).map_err(io_error("write run info"))?;
        self.info = Some(info);
        Ok(())
    }

    /// Creates the container's cgroup with its `limits` and warms the kernel's migration path on a thread, while
    /// the root file system and the spec are prepared. The run's record names the cgroup first, so that clean-up
    /// finds it whatever happens.
    pub fn start_warmup(&mut self, cgroup: &CgroupPlan, limits: ResourceLimits) {
        let cgroup = cgroup.clone();
        self.warmup = Some(Warmup::start(Box::new(move || {
            cgroup.create_dirs(&limits)?;
            cgroup.write_limits(&limits)
        })));
    }

    /// Waits until the container's cgroup exists with its limits (see [`start_warmup`](Self::start_warmup)).
    pub fn cgroup_created(&self) -> Result<(), CgroupError> {
        self.warmup.as_ref().expect("the warm-up was started").prelude_result()
    }

    /// After supervision (`supervised`: the init was waited for): makes sure nothing of the container runs any
    /// more, killing what is left. True when nothing does (what it wrote can no longer change).
    pub fn end_container(
        &mut self,
        supervised: bool,
        poststop_hooks: bool,
        started: &Started,
        cgroup: &CgroupPlan,
    ) -> bool {
        // libcontainer's delete() of a stopped container runs its poststop hooks, then removes its cgroups and
        // state directory, which `state::cleanup` removes as well (~1.5 ms of cgroup path lookups saved per run).
        if supervised && !poststop_hooks {
            // The init is reaped: nothing of the container runs outside its cgroup, which is removed on drop.
            self.container = None;
        }
        // With its own pid namespace, the reaped init took every process of the container with it.
        self.exited = supervised && !started.host_pids;
        // Nothing is copied out of a container while any of its processes lives: with the host's pid namespace
        // they outlive the init, and an init that was not reaped may still run.
        self.exited
            || crate::run::reap::end_all((!supervised).then_some(started.pid), cgroup, started.inherited.as_ref())
    }

    /// Before a restart (`run::restart`), once nothing of the container runs: libcontainer deletes it (its
    /// poststop hooks run, its cgroup and state go), so that the same id can be created again.
    pub fn forget_container(&mut self) {
        if let Some(mut c) = self.container.take() {
            if let Err(e) = c.delete(true) {
                tracing::warn!(error = %e, "libcontainer cannot delete the container; cleaning up by hand");
            }
        }
        if let Some(info) = &self.info {
            let _ = std::fs::remove_dir_all(state::libcontainer_dir(&self.state_dir).join(&info.id));
        }
        self.exited = false;
    }

    fn dir(&self) -> &Path {
        &self.run_dir.path
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // First, so that the cgroup is not being created while it is removed.
        self.warmup = None;
        if let Some(mut c) = self.container.take() {
            if let Err(e) = c.delete(true) {
                tracing::warn!(error = %e, "libcontainer cannot delete the container; cleaning up by hand");
            }
        }
        self.console_socket = None;
        // Read by `drun wait` once the lock is free, even when the directory is gone.
        if let Some(exit) = &self.exit {
            if let Err(e) = self.run_dir.write_exit(exit) {
                tracing::warn!(error = %e, "cannot record how the container ended");
            }
        }
        // Unmounts the root file system and network namespace, removes cgroups and the run directory (a
        // detached run's keeps its record and log until `drun rm`).
        match (&self.info, &self.exit) {
            (Some(info), Some(exit)) if info.kept() => {
                state::cleanup_keeping_record(&self.state_dir, self.dir(), info);
                let ended = state::RunInfo {
                    exit: Some(exit.clone()),
                    pid: None,
                    pid_start: None,
                    ..info.clone()
                };
                if let Err(e) = self.run_dir.write_info(&ended) {
                    tracing::warn!(error = %e, "cannot record how the container ended");
                }
            }
            (Some(info), _) if self.exited => state::cleanup_exited(&self.state_dir, self.dir(), info),
            (info, _) => state::cleanup(&self.state_dir, self.dir(), info.as_ref()),
        }
    }
}
