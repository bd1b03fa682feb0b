//! `drun run WORKFLOW.yaml [NAME…]`: the run-wide flags, the file loaded and checked, then a dry run's plans
//! printed or the jobs run, with progress on stderr (the [`Reporter`] here).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cli::{GlobalArgs, RunArgs};
use crate::image::registry::config::Config;
use crate::plan::host_paths::{resolve_host_paths, HostInputs};
use crate::workflow::mounts::Stage;
use crate::workflow::runner::{JobEnd, Reporter, RunnerOptions};
use crate::workflow::RunWideOptions;

pub(super) fn execute(global: &GlobalArgs, args: RunArgs) -> Result<i32> {
    if !args.given.container.is_empty() {
        bail!(
            "{} cannot be used with a workflow file: set them per workflow in the file (with a workflow file, drun \
             run takes {})",
            args.given.container.join(", "),
            super::container::and_list(&crate::cli::run::workflow_file_flags())
        );
    }
    let common = &args.common;
    let host = resolve_host_paths(HostInputs {
        env_files: common.env_file.iter().map(|f| (f.clone(), ())).collect(),
        ..HostInputs::default()
    })
    .map_err(|failure| failure.error)?;
    let env = super::environment(common, &host.env_files)?;
    let options = RunWideOptions {
        pull: common.pull,
        platform: common.platform.as_deref().map(str::parse).transpose()?,
        host_env: super::host_variables(common, &env),
        env,
        cdi_spec_dirs: common.cdi_spec_dir.clone(),
        require_limits: common.require_limits,
        tmp_size: super::tmp_size(common)?,
    };
    let file = PathBuf::from(&args.image_and_command[0]);
    let set = crate::workflow::load(&file, &super::host_env, &options)?;
    let cfg = Config::load()?;
    let store = super::super::open_store(global)?;
    let state_dir = super::super::state_dir(global)?;
    let jobs = set.order(&args.image_and_command[1..])?;
    let artifacts_root = set
        .artifacts_dir(args.workflow.artifacts.as_deref())
        .context("cannot make the artifacts directory absolute")?;
    if args.workflow.dry_run {
        for job in &jobs {
            let (plan, _) = job.run_plan(&set, &artifacts_root, Stage::Planned);
            print!(
                "{}",
                crate::workflow::dry_run::describe(&store, job, &plan, &artifacts_root)
            );
        }
        return Ok(0);
    }
    let options = RunnerOptions {
        artifacts_root,
        keep_going: args.workflow.keep_going,
        quiet: common.quiet,
    };
    Ok(crate::workflow::runner::run_jobs(
        &store,
        &cfg,
        &state_dir,
        &set,
        &jobs,
        &options,
        &StderrReporter,
    )?)
}

/// Progress as timestamped lines on stderr, warnings and errors prefixed with the workflow's name.
struct StderrReporter;

impl StderrReporter {
    fn status(&self, message: &str) {
        let now = time::OffsetDateTime::now_utc();
        eprintln!(
            "[{:04}-{:02}-{:02} {:02}:{:02}:{:02}] {message}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
    }
}

impl Reporter for StderrReporter {
    fn job_skipped(&self, job: &str, failed_dependency: &str) {
        self.status(&format!(
            "Workflow \"{job}\" is skipped: its dependency \"{failed_dependency}\" failed."
        ));
    }

    fn job_started(&self, job: &str) {
        self.status(&format!("Workflow \"{job}\" is started."));
    }

    fn job_ended(&self, job: &str, end: JobEnd) {
        self.status(&match end {
            JobEnd::Succeeded => format!("Workflow \"{job}\" is successful."),
            JobEnd::Failed(code) => format!("Workflow \"{job}\" is failed (exit code {code})."),
            JobEnd::Interrupted(code) => {
                format!("Workflow \"{job}\" is interrupted (exit code {code}); its artifacts were saved.")
            }
        });
    }

    fn warning(&self, job: &str, message: &str) {
        eprintln!("warning: workflow {job:?}: {message}");
    }

    fn error(&self, job: &str, message: &str) {
        eprintln!("error: workflow {job:?}: {message}");
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Command, GlobalArgs};

    #[test]
    fn container_flags_are_refused_with_a_workflow_file() {
        let Command::Run(args) = crate::cli::parse_from(["drun", "run", "--memory", "1g", "-v", "/a:/b", "wf.yaml"])
            .unwrap()
            .command
        else {
            panic!("not a run")
        };
        let global = GlobalArgs {
            root: None,
            state: None,
            blob_cache: None,
            log_level: None,
        };
        let e = super::execute(&global, *args).unwrap_err().to_string();
        assert!(
            e.starts_with("-v/--volume, -m/--memory cannot be used with a workflow file: set them per workflow"),
            "{e}"
        );
        assert!(e.contains("drun run takes -e/--env, --env-file, --pull"), "{e}");
    }
}
