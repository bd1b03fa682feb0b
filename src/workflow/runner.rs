//! Runs the jobs of a workflow file: every image made ready first (so a bad reference fails before anything
//! runs), then each job in the order given with its workflow mounts, a log beside its artifacts, and its artifacts
//! saved however the container ended. Progress and warnings go to the caller's [`Reporter`]; nothing here prints.

use std::cell::Cell;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::copy_out::copy_artifact;
use super::error::with_causes;
use super::mounts::Stage;
use super::outputs::{Capture, Captured, Outputs};
use super::sanitize::sanitize_tree;
use super::services;
use super::{WorkflowJob, WorkflowSet};
use crate::image::ready::{ensure_image, ImageRequest, ReadyError};
use crate::image::registry::config::Config;
use crate::image::store::Store;
use crate::plan::RunPlan;
use crate::run::{ExitView, RunError, RunHooks};

/// Where a workflow run tells its user what happens. Messages are complete sentences without a trailing newline.
pub trait Reporter {
    /// `job` is not run: `failed_dependency` failed.
    fn job_skipped(&self, job: &str, failed_dependency: &str);
    fn job_started(&self, job: &str);
    /// `job` (`detach: true`) runs in the background as container `id`.
    fn job_detached(&self, job: &str, id: &str);
    fn job_ended(&self, job: &str, end: JobEnd);
    /// Something about `job` the user should know; the job goes on.
    fn warning(&self, job: &str, message: &str);
    /// Why `job` failed before or while running its container (its exit status follows in `job_ended`).
    fn error(&self, job: &str, message: &str);
}

/// How one job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEnd {
    Succeeded,
    /// With this exit status.
    Failed(i32),
    /// drun was interrupted (Ctrl-C, SIGTERM) while the job ran; its artifacts were saved.
    Interrupted(i32),
}

/// How to run the jobs.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Where artifacts and logs go (see [`WorkflowSet::artifacts_dir`]).
    pub artifacts_root: PathBuf,
    /// `artifacts_root` is the caller's `--artifacts`, not `artifacts/` beside the workflow file (which the file's
    /// author controls: not followed if it is a symbolic link).
    pub artifacts_given: bool,
    /// After a failure, still run the jobs that do not depend on it.
    pub keep_going: bool,
    /// No pull progress.
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// An image could not be made ready (boxed: a pull error is large).
    #[error(transparent)]
    Image(Box<ReadyError>),
    #[error("cannot create the directory {path:?}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare the mounted artifact directory {path:?}")]
    PrepareArtifact {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the log {path:?}")]
    CreateLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What every job of one run shares.
struct Runner<'a> {
    store: &'a Store,
    cfg: &'a Config,
    state_dir: &'a Path,
    options: &'a RunnerOptions,
    reporter: &'a dyn Reporter,
    /// Who gets what drun creates for the caller (the invoking user under sudo).
    owner: Option<(u32, u32)>,
}

