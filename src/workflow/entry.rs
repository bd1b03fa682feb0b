//! One workflow entry → a [`WorkflowJob`]: its identity, working directory, script and artifacts here; its
//! container settings in [`super::settings`]; then the one look at the host ([`resolve_host_paths`]) and the plan,
//! built once from the entry and the run-wide options.

use std::path::{Component, Path};

use serde_saphyr::Location;

use super::docker_options::docker_options;
use super::error::{with_causes, Locator, WorkflowError};
use super::outputs::{OutputUses, Template};
use super::settings::container_settings;
use super::{schema, ArtifactSpec, RunWideOptions, WorkflowJob, DEFAULT_WORKING_DIR, REQUIREMENTS_PATH};
use crate::plan::host_paths::{resolve_host_paths, HostInputs, HostPathError, HostPathFailure};
use crate::plan::setup::{SetupPlan, SETUP_DONE};
use crate::plan::RunPlan;
use schema::StringOrList;

/// What turning an entry into a job needs besides the entry.
pub(super) struct EntryInputs<'a> {
    pub locator: &'a Locator<'a>,
    /// The project: the directory holding the workflow file; relative host paths are relative to it.
    pub dir: &'a Path,
    /// The host's environment (for `${VAR}` and `- KEY`).
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    pub options: &'a RunWideOptions,
}

