//! Runs the jobs of a workflow file: images first (so a bad reference fails before anything runs), then each job
//! in dependency order with its project directory, artifact and dependency mounts, a log beside its artifacts,
//! and its artifacts copied out however the container ended.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::image::platform::Platform;
use crate::image::ready::{ensure_image, ImageRequest};
use crate::image::registry::config::Config;
use crate::image::store::Store;
use crate::plan::{MountSpec, PullPolicy, RunPlan};
use crate::run::{ExitView, RunError, RunHooks, StartView};
use crate::workflow::{Job, WorkflowSet, REQUIREMENTS_PATH};

/// Run-wide settings from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where artifacts and logs go (default: `artifacts/` beside the workflow file).
    pub artifacts: Option<PathBuf>,
    pub dry_run: bool,
    /// After a failure, still run the workflows that do not depend on it.
    pub keep_going: bool,
    pub quiet: bool,
    pub pull: PullPolicy,
    pub platform: Option<Platform>,
    /// `-e`/`--env-file` settings, applied on top of each workflow's environment.
    pub env: Vec<(String, String)>,
    pub cdi_spec_dirs: Vec<PathBuf>,
    pub require_limits: bool,
}

fn give(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((u, g)) = owner {
        let _ = std::os::unix::fs::lchown(path, Some(u), Some(g));
    }
}

