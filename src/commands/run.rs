//! `drun run`: flags → `RunPlan` → a container in the foreground; exits with the container's status.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cli::{GlobalArgs, RunArgs};
use crate::config::Config;
use crate::run::container;
use crate::run::plan::{MountSpec, NetworkMode, PullPolicy, RunPlan, SeccompMode, Sharing, Ulimit};
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

fn parse_ulimit(u: &str) -> Result<Ulimit> {
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

/// Builds the validated plan from the flags.
pub fn plan_from_args(a: &RunArgs) -> Result<RunPlan> {
    let mut it = a.image_and_command.iter();
    let image = it.next().context("an image is required")?.clone();
    let command: Vec<String> = it.cloned().collect();
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read env file {}", f.display()))?;
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
    let pull = match a.pull.as_str() {
        "missing" => PullPolicy::Missing,
        "always" => PullPolicy::Always,
        "never" => PullPolicy::Never,
        other => bail!("invalid --pull {other:?}: expected missing, always or never"),
    };
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
    })
}

pub fn run(global: &GlobalArgs, args: RunArgs) -> Result<i32> {
    let plan = plan_from_args(&args)?;
    let cfg = Config::load()?;
    let store = super::open_store(global)?;
    match container::run(&store, &cfg, &plan, &super::state_dir(global), args.quiet) {
        Ok(code) => Ok(code),
        Err(e @ container::RunError::Exec { .. }) => {
            let code = e.exit_code();
            eprintln!("error: {e}");
            Ok(code)
        }
        Err(e) => Err(e.into()),
    }
}