pub(super) fn job(w: &schema::Workflow, inputs: &EntryInputs<'_>) -> Result<WorkflowJob, WorkflowError> {
    let at = |loc: &Location, message: String| inputs.locator.at(loc, message);
    if let Some(p) = &w.provider {
        if p.value != "docker" {
            return Err(at(
                &p.referenced,
                format!(
                    "provider {:?} is not supported: drun runs workflows of the `docker` provider (provider: docker)",
                    p.value
                ),
            ));
        }
    }
    if w.image.value.trim().is_empty() {
        return Err(at(&w.image.referenced, "image must not be empty".into()));
    }
    let mut notes = Vec::new();
    if let Some(v) = &w.version {
        notes.push(format!(
            "`version: {}` is ignored: the docker provider uses the image's own Python",
            v.value.0
        ));
    }
    let (working_dir, project_mount) = working_dir(w, inputs.locator)?;
    let mut uses = Vec::new();
    let Argv { entrypoint, command } = argv(w, inputs.locator, &mut uses)?;
    let artifacts = artifacts(w, inputs.locator, &working_dir)?;
    let mut settings = container_settings(w, inputs)?;
    notes.append(&mut settings.notes);
    let mut docker = docker_options(w, inputs)?;
    notes.append(&mut docker.notes);
    let both = |loc: &Location, a: &str, b: &str| at(loc, format!("{a} and {b} are both set: use one"));
    if let (Some(_), Some(n)) = (settings.cpus, &w.nano_cpus) {
        return Err(both(&n.referenced, "nano_cpus", "resources.cpu"));
    }
    if let (Some(_), Some(d)) = (&settings.gpus, w.device_requests.first()) {
        return Err(both(&d.referenced, "device_requests", "resources.gpu"));
    }
    if let (Some(_), Some(n)) = (&w.network_mode, w.network.as_ref()) {
        return Err(both(&n.referenced, "network", "network_mode"));
    }
    let services = super::services::services(w, inputs)?;
    let health = w
        .healthcheck
        .as_ref()
        .map(|h| super::services::healthcheck(h, inputs))
        .transpose()?
        .unwrap_or_default();
    let mut mounts = settings.mounts;
    mounts.append(&mut docker.mounts);

    // The one look at the host: bind sources and the requirements file, relative to the project.
    let host = resolve_host_paths(HostInputs {
        base: inputs.dir.to_path_buf(),
        mounts,
        env_files: Vec::new(),
        files: w
            .requirements
            .iter()
            .map(|r| (r.value.clone().into(), r.referenced))
            .collect(),
        devices: settings.host_devices,
        blkio: docker.blkio,
    })
    .map_err(|HostPathFailure { at: loc, error }| {
        let message = match &error {
            HostPathError::BindSource { source, .. } => format!("{error} (relative to the workflow file): {source}"),
            HostPathError::MissingFile { path } => format!("requirements file {} does not exist", path.display()),
            HostPathError::EnvFile { .. } | HostPathError::DeviceMissing { .. } => with_causes(&error),
            HostPathError::NotADevice { .. }
            | HostPathError::NotABlockDevice { .. }
            | HostPathError::DeviceReplaceable { .. } => error.to_string(),
        };
        at(&loc, message)
    })?;
    let requirements = host.files.into_iter().next();

    let setup = setup(w, inputs, &requirements)?;
    let mut outputs = OutputUses::default();
    // The build-time environment first: the run's own wins over it.
    let mut env = setup.as_ref().map(|s| s.env.clone()).unwrap_or_default();
    for (name, value, loc) in settings.env {
        if value.outputs().next().is_some() {
            uses.extend(value.outputs().map(|o| (o.to_string(), loc)));
            outputs.env.push((env.len(), value.clone()));
        }
        env.push((name, value.written()));
    }
    env.extend(inputs.options.env.iter().cloned());
    if command
        .as_ref()
        .is_some_and(|c| c.iter().any(|t| t.outputs().next().is_some()))
    {
        outputs.command = command.clone();
    }
    let command = command.map(|c| c.iter().map(Template::written).collect());
    // An output is there only once its workflow has run: it must be a declared dependency.
    for (name, loc) in &uses {
        if !w.deps.iter().any(|d| &d.value == name) {
            return Err(at(
                loc,
                format!(
                    "`${{deps.{name}.stdout}}` uses the output of {name:?}, which is not a dependency of this \
                     workflow: list it in `deps`"
                ),
            ));
        }
    }
    // An init that passes Ctrl-C to the whole script (a shell as PID 1 would ignore it), unless `init: false`.
    let init = docker.init.unwrap_or_else(crate::run::init_available);
    let options = inputs.options;
    let mut tuning = docker.tuning;
    for (kind, value) in host.blkio {
        tuning.push_blkio(kind, value);
    }
    let detach = detached(w, inputs, &artifacts, &services, docker.restart)?;
    let entry_plan = RunPlan {
        // `drun logs NAME`, `drun stop NAME`: a detached workflow's name is its container's.
        name: detach.map(|_| w.name.value.clone()),
        tuning,
        pids_limit: docker.pids_limit,
        oom_score_adj: docker.oom_score_adj,
        ipc: docker.ipc,
        pid: docker.pid,
        uts: docker.uts,
        domainname: docker.domainname,
        dns: docker.dns,
        group_add: docker.group_add,
        sysctls: docker.sysctls,
        stop_signal: docker.stop_signal,
        restart: docker.restart,
        interactive: docker.interactive,
        tty: docker.tty,
        seccomp: docker.seccomp.unwrap_or_default(),
        no_new_privileges: docker.no_new_privileges.unwrap_or(true),
        pull: options.pull,
        platform: docker.platform.or_else(|| options.platform.clone()),
        entrypoint,
        command,
        env,
        host_env: options.host_env.clone(),
        mounts: host.mounts,
        workdir: Some(working_dir.clone()),
        user: w.user.as_ref().map(|u| u.value.0.clone()),
        memory: settings.memory,
        cpus: settings.cpus.or(docker.cpus),
        shm_size: settings.shm_size,
        network: docker.network.unwrap_or(settings.network),
        hostname: w.hostname.as_ref().map(|h| h.value.clone()),
        read_only: w.read_only,
        cap_add: w.cap_add.iter().map(|c| c.value.clone()).collect(),
        cap_drop: w.cap_drop.iter().map(|c| c.value.clone()).collect(),
        privileged: w.privileged,
        ulimits: settings.ulimits,
        init,
        init_signals_group: init,
        labels: settings.labels,
        gpus: settings.gpus.or(docker.gpus),
        devices: settings.cdi_devices,
        host_devices: host.devices,
        rdma: w.resources.as_ref().is_some_and(|r| r.rdma),
        cdi_spec_dirs: options.cdi_spec_dirs.clone(),
        require_limits: options.require_limits,
        tmp_size: options.tmp_size,
        setup,
        health,
        ..RunPlan::new(&image_reference(w, inputs)?)
    };
    crate::plan::check::check(&entry_plan).map_err(|e| at(&w.name.referenced, e.to_string()))?;
    Ok(WorkflowJob {
        name: w.name.value.clone(),
        entry_plan,
        working_dir,
        project_mount,
        artifacts,
        deps: w.deps.iter().map(|d| d.value.clone()).collect(),
        requirements,
        notes,
        outputs,
        services,
        detach,
    })
}