/// `mkdir -p` that hands every directory it creates to `owner`.
fn make_dirs(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        make_dirs(parent, owner)?;
    }
    // For the caller, under their umask (drun's own is private).
    match crate::safe_fs::create_dir_mode(path, crate::safe_fs::for_caller(0o777)) {
        Ok(true) => {
            give(path, owner);
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

fn stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn say(msg: &str) {
    eprintln!("[{}] {msg}", stamp());
}

/// The complete plan of one job: the workflow's own plan plus project, artifact, dependency and requirements
/// mounts and the run-wide options. `for_run`: right before the job runs, when its dependencies' artifacts exist
/// or not (missing ones are left out, with a warning).
pub fn job_plan(set: &WorkflowSet, job: &Job, artifacts_root: &Path, opts: &Options, for_run: bool) -> RunPlan {
    let mut plan = job.plan.clone();
    plan.pull = opts.pull;
    plan.platform = opts.platform.clone();
    plan.env.extend(opts.env.iter().cloned());
    plan.cdi_spec_dirs = opts.cdi_spec_dirs.clone();
    plan.require_limits = opts.require_limits;
    plan.mounts.insert(
        0,
        MountSpec::Overlay {
            source: set.dir.clone(),
            destination: job.project_mount.clone(),
        },
    );
    // An init that passes Ctrl-C to the whole script (a shell as PID 1 would ignore it).
    plan.init = crate::run::init_available();
    plan.init_signals_group = plan.init;
    if let Some(req) = &job.requirements {
        plan.mounts.push(MountSpec::Bind {
            source: req.clone(),
            destination: REQUIREMENTS_PATH.into(),
            read_only: true,
        });
    }
    for dep in &job.deps {
        let Some(d) = set.job(dep) else { continue };
        for a in &d.artifacts {
            let source = artifacts_root.join(&d.name).join(&a.path);
            if for_run && !source.exists() {
                eprintln!(
                    "warning: workflow {:?}: artifact {} of {:?} was not produced; it is not mounted",
                    job.name, a.path, d.name
                );
                continue;
            }
            plan.mounts.push(MountSpec::Bind {
                source,
                destination: format!("{}/{}", d.working_dir, a.path),
                read_only: true,
            });
        }
    }
    for a in job.artifacts.iter().filter(|a| a.mount) {
        plan.mounts.push(MountSpec::Bind {
            source: artifacts_root.join(&job.name).join(&a.path),
            destination: format!("{}/{}", job.working_dir, a.path),
            read_only: false,
        });
    }
    plan
}

/// Prints what would run.
fn print_plan(store: &Store, job: &Job, plan: &RunPlan, artifacts_root: &Path) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "workflow {}", job.name);
    let record = store.image_by_alias(&plan.image).ok().flatten().or_else(|| {
        let names = crate::image::source::lookup_names(&plan.image);
        store.find_image(&plan.image, &names).ok()
    });
    match &record {
        Some(r) => {
            let _ = writeln!(out, "  image:       {} ({}@{})", plan.image, r.name, r.manifest_digest);
        }
        None => {
            let _ = writeln!(
                out,
                "  image:       {} (not in the store: pulled when the workflow runs)",
                plan.image
            );
        }
    }
    let argv: Vec<String> = plan
        .entrypoint
        .iter()
        .flatten()
        .chain(plan.command.iter().flatten())
        .cloned()
        .collect();
    if plan.entrypoint.is_none() && plan.command.is_none() {
        let _ = writeln!(out, "  argv:        (the image's Entrypoint and Cmd)");
    } else {
        let _ = writeln!(
            out,
            "  argv:        {}",
            serde_json::to_string(&argv).unwrap_or_default()
        );
    }
    if plan.init {
        let _ = writeln!(
            out,
            "  init:        catatonit (Ctrl-C reaches the whole command's process group)"
        );
    }
    let _ = writeln!(out, "  working_dir: {}", job.working_dir);
    if !job.deps.is_empty() {
        let _ = writeln!(out, "  deps:        {}", job.deps.join(", "));
    }
    for (k, v) in &plan.env {
        let _ = writeln!(out, "  env:         {k}={v}");
    }
    for m in &plan.mounts {
        let _ = match m {
            MountSpec::Bind {
                source,
                destination,
                read_only,
            } => writeln!(
                out,
                "  mount:       {} -> {destination}{}",
                source.display(),
                if *read_only { " (ro)" } else { "" }
            ),
            MountSpec::Tmpfs { destination, options } => {
                writeln!(out, "  mount:       tmpfs -> {destination} {}", options.join(","))
            }
            MountSpec::Overlay { source, destination } => writeln!(
                out,
                "  mount:       {} -> {destination} (copy-on-write)",
                source.display()
            ),
        };
    }
    for (k, v) in &plan.labels {
        let _ = writeln!(out, "  label:       {k}={v}");
    }
    if let Some(c) = plan.cpus {
        let _ = writeln!(out, "  cpus:        {c}");
    }
    if let Some(m) = plan.memory {
        let _ = writeln!(out, "  memory:      {} ({} bytes)", m, m.0);
    }
    if let Some(s) = plan.shm_size {
        let _ = writeln!(out, "  shm_size:    {} ({} bytes)", s, s.0);
    }
    if let Some(g) = &plan.gpus {
        let _ = writeln!(
            out,
            "  gpus:        {}{}{}",
            match &g.selector {
                crate::gpu::select::Selector::All => "all".to_string(),
                crate::gpu::select::Selector::Count(n) => n.to_string(),
                crate::gpu::select::Selector::Ids(ids) => ids.join(","),
            },
            g.name.as_ref().map(|n| format!(" name~{n:?}")).unwrap_or_default(),
            g.memory_mib.map(|m| format!(" memory>={m}MiB")).unwrap_or_default()
        );
    }
    for a in &job.artifacts {
        let _ = writeln!(
            out,
            "  artifact:    {}/{} -> {}{}",
            job.working_dir,
            a.path,
            artifacts_root.join(&job.name).join(&a.path).display(),
            if a.mount { " (mounted)" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "  log:         {}",
        artifacts_root.join(format!("{}.log", job.name)).display()
    );
}

/// How one job ended.
enum Ended {
    Ok,
    Failed(i32),
    Interrupted(i32),
}

/// Runs the workflows `names` (all when empty) of `set`; returns drun's exit status.
pub fn run(
    store: &Store,
    cfg: &Config,
    state_dir: &Path,
    set: &WorkflowSet,
    names: &[String],
    opts: &Options,
) -> anyhow::Result<i32> {
    let order = set.order(names).map_err(anyhow::Error::msg)?;
    let artifacts_root = match &opts.artifacts {
        Some(a) => std::path::absolute(a)?,
        None => set.dir.join("artifacts"),
    };
    let plans: Vec<RunPlan> = order
        .iter()
        .map(|j| job_plan(set, j, &artifacts_root, opts, false))
        .collect();
    if opts.dry_run {
        for (job, plan) in order.iter().zip(&plans) {
            print_plan(store, job, plan, &artifacts_root);
        }
        return Ok(0);
    }
    // Every image first: an unknown image fails the run before any workflow starts.
    let mut seen = Vec::new();
    for plan in &plans {
        if !seen.contains(&plan.image) {
            let request = ImageRequest {
                reference: &plan.image,
                pull: plan.pull,
                platform: plan.platform.as_ref(),
                quiet: opts.quiet,
            };
            ensure_image(store, cfg, &request)?;
            seen.push(plan.image.clone());
        }
    }
    let owner = crate::sys::userns::invoking_owner();
    make_dirs(&artifacts_root, owner)?;
    let mut first_failure: Option<i32> = None;
    let mut failed: Vec<String> = Vec::new();
    for job in order {
        if let Some(dep) = job.deps.iter().find(|d| failed.contains(d)) {
            say(&format!(
                "Workflow \"{}\" is skipped: its dependency \"{dep}\" failed.",
                job.name
            ));
            failed.push(job.name.clone());
            continue;
        }
        if first_failure.is_some() && !opts.keep_going {
            break;
        }
        for n in &job.notes {
            eprintln!("warning: workflow {:?}: {n}", job.name);
        }
        let mut plan = job_plan(set, job, &artifacts_root, opts, true);
        // Pulled above (a second `--pull always` here would only fetch the same manifest again).
        if plan.pull == PullPolicy::Always {
            plan.pull = PullPolicy::Missing;
        }
        match run_job(store, cfg, state_dir, job, &plan, &artifacts_root, owner, opts)? {
            Ended::Ok => {}
            Ended::Failed(code) => {
                first_failure.get_or_insert(code);
                failed.push(job.name.clone());
            }
            Ended::Interrupted(code) => {
                first_failure.get_or_insert(code);
                break;
            }
        }
    }
    Ok(first_failure.unwrap_or(0))
}

#[allow(clippy::too_many_arguments)]
fn run_job(
    store: &Store,
    cfg: &Config,
    state_dir: &Path,
    job: &Job,
    plan: &RunPlan,
    artifacts_root: &Path,
    owner: Option<(u32, u32)>,
    opts: &Options,
) -> anyhow::Result<Ended> {
    let job_dir = artifacts_root.join(&job.name);
    make_dirs(&job_dir, owner)?;
    // Mounted artifacts exist on the host before the container starts, so files land there as written. The
    // container writes there as root: until it has ended and what it left is made safe (`sanitize_tree`), nobody
    // else may reach in (a setuid-root binary, a device node).
    for a in job.artifacts.iter().filter(|a| a.mount) {
        let dir = job_dir.join(&a.path);
        make_dirs(&dir, owner)?;
        crate::safe_fs::open_dir_nofollow(&dir)
            .and_then(|d| d.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700)))
            .map_err(|e| anyhow::anyhow!("cannot prepare {}: {e}", dir.display()))?;
    }
    let log_path = artifacts_root.join(format!("{}.log", job.name));
    // A new file, never through a name planted there (a symlink would have root write wherever it points).
    let _ = fs::remove_file(&log_path);
    let mut log = crate::safe_fs::create_new(&log_path, crate::safe_fs::for_caller(0o666))
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", log_path.display()))?;
    if let Some((u, g)) = owner {
        let _ = std::os::unix::fs::fchown(&log, Some(u), Some(g));
    }

    say(&format!("Workflow \"{}\" is started.", job.name));
    // Container paths of the working directory, relative to the project mount (where its host view starts).
    let rel_wd = job
        .working_dir
        .strip_prefix(&job.project_mount)
        .unwrap_or("")
        .trim_matches('/')
        .to_string();
    let hook_ended = std::cell::Cell::new(None);
    let mut after = |view: &ExitView| {
        hook_ended.set(Some(view.ended));
        let Some(project) = view.overlay else { return };
        for a in job.artifacts.iter().filter(|a| !a.mount) {
            let rel = if rel_wd.is_empty() {
                a.path.clone()
            } else {
                format!("{rel_wd}/{}", a.path)
            };
            match super::copy_out::copy_artifact(project, &rel, &job_dir, &a.path, owner) {
                Ok(n) => tracing::debug!(artifact = %a.path, files = n, "artifact saved"),
                Err(e) => eprintln!("warning: workflow {:?}: artifact {}: {e}", job.name, a.path),
            }
        }
    };
    // `requirements` are installed with `pip install -r`: without pip the job fails before anything starts.
    let mut require_pip = |view: &StartView| {
        if job.requirements.is_none() || ["pip", "pip3"].iter().any(|p| view.has_program(p)) {
            return Ok(());
        }
        Err(RunError::Exec {
            path: "pip".into(),
            message: "not found in the image (looked for pip and pip3 in its PATH); `requirements` are installed \
                      with `pip install -r`, so the image needs pip"
                .into(),
            code: crate::exit::NOT_FOUND,
        })
    };
    let result = crate::run::run(
        store,
        cfg,
        plan,
        state_dir,
        opts.quiet,
        &mut RunHooks {
            log: Some(&mut log),
            before_start: Some(&mut require_pip),
            after_exit: Some(&mut after),
        },
    );
    // Without a hook call the container never started: nothing of it can have written there.
    if hook_ended.get() != Some(false) {
        for a in job.artifacts.iter().filter(|a| a.mount) {
            if let Err(e) = super::copy_out::sanitize_tree(&job_dir.join(&a.path), owner) {
                eprintln!("warning: workflow {:?}: artifact {}: {e}", job.name, a.path);
            }
        }
    } else {
        eprintln!(
            "warning: workflow {:?}: processes of the container survived: its mounted artifacts stay private to root",
            job.name
        );
    }
    let ended = match result {
        Ok(o) if o.interrupted => Ended::Interrupted(o.code),
        Ok(o) if o.code == 0 => Ended::Ok,
        Ok(o) => Ended::Failed(o.code),
        Err(e) => {
            let code = e.exit_code();
            let msg = match &e {
                RunError::Exec { .. } => e.to_string(),
                _ => format!("{:#}", anyhow::Error::from(e)),
            };
            eprintln!("error: workflow {:?}: {msg}", job.name);
            let _ = writeln!(log, "drun: {msg}");
            Ended::Failed(code)
        }
    };
    match &ended {
        Ended::Ok => say(&format!("Workflow \"{}\" is successful.", job.name)),
        Ended::Failed(code) => say(&format!("Workflow \"{}\" is failed (exit code {code}).", job.name)),
        Ended::Interrupted(code) => say(&format!(
            "Workflow \"{}\" is interrupted (exit code {code}); its artifacts were saved.",
            job.name
        )),
    }
    Ok(ended)
}
