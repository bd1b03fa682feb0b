//! What a front end hooks into a run (the workflow runner: its log, a check before the start, a look at what the
//! container left), and how a run ended.

use std::fs::File;
use std::path::Path;

use crate::plan::MountSpec;
use crate::run::executable;
use crate::run::logfile::LogOptions;
use crate::run::RunError;

/// A check of the container before it is created (see [`RunHooks::before_start`]).
pub type BeforeStart<'a> = dyn FnMut(&StartView) -> Result<(), RunError> + 'a;

/// What a caller (the workflow runner) hooks into a run.
#[derive(Default)]
pub struct RunHooks<'a> {
    /// When set, the container's stdout and stderr are pipes that drun copies to its own stdout and stderr and, in
    /// the order their writes arrive, to this file (see `run::output`).
    pub log: Option<&'a mut File>,
    /// With `log`: also gets the container's stdout alone (a workflow's output).
    pub stdout: Option<&'a mut dyn std::io::Write>,
    /// Called once the image's root file system, the command's environment and working directory are known,
    /// before the container is created; an error ends the run (e.g. a program the caller needs is missing).
    pub before_start: Option<&'a mut BeforeStart<'a>>,
    /// Called once the container has exited (whatever its status, also after an interrupt), before anything is
    /// unmounted, with the host path of the copy-on-write mount as the container left it.
    pub after_exit: Option<&'a mut dyn FnMut(&ExitView)>,
    /// Set by the monitor of a detached run (`drun run -d`, see `crate::run::detach`).
    pub detach: Option<Detach<'a>>,
    /// A setup run (`run::setup_layer`): its writable layer goes in this directory of the store, to be kept.
    pub setup_in: Option<&'a Path>,
    /// `drun run --restart on-failure:N` (foreground or detached): the same container started again, as Docker's
    /// daemon restarts one (see `run::restart`). A workflow runs a failed job again as a new container instead.
    pub restart: crate::plan::RestartPolicy,
}

/// What a detached run does besides supervising its container: its output goes to a rotating log in the run
/// directory, and the run directory keeps that log and the run's record (with how it ended) until `drun rm`.
pub struct Detach<'a> {
    pub log: LogOptions,
    /// `--rm`: nothing of the run stays once its container ended.
    pub auto_remove: bool,
    /// Called once the container's command runs, with the container's id and run directory.
    pub started: &'a mut dyn FnMut(&str, &Path),
}

impl RunHooks<'_> {
    /// Runs the `before_start` check, if there is one.
    pub(crate) fn call_before_start(&mut self, view: &StartView) -> Result<(), RunError> {
        match self.before_start.as_mut() {
            Some(check) => check(view),
            None => Ok(()),
        }
    }
}

/// Shows the caller what the container left, if it asked (`after_exit`, a [`RunHooks`] field, taken alone so
/// that the log can stay borrowed meanwhile): the copy-on-write mount's view only once every process of the
/// container has `ended`.
pub(crate) fn call_after_exit(after_exit: &mut Option<&mut dyn FnMut(&ExitView)>, ended: bool, overlay: Option<&Path>) {
    let Some(after) = after_exit.as_mut() else {
        return;
    };
    if !ended {
        tracing::error!("processes of the container survived SIGKILL: nothing is copied out of it");
    }
    after(&ExitView {
        overlay: overlay.filter(|_| ended),
        ended,
    });
}

/// The container as it will start, for a [`RunHooks::before_start`] check.
pub struct StartView<'a> {
    pub(crate) root: &'a Path,
    pub(crate) mounts: &'a [MountSpec],
    pub(crate) env: &'a [String],
    pub(crate) cwd: &'a str,
}

impl StartView<'_> {
    /// Whether `program` is an executable the container's command could run (looked up in its PATH, inside its
    /// root file system and volumes, as the command itself is).
    pub fn has_program(&self, program: &str) -> bool {
        executable::check(
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