/// `detach: true`, checked: a container that outlives the workflow run has nothing copied out of it and no
/// services stopped after it.
fn detached(
    w: &schema::Workflow,
    inputs: &EntryInputs<'_>,
    artifacts: &[super::ArtifactSpec],
    services: &[super::services::ServiceSpec],
    restart: crate::plan::RestartPolicy,
) -> Result<Option<super::Detached>, WorkflowError> {
    let Some(d) = w.detach.as_ref().filter(|d| d.value) else {
        return Ok(None);
    };
    let at = |why: &str| Err(inputs.locator.at(&d.referenced, format!("`detach: true` {why}")));
    if !artifacts.is_empty() {
        return at(
            "cannot have artifacts: nothing is copied out of a container while it runs, and a detached one runs \
             after drun has returned; write them to a volume instead",
        );
    }
    if !services.is_empty() {
        return at(
            "cannot have services: they are removed once the workflow's container has ended; run them as detached \
             workflows of their own",
        );
    }
    let auto_remove = [&w.auto_remove, &w.remove]
        .into_iter()
        .any(|v| v.as_ref().is_some_and(|v| v.value));
    if auto_remove && restart != crate::plan::RestartPolicy::No {
        return at(
            "with `auto_remove` cannot have a `restart_policy`: a container removed when it exits cannot be \
             restarted",
        );
    }
    Ok(Some(super::Detached { auto_remove }))
}

/// The working directory and where the project appears: `/workflow` unless `working_dir` says otherwise; a
/// relative `working_dir` is below the project (dstack's were relative to the repository).
/// The entry's `image`: a registry reference as written, or a squashfs image file (`./app.sqsh`, `sqsh:FILE`,
/// a name ending in `.sqsh` or `.squashfs` that exists there) relative to the workflow file's directory, like its
/// other host paths, passed on as `sqsh:` and its absolute path.
fn image_reference(w: &schema::Workflow, inputs: &EntryInputs<'_>) -> Result<String, WorkflowError> {
    let typed = w.image.value.trim();
    let (path, explicit) = match typed.strip_prefix("sqsh:") {
        Some(rest) => (rest, true),
        None => (
            typed,
            typed.starts_with("./") || typed.starts_with("../") || typed.starts_with('/'),
        ),
    };
    let named = path.ends_with(".sqsh") || path.ends_with(".squashfs");
    if !explicit && !named {
        return Ok(typed.to_string());
    }
    // (`components` drops the `.` of `./app.sqsh`.)
    let file: std::path::PathBuf = inputs.dir.join(path).components().collect();
    let found = std::fs::symlink_metadata(&file).is_ok();
    if !explicit && !found {
        // `app.sqsh` may also be a repository name.
        return Ok(typed.to_string());
    }
    if !found {
        return Err(inputs.locator.at(
            &w.image.referenced,
            format!(
                "cannot find the image file {:?} (relative to the workflow file: {})",
                path,
                file.display()
            ),
        ));
    }
    Ok(format!("sqsh:{}", file.display()))
}

