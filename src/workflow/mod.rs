//! `drun run workflow.yaml`: dstack-style workflow files.
//!
//! [`load`] reads and checks a whole file before anything runs (every error at `file:line:col`, [`error`]; the
//! format is [`schema`]) and turns each entry into a [`WorkflowJob`] ([`entry`], [`settings`]): the `RunPlan`
//! that `drun run IMAGE` flags would give, read by the same parsers ([`crate::plan::parse`]), plus what only
//! workflows have (the project directory, artifacts, dependencies, requirements), which becomes mounts in one
//! place ([`mounts`]). [`order`] sorts jobs by their dependencies; [`runner`] runs them and reports through the
//! caller's [`runner::Reporter`]; [`copy_out`] saves artifacts and [`sanitize`] makes mounted ones safe; [`dry_run`] describes the plans. Nothing here
//! prints, and nothing here knows the command line. `${var.NAME}` ([`vars`]) is filled in while the file is parsed
//! ([`substitute`]); a workflow's stdout is its output, used by dependents as `${deps.NAME.stdout}` ([`outputs`]).

pub mod copy_out;
mod docker_options;
pub mod docker_py;
pub mod dry_run;
mod entry;
pub mod error;
mod interpolate;
mod load;
pub mod mounts;
pub mod order;
pub mod outputs;
#[cfg(test)]
mod props;
pub mod runner;
pub mod sanitize;
pub mod schema;
pub mod services;
mod settings;
mod substitute;
mod suggest;
pub mod vars;
#[cfg(test)]
mod vars_tests;

use std::path::{Path, PathBuf};

use crate::image::platform::Platform;
use crate::plan::{PullPolicy, RunPlan};

pub use error::WorkflowError;
pub use load::load;
pub use order::UnknownWorkflow;

/// Where the project directory appears in the container unless `working_dir` says otherwise.
pub const DEFAULT_WORKING_DIR: &str = "/workflow";
/// Where a `requirements` file is mounted in the container.
pub const REQUIREMENTS_PATH: &str = "/run/drun/requirements.txt";

/// What the command line sets for every job of a workflow file (the `drun run` flags that apply to both a
/// container and a workflow file).
#[derive(Clone, Debug, Default)]
pub struct RunWideOptions {
    pub pull: PullPolicy,
    pub platform: Option<Platform>,
    /// `-e`/`--env-file` settings, applied on top of each workflow's environment.
    pub env: Vec<(String, String)>,
    /// The host's variables that reach every job (`--env-host`, a Slurm job's): see `plan::host_env`.
    pub host_env: crate::plan::host_env::HostEnv,
    pub cdi_spec_dirs: Vec<PathBuf>,
    pub require_limits: bool,
    /// `--tmp-size`: see [`RunPlan::tmp_size`].
    pub tmp_size: Option<crate::units::ByteSize>,
    /// `--var` and `--var-file`: what `${var.NAME}` references in the file stand for.
    pub vars: vars::Variables,
    /// `--no-cache`: every setup is built again (see [`crate::plan::setup`]).
    pub no_cache: bool,
}

/// One artifact: a path relative to the working directory (normalised, never escaping it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactSpec {
    pub path: String,
    /// Mounted from the host while the job runs (written there directly), rather than copied out after it.
    pub mount: bool,
}

/// One validated workflow entry.
#[derive(Clone, Debug)]
pub struct WorkflowJob {
    pub name: String,
    /// Image, arguments, environment, volumes, limits and the run-wide options; the workflow's own mounts are
    /// added by [`WorkflowJob::run_plan`] (see [`mounts`]), the only way to the plan a job runs with.
    entry_plan: RunPlan,
    /// Absolute path in the container the commands run in.
    pub working_dir: String,
    /// Where the project directory (the one holding the workflow file) appears, copy-on-write.
    pub project_mount: String,
    pub artifacts: Vec<ArtifactSpec>,
    pub deps: Vec<String>,
    /// Host path of the requirements file, if any.
    pub requirements: Option<PathBuf>,
    /// Notes for keys a local run accepts but ignores.
    pub notes: Vec<String>,
    /// Where its command and environment use dependencies' outputs (`${deps.NAME.stdout}`).
    pub outputs: outputs::OutputUses,
    /// Background containers started before it and removed after it (`services`).
    pub services: Vec<services::ServiceSpec>,
    /// `detach: true`: its container runs in the background, as `drun run -d` (see `runner`).
    pub detach: Option<Detached>,
}

/// A workflow entry whose container runs in the background (docker-py's `detach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detached {
    /// `auto_remove`: nothing of it stays once it ended (`drun run -d --rm`).
    pub auto_remove: bool,
}

/// A loaded workflow file.
#[derive(Debug)]
pub struct WorkflowSet {
    pub file: PathBuf,
    /// The directory holding the file: the project.
    pub dir: PathBuf,
    pub jobs: Vec<WorkflowJob>,
}

impl WorkflowSet {
    pub fn job(&self, name: &str) -> Option<&WorkflowJob> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// Where artifacts and logs go: `given` (`--artifacts`) made absolute, else `artifacts/` beside the file.
    pub fn artifacts_dir(&self, given: Option<&Path>) -> std::io::Result<PathBuf> {
        match given {
            Some(dir) => std::path::absolute(dir),
            None => Ok(self.dir.join("artifacts")),
        }
    }
}
