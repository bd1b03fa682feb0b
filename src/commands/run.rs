//! `drun run`: flags → `RunPlan` → a container in the foreground; exits with the container's status.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cli::{GlobalArgs, RunArgs};
use crate::image::registry::config::Config;
use crate::plan::{MountSpec, NetworkMode, PullPolicy, RunPlan, SeccompMode, Sharing, Ulimit};
use crate::run::{RunError, RunHooks};
use crate::units::ByteSize;

fn parse_env(item: &str, out: &mut Vec<(String, String)>) -> Result<()> {
    match item.split_once('=') {
        Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
        Some(_) => bail!("invalid environment variable {item:?}: empty name"),
        // `-e KEY` passes the host's value, and nothing when it is unset (as Docker does).
        None => {
            if let Ok(v) = std::env::var(item) {
                out.push((item.to_string(), v));
            }
        }
    }
    Ok(())
}

fn parse_volume(v: &str) -> Result<MountSpec> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => bail!("invalid volume {v:?}: expected SRC:DST[:ro|rw]"),
    };
    if !dst.starts_with('/') {
        bail!("invalid volume {v:?}: the container path must be absolute");
    }
    let source = std::fs::canonicalize(src).with_context(|| format!("volume source {src} does not exist"))?;
    Ok(MountSpec::Bind {
        source,
        destination: dst.to_string(),
        read_only: ro,
    })
}

fn parse_mount(m: &str) -> Result<MountSpec> {
    let mut kind = "bind".to_string();
    let (mut source, mut target, mut ro, mut opts) = (None, None, false, Vec::new());
    for kv in m.split(',') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "type" => kind = v.to_string(),
            "source" | "src" => source = Some(v.to_string()),
            "target" | "destination" | "dst" => target = Some(v.to_string()),
            "readonly" | "ro" => ro = v.is_empty() || v == "true" || v == "1",
            "tmpfs-size" => opts.push(format!("size={}", v.parse::<ByteSize>()?.0)),
            "tmpfs-mode" => opts.push(format!("mode={v}")),
            _ => bail!("invalid --mount {m:?}: unknown key {k:?}"),
        }
    }
    let target = target.with_context(|| format!("invalid --mount {m:?}: target= is required"))?;
    match kind.as_str() {
        "bind" => {
            let src = source.with_context(|| format!("invalid --mount {m:?}: source= is required for bind"))?;
            let source = std::fs::canonicalize(&src).with_context(|| format!("mount source {src} does not exist"))?;
            Ok(MountSpec::Bind {
                source,
                destination: target,
                read_only: ro,
            })
        }
        "tmpfs" => Ok(MountSpec::Tmpfs {
            destination: target,
            options: opts,
        }),
        other => bail!("invalid --mount {m:?}: type must be bind or tmpfs, not {other:?}"),
    }
}

pub fn parse_ulimit(u: &str) -> Result<Ulimit> {
    let (name, vals) = u
        .split_once('=')
        .with_context(|| format!("invalid --ulimit {u:?}: expected NAME=SOFT[:HARD]"))?;
    let num = |s: &str| -> Result<u64> {
        if s == "-1" || s == "unlimited" {
            Ok(u64::MAX)
        } else {
            s.parse()
                .with_context(|| format!("invalid --ulimit {u:?}: {s:?} is not a number"))
        }
    };
    let (soft, hard) = match vals.split_once(':') {
        Some((s, h)) => (num(s)?, num(h)?),
        None => (num(vals)?, num(vals)?),
    };
    if soft > hard {
        bail!("invalid --ulimit {u:?}: soft limit above hard limit");
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

fn sharing(flag: &str, v: &Option<String>) -> Result<Option<Sharing>> {
    Ok(match v.as_deref() {
        None => None,
        Some("host") => Some(Sharing::Host),
        Some("private") | Some("") => Some(Sharing::Private),
        Some(other) => bail!("invalid --{flag} {other:?}: expected host or private"),
    })
}

/// `--env-file` settings, then `-e` ones (later ones win).
fn env_from_args(a: &RunArgs) -> Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = crate::safe_fs::read_user_file(f, 16 << 20)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .with_context(|| format!("cannot read env file {}", f.display()))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            parse_env(line, &mut env)?;
        }
    }
    for e in &a.env {
        parse_env(e, &mut env)?;
    }
    Ok(env)
}