fn working_dir(w: &schema::Workflow, locator: &Locator<'_>) -> Result<(String, String), WorkflowError> {
    Ok(match &w.working_dir {
        None => (DEFAULT_WORKING_DIR.to_string(), DEFAULT_WORKING_DIR.to_string()),
        Some(wd) if wd.value.starts_with('/') => {
            let norm = format!("/{}", contained(wd.value.trim_start_matches('/')).unwrap_or_default());
            if norm == "/" {
                return Err(locator.at(
                    &wd.referenced,
                    "working_dir must not be `/`: the project directory would hide the image's file system".into(),
                ));
            }
            (norm.clone(), norm)
        }
        Some(wd) => match contained(&wd.value) {
            Some(rel) if !rel.is_empty() => (format!("{DEFAULT_WORKING_DIR}/{rel}"), DEFAULT_WORKING_DIR.to_string()),
            Some(_) => (DEFAULT_WORKING_DIR.to_string(), DEFAULT_WORKING_DIR.to_string()),
            None => {
                return Err(locator.at(
                    &wd.referenced,
                    format!("working_dir {:?} leaves the project directory", wd.value),
                ))
            }
        },
    })
}

/// What replaces the image's Entrypoint and Cmd (as in [`RunPlan`]: `None` keeps the image's); the command may
/// use dependencies' outputs.
struct Argv {
    entrypoint: Option<Vec<String>>,
    command: Option<Vec<Template>>,
}

