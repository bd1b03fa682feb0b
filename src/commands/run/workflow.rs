//! `drun run WORKFLOW.yaml [NAME…]`: the run-wide flags, the file loaded and checked, then a dry run's plans
//! printed or the jobs run, with progress on stderr (the [`Reporter`] here).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cli::run::LogFormat;
use crate::cli::{GlobalArgs, RunArgs};
use crate::image::registry::config::Config;
use crate::plan::host_paths::{resolve_host_paths, HostInputs};
use crate::workflow::mounts::Stage;
use crate::workflow::runner::{JobEnd, Reporter, RunnerOptions};
use crate::workflow::vars::Variables;
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
    // Files first, then `--var`: the command line wins.
    let mut vars = Variables::default();
    for f in &args.workflow.var_file {
        vars.add_file(f)?;
    }
    for v in &args.workflow.vars {
        vars.add_arg(v)?;
    }
    let options = RunWideOptions {
        pull: common.pull,
        platform: common.platform.as_deref().map(str::parse).transpose()?,
        host_env: super::host_variables(common, &env),
        env,
        cdi_spec_dirs: common.cdi_spec_dir.clone(),
        require_limits: common.require_limits,
        tmp_size: super::tmp_size(common)?,
        vars,
        no_cache: args.workflow.no_cache,
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
        artifacts_given: args.workflow.artifacts.is_some(),
        keep_going: args.workflow.keep_going,
        quiet: common.quiet,
    };
    let json = JsonReporter::default();
    let reporter: &dyn Reporter = match args.workflow.log_format {
        LogFormat::Text => &StderrReporter,
        LogFormat::Json => &json,
    };
    Ok(crate::workflow::runner::run_jobs(
        &store, &cfg, &state_dir, &set, &jobs, &options, reporter,
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

    fn job_detached(&self, job: &str, id: &str) {
        self.status(&format!(
            "Workflow \"{job}\" runs in the background as container {} (drun logs {job}).",
            &id[..12]
        ));
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

/// `--log-format json`: one JSON object per line on stderr for each event: the workflow, the event, its time
/// (RFC 3339, UTC), and for an end its exit code and duration in seconds.
#[derive(Default)]
struct JsonReporter {
    started: RefCell<HashMap<String, Instant>>,
}

impl JsonReporter {
    fn event(&self, job: &str, event: &str, mut fields: serde_json::Map<String, serde_json::Value>) {
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut object = serde_json::Map::new();
        object.insert("workflow".into(), job.into());
        object.insert("event".into(), event.into());
        object.insert("time".into(), time.into());
        object.append(&mut fields);
        eprintln!("{}", serde_json::Value::Object(object));
    }
}

impl Reporter for JsonReporter {
    fn job_skipped(&self, job: &str, failed_dependency: &str) {
        let mut fields = serde_json::Map::new();
        fields.insert("dependency".into(), failed_dependency.into());
        self.event(job, "skipped", fields);
    }

    fn job_started(&self, job: &str) {
        self.started.borrow_mut().insert(job.to_string(), Instant::now());
        self.event(job, "started", serde_json::Map::new());
    }

    fn job_detached(&self, job: &str, id: &str) {
        let mut fields = serde_json::Map::new();
        fields.insert("container".into(), id.into());
        self.event(job, "detached", fields);
    }

    fn job_ended(&self, job: &str, end: JobEnd) {
        let (event, code) = match end {
            JobEnd::Succeeded => ("successful", 0),
            JobEnd::Failed(code) => ("failed", code),
            JobEnd::Interrupted(code) => ("interrupted", code),
        };
        let mut fields = serde_json::Map::new();
        fields.insert("exit_code".into(), code.into());
        if let Some(start) = self.started.borrow().get(job) {
            // Milliseconds are plenty for a workflow's duration.
            let seconds = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
            fields.insert("duration".into(), seconds.into());
        }
        self.event(job, event, fields);
    }

    fn warning(&self, job: &str, message: &str) {
        let mut fields = serde_json::Map::new();
        fields.insert("message".into(), message.into());
        self.event(job, "warning", fields);
    }

    fn error(&self, job: &str, message: &str) {
        let mut fields = serde_json::Map::new();
        fields.insert("message".into(), message.into());
        self.event(job, "error", fields);
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
            image_dir: None,
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