/// Builds the validated plan from the flags.
pub fn plan_from_args(a: &RunArgs) -> Result<RunPlan> {
    let mut it = a.image_and_command.iter();
    let image = it.next().context("an image is required")?.clone();
    let command: Vec<String> = it.cloned().collect();
    let env = env_from_args(a)?;
    let mut mounts = Vec::new();
    for v in &a.volume {
        mounts.push(parse_volume(v)?);
    }
    for m in &a.mount {
        mounts.push(parse_mount(m)?);
    }
    for t in &a.tmpfs {
        let (dst, opts) = t.split_once(':').unwrap_or((t, ""));
        if !dst.starts_with('/') {
            bail!("invalid --tmpfs {t:?}: the path must be absolute");
        }
        let options = opts.split(',').filter(|o| !o.is_empty()).map(String::from).collect();
        mounts.push(MountSpec::Tmpfs {
            destination: dst.to_string(),
            options,
        });
    }
    let mut seccomp = SeccompMode::Default;
    let mut no_new_privileges = true;
    for o in &a.security_opt {
        let (k, v) = o.split_once(['=', ':']).unwrap_or((o.as_str(), ""));
        match (k, v) {
            ("seccomp", "unconfined") => seccomp = SeccompMode::Unconfined,
            ("seccomp", path) if !path.is_empty() => seccomp = SeccompMode::Profile(PathBuf::from(path)),
            ("no-new-privileges", "" | "true") => no_new_privileges = true,
            ("no-new-privileges", "false") => no_new_privileges = false,
            _ => bail!(
                "unsupported --security-opt {o:?} (supported: seccomp=unconfined|FILE, no-new-privileges[=false])"
            ),
        }
    }
    let network = match a.network.as_str() {
        "host" => NetworkMode::Host,
        "none" => NetworkMode::None,
        other => bail!("unsupported --network {other:?}: drun supports host (the default) and none"),
    };
    let pull = parse_pull(&a.pull)?;
    if let Some(c) = a.cpus {
        if !(c > 0.0 && c.is_finite()) {
            bail!("invalid --cpus {c}: must be a positive number");
        }
    }
    Ok(RunPlan {
        image,
        pull,
        platform: a.platform.as_deref().map(str::parse).transpose()?,
        entrypoint: a
            .entrypoint
            .as_ref()
            .map(|e| if e.is_empty() { vec![] } else { vec![e.clone()] }),
        command: (!command.is_empty()).then_some(command),
        env,
        mounts,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        memory: a
            .memory
            .as_deref()
            .map(str::parse)
            .transpose()
            .context("invalid --memory")?,
        cpus: a.cpus,
        pids_limit: a.pids_limit,
        shm_size: a
            .shm_size
            .as_deref()
            .map(str::parse)
            .transpose()
            .context("invalid --shm-size")?,
        network,
        ipc: sharing("ipc", &a.ipc)?,
        pid: sharing("pid", &a.pid)?,
        hostname: a.hostname.clone(),
        read_only: a.read_only,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        privileged: a.privileged,
        seccomp,
        no_new_privileges,
        ulimits: a.ulimit.iter().map(|u| parse_ulimit(u)).collect::<Result<_>>()?,
        name: a.name.clone(),
        interactive: a.interactive,
        tty: a.tty,
        init: a.init,
        cidfile: a.cidfile.clone(),
        gpus: a
            .gpus
            .as_deref()
            .map(crate::gpu::select::GpuRequest::parse_cli)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        devices: a.device.clone(),
        cdi_spec_dirs: a.cdi_spec_dir.clone(),
        require_limits: a.require_limits,
        ..Default::default()
    })
}

/// Whether the first argument names a workflow file (always, for `*.yaml`/`*.yml`: never pulled as an image).
pub fn is_workflow_file(arg: &str) -> bool {
    arg.ends_with(".yaml") || arg.ends_with(".yml")
}