/// The container's entrypoint and command: a script (the setup, guarded, `before_run`, `commands`) run by `/bin/sh -c` (or the entry's `entrypoint`), or the entry's `command` as the image's Cmd.
/// Each output used is added to `uses` with its place.
fn argv(
    w: &schema::Workflow,
    locator: &Locator<'_>,
    uses: &mut Vec<(String, Location)>,
) -> Result<Argv, WorkflowError> {
    if let (Some(_), Some(c)) = (&w.commands, &w.command) {
        return Err(locator.at(
            &c.referenced,
            "`command` and `commands` are both set: use `commands` (a list of shell commands) or `command` (the image's Cmd replaced), not both".into(),
        ));
    }
    let words = |what: &str, v: &serde_saphyr::Spanned<StringOrList>| match &v.value {
        StringOrList::List(l) => Ok(l.clone()),
        StringOrList::String(s) => {
            shlex::split(s).ok_or_else(|| locator.at(&v.referenced, format!("{what} {s:?} has unbalanced quotes")))
        }
    };
    let mut template = |s: &str, loc: &Location| -> Result<Template, WorkflowError> {
        let t = Template::parse_command(s).map_err(|e| locator.at(loc, e.to_string()))?;
        uses.extend(t.outputs().map(|o| (o.to_string(), *loc)));
        Ok(t)
    };
    let entrypoint = w.entrypoint.as_ref().map(|e| words("entrypoint", e)).transpose()?;
    let has_script = w.commands.is_some() || w.before_run.is_some() || has_setup(w);
    if !has_script {
        let command = match &w.command {
            None => None,
            Some(c) => Some(
                words("command", c)?
                    .iter()
                    .map(|word| template(word, &c.referenced))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        return Ok(Argv { entrypoint, command });
    }
    let mut script: Vec<Template> = vec![Template::text("set -e")];
    // The setup is normally a layer below (its mark there skips this block); inline only where it could not be
    // kept (see `run::setup_layer`).
    if has_setup(w) {
        script.push(Template::text(&format!(
            "if [ ! -e {SETUP_DONE} ]; then\n{}\nfi",
            setup_steps(w, locator)?.join("\n")
        )));
    }
    for line in w.before_run.iter().flatten() {
        script.push(template(&line.value, &line.referenced)?);
    }
    for line in w.commands.iter().flatten() {
        script.push(template(&line.value, &line.referenced)?);
    }
    script.push(Template::default());
    let entrypoint = entrypoint.unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
    Ok(Argv {
        entrypoint: Some(entrypoint),
        command: Some(vec![Template::join(&script, "\n")]),
    })
}

/// Artifacts: relative to the working directory, never leaving it, none inside another.
fn artifacts(
    w: &schema::Workflow,
    locator: &Locator<'_>,
    working_dir: &str,
) -> Result<Vec<ArtifactSpec>, WorkflowError> {
    let mut artifacts: Vec<ArtifactSpec> = Vec::new();
    for a in &w.artifacts {
        let path = match contained(&a.value.path) {
            Some(p) if !p.is_empty() => p,
            _ => {
                return Err(locator.at(
                    &a.referenced,
                    format!(
                        "artifact path {:?} must be a relative path inside the working directory {working_dir}",
                        a.value.path
                    ),
                ))
            }
        };
        let nested = |x: &str, y: &str| x == y || x.strip_prefix(y).is_some_and(|r| r.starts_with('/'));
        if let Some(o) = artifacts
            .iter()
            .find(|o| nested(&o.path, &path) || nested(&path, &o.path))
        {
            return Err(locator.at(
                &a.referenced,
                format!(
                    "artifact {path:?} overlaps artifact {:?}: list each directory once",
                    o.path
                ),
            ));
        }
        artifacts.push(ArtifactSpec {
            path,
            mount: a.value.mount,
        });
    }
    Ok(artifacts)
}

/// Normalises a relative path lexically; None if it is absolute or leaves its base with `..`.
fn contained(rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Where the setup's script writes `apt_sources` for apt-get (removed once the packages are installed).
const APT_SOURCES: &str = "/run/drun/apt-sources.list";

/// Whether the entry has a setup (`apt_packages`, `requirements`, `setup`).
fn has_setup(w: &schema::Workflow) -> bool {
    !w.apt_packages.is_empty() || w.requirements.is_some() || w.setup.is_some()
}

/// The setup's shell lines, in order: apt sources and packages, then the requirements, then `setup`'s commands.
fn setup_steps(w: &schema::Workflow, locator: &Locator<'_>) -> Result<Vec<String>, WorkflowError> {
    let mut steps = Vec::new();
    if !w.apt_sources.is_empty() && w.apt_packages.is_empty() {
        return Err(locator.at(
            &w.apt_sources[0].referenced,
            "apt_sources are where apt_packages come from: list the packages in apt_packages".into(),
        ));
    }
    // `apt_sources` replace the image's sources for the setup's apt-get (through apt's own options: the image's
    // lists stay as they are).
    let mut apt_options = String::new();
    if !w.apt_sources.is_empty() {
        let mut lines = Vec::new();
        for l in &w.apt_sources {
            if l.value.contains(['\n', '\r']) || l.value.trim().is_empty() {
                return Err(locator.at(&l.referenced, "an apt source is one non-empty line".into()));
            }
            lines.push(quote(l.value.trim()));
        }
        steps.push("mkdir -p /run/drun".into());
        steps.push(format!("printf '%s\\n' {} > {APT_SOURCES}", lines.join(" ")));
        apt_options = format!(" -o Dir::Etc::SourceList={APT_SOURCES} -o Dir::Etc::SourceParts=/nonexistent");
    }
    if !w.apt_packages.is_empty() {
        let mut names = Vec::new();
        for p in &w.apt_packages {
            if !apt_package_name(&p.value) {
                return Err(locator.at(
                    &p.referenced,
                    format!(
                        "{:?} is not a Debian package name (lowercase letters, digits and + - . , optionally \
                         =VERSION or /RELEASE)",
                        p.value
                    ),
                ));
            }
            names.push(p.value.clone());
        }
        steps.push("export DEBIAN_FRONTEND=noninteractive".into());
        steps.push(format!("apt-get{apt_options} update"));
        steps.push(format!(
            "apt-get{apt_options} install -y --no-install-recommends {}",
            names.join(" ")
        ));
        // The downloaded packages and lists are what the next `apt-get update` fetches again: not worth a layer.
        steps.push("apt-get clean".into());
        steps.push("rm -rf /var/lib/apt/lists/*".into());
        if !apt_options.is_empty() {
            steps.push(format!("rm -f {APT_SOURCES}"));
        }
    }
    if w.requirements.is_some() {
        steps.push(format!(
            "if command -v pip >/dev/null 2>&1; then pip install -r {REQUIREMENTS_PATH}; else pip3 install -r \
             {REQUIREMENTS_PATH}; fi"
        ));
    }
    for line in w.setup.iter().flatten() {
        steps.push(line.value.clone());
    }
    Ok(steps)
}

/// A Debian package name (policy 5.6.1), optionally pinned: `name`, `name=version`, `name/release`.
fn apt_package_name(text: &str) -> bool {
    let (name, pin) = match text.split_once(['=', '/']) {
        Some((n, p)) => (n, Some(p)),
        None => (text, None),
    };
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let pin_ok =
        pin.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "+-.~:_".contains(c)));
    name_ok && pin_ok
}

fn quote(s: &str) -> String {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| "''".into())
}