/// Runs `jobs` of `set` (dependencies first, as [`WorkflowSet::order`] gives them); returns drun's exit status:
/// 0, or the status of the first job that failed.
pub fn run_jobs(
    store: &Store,
    cfg: &Config,
    state_dir: &Path,
    set: &WorkflowSet,
    jobs: &[&WorkflowJob],
    options: &RunnerOptions,
    reporter: &dyn Reporter,
) -> Result<i32, RunnerError> {
    let artifacts_root = &options.artifacts_root;
    // Every image first: an unknown image fails the run before any workflow starts.
    let mut seen: Vec<&str> = Vec::new();
    for job in jobs {
        let (plan, _) = job.run_plan(set, artifacts_root, Stage::Planned);
        if !seen.contains(&job.entry_plan.image.as_str()) {
            let request = ImageRequest {
                reference: &plan.image,
                pull: plan.pull,
                platform: plan.platform.as_ref(),
                quiet: options.quiet,
            };
            ensure_image(store, cfg, &request).map_err(|e| RunnerError::Image(Box::new(e)))?;
            seen.push(&job.entry_plan.image);
        }
        for svc in &job.services {
            if !seen.contains(&svc.image.as_str()) {
                let request = ImageRequest {
                    reference: &svc.image,
                    pull: plan.pull,
                    platform: None,
                    quiet: options.quiet,
                };
                ensure_image(store, cfg, &request).map_err(|e| RunnerError::Image(Box::new(e)))?;
                seen.push(&svc.image);
            }
        }
    }
    let runner = Runner {
        store,
        cfg,
        state_dir,
        options,
        reporter,
        owner: crate::sys::userns::invoking_owner(),
    };
    runner.make_dirs(artifacts_root)?;
    // Outputs are kept in memory only for the workflows some job uses them from.
    let used: Vec<&str> = jobs.iter().flat_map(|j| j.outputs.workflows()).collect();
    let mut outputs = Outputs::default();
    let mut first_failure: Option<i32> = None;
    let mut failed: Vec<&str> = Vec::new();
    for job in jobs {
        if let Some(dep) = job.deps.iter().find(|d| failed.contains(&d.as_str())) {
            reporter.job_skipped(&job.name, dep);
            failed.push(&job.name);
            continue;
        }
        if first_failure.is_some() && !options.keep_going {
            break;
        }
        for note in &job.notes {
            reporter.warning(&job.name, note);
        }
        let (plan, missing) = job.run_plan(set, artifacts_root, Stage::Starting);
        for m in missing {
            reporter.warning(
                &job.name,
                &format!(
                    "artifact {} of {:?} was not produced; it is not mounted",
                    m.path, m.dependency
                ),
            );
        }
        let keep = used.contains(&job.name.as_str());
        // A detached job's restarts are its monitor's (`run::restart`): here it only fails when it cannot start.
        let restart = if job.detach.is_some() {
            crate::plan::RestartPolicy::No
        } else {
            plan.restart
        };
        let (mut end, mut captured) = runner.run_job(job, plan.clone(), &outputs, keep)?;
        // restart_policy on-failure: the job's container again, as a new one, after a failure.
        if let crate::plan::RestartPolicy::OnFailure(max) = restart {
            let mut restarts = 0;
            while let (JobEnd::Failed(code), true) = (end, restarts < max) {
                restarts += 1;
                reporter.warning(
                    &job.name,
                    &format!("exited with {code}; restarting it ({restarts} of {max}, restart_policy on-failure)"),
                );
                (end, captured) = runner.run_job(job, plan.clone(), &outputs, keep)?;
            }
        }
        if let Some(c) = captured {
            outputs.insert(&job.name, c);
        }
        reporter.job_ended(&job.name, end);
        match end {
            JobEnd::Succeeded => {}
            JobEnd::Failed(code) => {
                first_failure.get_or_insert(code);
                failed.push(&job.name);
            }
            JobEnd::Interrupted(code) => {
                first_failure.get_or_insert(code);
                break;
            }
        }
    }
    Ok(first_failure.unwrap_or(0))
}