/// The `drun run` flags that make sense for a whole workflow file; the others belong in the file.
fn check_workflow_flags(a: &RunArgs) -> Result<()> {
    let given: Vec<&str> = [
        ("-i/--interactive", a.interactive),
        ("-t/--tty", a.tty),
        ("-v/--volume", !a.volume.is_empty()),
        ("--mount", !a.mount.is_empty()),
        ("--tmpfs", !a.tmpfs.is_empty()),
        ("-w/--workdir", a.workdir.is_some()),
        ("-u/--user", a.user.is_some()),
        ("--entrypoint", a.entrypoint.is_some()),
        ("-m/--memory", a.memory.is_some()),
        ("--cpus", a.cpus.is_some()),
        ("--pids-limit", a.pids_limit.is_some()),
        ("--shm-size", a.shm_size.is_some()),
        ("--network", a.network != "host"),
        ("--ipc", a.ipc.is_some()),
        ("--pid", a.pid.is_some()),
        ("--hostname", a.hostname.is_some()),
        ("--read-only", a.read_only),
        ("--cap-add", !a.cap_add.is_empty()),
        ("--cap-drop", !a.cap_drop.is_empty()),
        ("--privileged", a.privileged),
        ("--security-opt", !a.security_opt.is_empty()),
        ("--ulimit", !a.ulimit.is_empty()),
        ("--name", a.name.is_some()),
        ("--init", a.init),
        ("--cidfile", a.cidfile.is_some()),
        ("--gpus", a.gpus.is_some()),
        ("--device", !a.device.is_empty()),
    ]
    .into_iter()
    .filter_map(|(f, set)| set.then_some(f))
    .collect();
    if !given.is_empty() {
        bail!(
            "{} cannot be used with a workflow file: set them per workflow in the file (with a workflow file, drun run takes -e, --env-file, --pull, --platform, -q, --cdi-spec-dir, --userns, --require-limits, --artifacts, --dry-run and --keep-going)",
            given.join(", ")
        );
    }
    Ok(())
}

fn run_workflows(global: &GlobalArgs, args: RunArgs) -> Result<i32> {
    check_workflow_flags(&args)?;
    let file = PathBuf::from(&args.image_and_command[0]);
    let set = crate::workflow::load(&file, &|k| std::env::var(k).ok())?;
    let env = env_from_args(&args)?;
    let opts = crate::workflow::runner::Options {
        artifacts: args.artifacts.clone(),
        dry_run: args.dry_run,
        keep_going: args.keep_going,
        quiet: args.quiet,
        pull: parse_pull(&args.pull)?,
        platform: args.platform.as_deref().map(str::parse).transpose()?,
        env,
        cdi_spec_dirs: args.cdi_spec_dir.clone(),
        require_limits: args.require_limits,
    };
    let cfg = Config::load()?;
    let store = super::open_store(global)?;
    crate::workflow::runner::run(
        &store,
        &cfg,
        &super::state_dir(global)?,
        &set,
        &args.image_and_command[1..],
        &opts,
    )
}

fn parse_pull(p: &str) -> Result<PullPolicy> {
    Ok(match p {
        "missing" => PullPolicy::Missing,
        "always" => PullPolicy::Always,
        "never" => PullPolicy::Never,
        other => bail!("invalid --pull {other:?}: expected missing, always or never"),
    })
}

pub fn run(global: &GlobalArgs, args: RunArgs) -> Result<i32> {
    if is_workflow_file(&args.image_and_command[0]) {
        return run_workflows(global, args);
    }
    if args.artifacts.is_some() || args.dry_run || args.keep_going {
        bail!("--artifacts, --dry-run and --keep-going are for workflow files (WORKFLOW.yaml)");
    }
    let plan = plan_from_args(&args)?;
    let cfg = Config::load()?;
    let store = super::open_store(global)?;
    let state_dir = super::state_dir(global)?;
    match crate::run::run(&store, &cfg, &plan, &state_dir, args.quiet, &mut RunHooks::default()) {
        Ok(outcome) => Ok(outcome.code),
        Err(e @ RunError::Exec { .. }) => {
            let code = e.exit_code();
            eprintln!("error: {e}");
            Ok(code)
        }
        Err(e) => Err(e.into()),
    }
}