/// The entry's setup as the run path takes it (`None` without one): the script, its environment, what the image
/// needs for it.
fn setup(
    w: &schema::Workflow,
    inputs: &EntryInputs<'_>,
    requirements: &Option<std::path::PathBuf>,
) -> Result<Option<SetupPlan>, WorkflowError> {
    if !has_setup(w) {
        if let Some(b) = w.build_environment.as_ref().and_then(first_location) {
            return Err(inputs.locator.at(
                &b,
                "build_environment is the setup's environment, and this workflow has no setup (apt_packages, \
                 requirements or setup): use environment"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let mut env = Vec::new();
    for (name, value, loc) in super::settings::environment(w.build_environment.as_ref(), inputs)? {
        if value.outputs().next().is_some() {
            return Err(inputs.locator.at(
                &loc,
                "a dependency's output cannot be in the setup's environment: the setup is kept for later runs; use \
                 environment"
                    .into(),
            ));
        }
        env.push((name, value.written()));
    }
    let mut script = vec!["set -e".to_string()];
    script.extend(setup_steps(w, inputs.locator)?);
    script.push(format!("mkdir -p /run/drun && : > {SETUP_DONE}"));
    let mut needs = Vec::new();
    if !w.apt_packages.is_empty() {
        needs.push(vec!["apt-get".to_string()]);
    }
    if w.requirements.is_some() {
        needs.push(vec!["pip".to_string(), "pip3".to_string()]);
    }
    Ok(Some(SetupPlan {
        script: script.join("\n") + "\n",
        env,
        requirements: requirements.clone(),
        needs,
        no_cache: inputs.options.no_cache,
        source: format!(
            "workflow {:?} in {}",
            w.name.value,
            std::path::absolute(inputs.locator.file)
                .unwrap_or_else(|_| inputs.locator.file.to_path_buf())
                .display()
        ),
    }))
}

/// Where an environment key is written (the first entry's place).
fn first_location(e: &schema::Environment) -> Option<Location> {
    match e {
        schema::Environment::Map(m) => m.first().map(|(_, v)| v.referenced),
        schema::Environment::List(l) => l.first().map(|v| v.referenced),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment() {
        assert_eq!(contained("./output").as_deref(), Some("output"));
        assert_eq!(contained("a/../b/").as_deref(), Some("b"));
        assert_eq!(contained("../x"), None);
        assert_eq!(contained("/etc"), None);
        assert_eq!(contained("a/../../x"), None);
    }

    #[test]
    fn debian_package_names() {
        for ok in [
            "curl",
            "libgomp1",
            "g++",
            "python3.11",
            "vim=2:9.0.1378-2",
            "git/bookworm-backports",
            "0ad",
        ] {
            assert!(apt_package_name(ok), "{ok}");
        }
        for bad in ["", "a", "Curl", "-x", "vim; rm -rf /", "a b", "x=", "x=$(id)", "x/`id`"] {
            assert!(!apt_package_name(bad), "{bad}");
        }
    }
}