impl Runner<'_> {
    /// `mkdir -p` that hands every directory it creates to the owner, under the caller's umask.
    fn make_dirs(&self, path: &Path) -> Result<(), RunnerError> {
        // In the artifacts directory nothing is followed: a symlink planted there (by another user who can write
        // the project directory) would lead root's logs and directories anywhere. Nor is the default directory
        // itself, `artifacts/` beside the workflow file, where whoever wrote the file may have put a link to
        // /root. Above it (and a `--artifacts` the caller gave), the caller's own path.
        let root = &self.options.artifacts_root;
        let below = path.starts_with(root) && (path != root || !self.options.artifacts_given);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(m) if m.file_type().is_symlink() && below => {
                return Err(RunnerError::CreateDir {
                    path: path.to_path_buf(),
                    source: io::Error::other("it is a symbolic link, which is not followed in the artifacts directory"),
                })
            }
            _ if !below && path.is_dir() => return Ok(()),
            _ => {}
        }
        if let Some(parent) = path.parent() {
            self.make_dirs(parent)?;
        }
        match crate::sys::safe_fs::create_dir_mode(path, crate::sys::safe_fs::for_caller(0o777)) {
            Ok(true) => {
                if let Some((u, g)) = self.owner {
                    let _ = std::os::unix::fs::lchown(path, Some(u), Some(g));
                }
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) =>
            {
                Ok(())
            }
            Err(source) => Err(RunnerError::CreateDir {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// A new file in the artifacts directory for the caller, never through a name planted there (a symlink
    /// would have root write wherever it points).
    fn new_file(&self, path: &Path) -> Result<std::fs::File, RunnerError> {
        let _ = std::fs::remove_file(path);
        let file = crate::sys::safe_fs::create_new(path, crate::sys::safe_fs::for_caller(0o666)).map_err(|source| {
            RunnerError::CreateLog {
                path: path.to_path_buf(),
                source,
            }
        })?;
        if let Some((u, g)) = self.owner {
            let _ = std::os::unix::fs::fchown(&file, Some(u), Some(g));
        }
        Ok(file)
    }

    /// Starts `job`'s services in order and waits until each with a health check is healthy. Returns those that
    /// run and, when one could not be made ready or drun was interrupted meanwhile, the job's exit status and why.
    fn start_services(&self, job: &WorkflowJob) -> (Vec<services::Running>, Option<(i32, String)>) {
        let mut running = Vec::new();
        if job.services.is_empty() {
            return (running, None);
        }
        let held = services::HeldSignals::hold();
        let inputs = services::StartInputs {
            store_root: self.store.root(),
            state_dir: self.state_dir,
            job: &job.name,
        };
        let mut failure = None;
        for svc in &job.services {
            if held.pending().is_some() {
                break;
            }
            match services::start(svc, &inputs) {
                Ok(r) => running.push(r),
                Err(e) => {
                    failure = Some((crate::exit::DRUN_ERROR, e.to_string()));
                    break;
                }
            }
        }
        if failure.is_none() {
            for r in &running {
                if held.pending().is_some() {
                    break;
                }
                if let Err(e) = r.wait_ready(self.state_dir, &|| held.pending().is_some()) {
                    if held.pending().is_none() {
                        failure = Some((crate::exit::DRUN_ERROR, with_causes(&e)));
                    }
                    break;
                }
            }
        }
        if let Some(sig) = held.release() {
            self.reporter
                .warning(&job.name, "interrupted while its services started: stopping them");
            failure = Some((crate::exit::from_signal(sig), String::new()));
        }
        (running, failure)
    }

    /// Stops and removes `job`'s services (in reverse order), their logs saved beside the job's.
    fn stop_services(&self, job: &WorkflowJob, running: Vec<services::Running>) {
        if running.is_empty() {
            return;
        }
        let held = services::HeldSignals::hold();
        let dir = services::log_path(&self.options.artifacts_root, &job.name, "x");
        let dir = dir.parent().expect("a log path has a directory");
        let have_dir = self.make_dirs(dir);
        for r in running.iter().rev() {
            let path = services::log_path(&self.options.artifacts_root, &job.name, &r.name);
            let file = match have_dir.as_ref().map(|_| self.new_file(&path)) {
                Ok(Ok(f)) => Some(f),
                Ok(Err(e)) => {
                    self.reporter
                        .warning(&job.name, &format!("service {:?}: {}", r.name, with_causes(&e)));
                    None
                }
                Err(e) => {
                    self.reporter
                        .warning(&job.name, &format!("service {:?}: {}", r.name, with_causes(e)));
                    None
                }
            };
            if let Err(e) = r.stop_and_remove(self.state_dir, file) {
                self.reporter.warning(&job.name, &format!("service {:?}: {e}", r.name));
            }
        }
        // A Ctrl-C meanwhile has nothing left to stop: the job's end was already decided.
        let _ = held.release();
    }

    /// A detached job (`detach: true`): its container started in the background, with a monitor of its own, as
    /// `drun run -d` does. It succeeds once the container runs; its output (`${deps.NAME.stdout}`) is the
    /// container's id, as `drun run -d` prints it and docker-py's `detach` returns the container.
    fn start_detached(
        &self,
        job: &WorkflowJob,
        plan: RunPlan,
        detached: super::Detached,
        log: &mut std::fs::File,
        mut capture: Capture,
    ) -> (JobEnd, Option<Captured>) {
        let order = crate::run::detach::MonitorOrder {
            plan,
            store_root: self.store.root().to_path_buf(),
            blob_cache: self.store.blob_cache().map(Path::to_path_buf),
            state_dir: self.state_dir.to_path_buf(),
            log: crate::run::logfile::LogOptions::default(),
            auto_remove: detached.auto_remove,
            quiet: self.options.quiet,
        };
        match crate::run::detach::launch_order(&order) {
            Ok(crate::run::detach::Launch::Started(id)) => {
                let _ = writeln!(
                    log,
                    "drun: runs in the background as container {} (drun logs/stop/rm {})",
                    &id[..12],
                    job.name
                );
                let _ = capture.write_all(format!("{id}\n").as_bytes());
                self.reporter.job_detached(&job.name, &id);
                (JobEnd::Succeeded, Some(capture.into_captured()))
            }
            // The monitor said why on drun's stderr.
            Ok(crate::run::detach::Launch::Failed(code)) => (JobEnd::Failed(code), None),
            Err(e) => {
                let message = format!("cannot start the container's monitor: {e}");
                self.reporter.error(&job.name, &message);
                let _ = writeln!(log, "drun: {message}");
                (JobEnd::Failed(crate::exit::DRUN_ERROR), None)
            }
        }
    }

    /// Runs `job` with `plan`, its dependencies' `outputs` filled in; returns how it ended and, when `keep_output`
    /// (a later job uses it), what it wrote to its stdout.
    fn run_job(
        &self,
        job: &WorkflowJob,
        mut plan: RunPlan,
        outputs: &Outputs,
        keep_output: bool,
    ) -> Result<(JobEnd, Option<Captured>), RunnerError> {
        let (reporter, owner) = (self.reporter, self.owner);
        let job_dir = self.options.artifacts_root.join(&job.name);
        self.make_dirs(&job_dir)?;
        // Mounted artifacts exist on the host before the container starts, so files land there as written. The
        // container writes there as root: until it has ended and what it left is made safe (`sanitize_tree`),
        // nobody else may reach in (a setuid-root binary, a device node).
        for a in job.artifacts.iter().filter(|a| a.mount) {
            let dir = job_dir.join(&a.path);
            self.make_dirs(&dir)?;
            crate::sys::safe_fs::open_dir_nofollow(&dir)
                .and_then(|d| d.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700)))
                .map_err(|source| RunnerError::PrepareArtifact { path: dir, source })?;
        }
        let mut log = self.new_file(&self.options.artifacts_root.join(format!("{}.log", job.name)))?;
        // Its stdout alone: its output, whole (what dependents use of it is bounded).
        let stdout_path = self.options.artifacts_root.join(format!("{}.stdout", job.name));
        let mut capture = Capture::new(self.new_file(&stdout_path)?, keep_output);

        reporter.job_started(&job.name);
        if let Err(e) = job.outputs.fill(&mut plan, outputs) {
            let message = e.to_string();
            reporter.error(&job.name, &message);
            let _ = writeln!(log, "drun: {message}");
            return Ok((JobEnd::Failed(crate::exit::DRUN_ERROR), None));
        }
        // Its services, each running (and healthy, when it has a health check) before its container starts.
        let (services, failure) = self.start_services(job);
        for r in &services {
            let _ = writeln!(log, "drun: service {:?} runs as container {}", r.name, &r.id[..12]);
        }
        if let Some((code, message)) = failure {
            if !message.is_empty() {
                reporter.error(&job.name, &message);
                let _ = writeln!(log, "drun: {message}");
            }
            self.stop_services(job, services);
            let end = match code {
                c if c > 128 && c != crate::exit::DRUN_ERROR => JobEnd::Interrupted(c),
                c => JobEnd::Failed(c),
            };
            return Ok((end, None));
        }
        if let Some(d) = job.detach {
            return Ok(self.start_detached(job, plan, d, &mut log, capture));
        }
        // Container paths of the working directory, relative to the project mount (where its host view starts).
        let rel_wd = job
            .working_dir
            .strip_prefix(&job.project_mount)
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        let hook_ended = Cell::new(None);
        let mut save_artifacts = |view: &ExitView| {
            hook_ended.set(Some(view.ended));
            let Some(project) = view.overlay else { return };
            for a in job.artifacts.iter().filter(|a| !a.mount) {
                let rel = if rel_wd.is_empty() {
                    a.path.clone()
                } else {
                    format!("{rel_wd}/{}", a.path)
                };
                match copy_artifact(project, &rel, &job_dir, &a.path, owner) {
                    Ok(n) => tracing::debug!(artifact = %a.path, files = n, "artifact saved"),
                    Err(e) => reporter.warning(&job.name, &format!("artifact {}: {}", a.path, with_causes(&e))),
                }
            }
        };
        let result = crate::run::run(
            self.store,
            self.cfg,
            &plan,
            self.state_dir,
            self.options.quiet,
            &mut RunHooks {
                log: Some(&mut log),
                stdout: Some(&mut capture),
                before_start: None,
                after_exit: Some(&mut save_artifacts),
                detach: None,
                setup_in: None,
                // A failed job runs again as a new container (`run_jobs`).
                restart: crate::plan::RestartPolicy::No,
            },
        );
        self.stop_services(job, services);
        if let Some(e) = capture.file_error.take() {
            reporter.warning(&job.name, &format!("cannot write {stdout_path:?}: {e}"));
        }
        let captured = Some(capture.into_captured()).filter(|_| keep_output);
        // Without a hook call the container never started: nothing of it can have written there.
        if hook_ended.get() != Some(false) {
            for a in job.artifacts.iter().filter(|a| a.mount) {
                if let Err(e) = sanitize_tree(&job_dir.join(&a.path), owner) {
                    reporter.warning(&job.name, &format!("artifact {}: {e}", a.path));
                }
            }
        } else {
            reporter.warning(
                &job.name,
                "processes of the container survived: its mounted artifacts stay private to root",
            );
        }
        let end = match result {
            Ok(o) if o.interrupted => JobEnd::Interrupted(o.code),
            Ok(o) if o.code == 0 => JobEnd::Succeeded,
            Ok(o) => JobEnd::Failed(o.code),
            Err(e) => {
                let code = e.exit_code();
                let message = match &e {
                    RunError::Exec { .. } => e.to_string(),
                    _ => with_causes(&e),
                };
                reporter.error(&job.name, &message);
                let _ = writeln!(log, "drun: {message}");
                JobEnd::Failed(code)
            }
        };
        Ok((end, captured))
    }
}
