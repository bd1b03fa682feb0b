//! The container's process: its arguments by Docker's entrypoint/cmd rules, its environment, its user (from the
//! image's /etc/passwd, or the caller's with `--userns keep-id`), its hostname and working directory.

use std::path::Path;

use crate::plan::{MountSpec, RunPlan, DEFAULT_PATH};
use crate::run::spec::ResolvedUser;
use crate::run::{io_error, mounts, rootfs, user, RunError};

/// The process the container runs, as the spec will describe it.
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: ResolvedUser,
    pub hostname: String,
}

/// The hostname of a run without `--hostname`: the container's short id, as Docker's; inside a Slurm job the
/// host's, as with the host's network there: NCCL, Open MPI and MPICH tell which ranks share a node by their
/// hostname (NCCL's host hash, Open MPI's shared-memory segment names), and each container having its own would
/// make ranks on one node look remote. Where Slurm runs several slurmd on one host (`slurmd -N`, drun's test
/// cluster) they share one kernel hostname, so a `SLURMD_NODENAME` whose first label differs from it is taken
/// instead: each Slurm node keeps a name of its own.
fn default_hostname(short_id: &str) -> String {
    if !crate::plan::in_slurm_job() {
        return short_id.to_string();
    }
    // The UTS namespace's name, which is what gethostname(2) returns; bounded read of a kernel file.
    let host = crate::sys::safe_fs::read_system("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let first = |n: &str| n.split('.').next().unwrap_or("").to_string();
    let valid = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && !n.starts_with('-')
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match std::env::var("SLURMD_NODENAME") {
        Ok(node) if valid(&node) && first(&node) != first(&host) => node,
        _ if valid(&host) => host,
        _ => short_id.to_string(),
    }
}

/// The process of `plan` in an image with `config`, whose root file system is `root` (where a keep-id passwd
/// entry is added); `short_id` is the default hostname, the host's inside a Slurm job (see [`default_hostname`]).
pub fn resolve(
    plan: &RunPlan,
    config: &oci_spec::image::Config,
    root: &Path,
    short_id: &str,
) -> Result<Process, RunError> {
    let hostname = match plan.uts {
        // The host's UTS namespace: its name is the host's.
        Some(crate::plan::Sharing::Host) => crate::sys::safe_fs::read_system("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        _ => plan.hostname.clone().unwrap_or_else(|| default_hostname(short_id)),
    };
    let entry = config.entrypoint().clone().unwrap_or_default();
    let cmd = config.cmd().clone().unwrap_or_default();
    let args = resolve_args(plan, &entry, &cmd)?;
    let cwd = plan
        .workdir
        .clone()
        .or_else(|| config.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let keep_id = crate::sys::userns::current().filter(|ns| ns.mode == crate::sys::userns::UsernsMode::KeepId);
    let user_spec = match (&plan.user, keep_id) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(ns)) => Some(user::add_keep_id_entry(root, ns)?),
        (None, None) => config.user().clone(),
    };
    let mut user = user::resolve(root, user_spec.as_deref())?;
    user::add_groups(root, &mut user, &plan.group_add)?;
    if let Some(ns) = crate::sys::userns::current() {
        user::check_mapped(&mut user, user_spec.as_deref().unwrap_or("root"), ns)?;
    }
    let env = resolve_env(plan, &config.env().clone().unwrap_or_default(), &hostname, &user.home);
    Ok(Process {
        args,
        env,
        cwd,
        user,
        hostname,
    })
}

/// The process arguments by Docker's rules: an `--entrypoint` replaces the image's Entrypoint and drops its Cmd;
/// a command replaces Cmd.
pub fn resolve_args(
    plan: &RunPlan,
    image_entrypoint: &[String],
    image_cmd: &[String],
) -> Result<Vec<String>, RunError> {
    let (entry, cmd): (Vec<String>, Vec<String>) = match &plan.entrypoint {
        Some(e) => (e.clone(), plan.command.clone().unwrap_or_default()),
        None => (
            image_entrypoint.to_vec(),
            plan.command.clone().unwrap_or_else(|| image_cmd.to_vec()),
        ),
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(RunError::NoCommand);
    }
    Ok(args)
}

/// Environment, later layers winning: PATH and HOSTNAME defaults, `--env-host`'s host variables, the image's Env,
/// HOME from the user (and TERM with a terminal) when unset, a Slurm job's variables, then the plan's settings
/// (`--env-file`, `-e`). The policy: `plan::host_env`.
pub fn resolve_env(plan: &RunPlan, image_env: &[String], hostname: &str, home: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), hostname.into()),
    ];
    let set = |k: &str, v: &str, env: &mut Vec<(String, String)>| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    for (k, v) in &plan.host_env.inherited {
        set(k, v, &mut env);
    }
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v, &mut env);
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        set("HOME", home, &mut env);
    }
    if plan.tty && !env.iter().any(|(k, _)| k == "TERM") {
        set("TERM", "xterm", &mut env);
    }
    for (k, v) in plan.host_env.job.iter().chain(&plan.env) {
        set(k, v, &mut env);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Makes sure the working directory exists where it will be seen: in a volume's source when one covers it, else
/// in the root file system. It must be absolute.
pub fn create_workdir(root: &Path, mounts: &[MountSpec], cwd: &str) -> Result<(), RunError> {
    if !cwd.starts_with('/') {
        return Err(RunError::Exec {
            path: cwd.to_string(),
            message: "the working directory must be absolute".into(),
            code: crate::exit::DRUN_ERROR,
        });
    }
    let create = |e| io_error(format!("create the working directory {cwd:?}"))(e);
    match mounts::covering(mounts, cwd) {
        Some((MountSpec::Bind { source, .. }, rest)) => {
            if !rest.is_empty() {
                rootfs::mkdir_in_root(source, rest).map_err(create)?;
            }
        }
        Some((MountSpec::Tmpfs { .. } | MountSpec::Overlay { .. }, _)) => {}
        None => rootfs::mkdir_in_root(root, cwd).map_err(create)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn docker_entrypoint_and_cmd_rules() {
        let mut p = RunPlan::new("");
        assert_eq!(resolve_args(&p, &s(&["/ep"]), &s(&["a"])).unwrap(), s(&["/ep", "a"]));
        p.command = Some(s(&["b"]));
        assert_eq!(resolve_args(&p, &s(&["/ep"]), &s(&["a"])).unwrap(), s(&["/ep", "b"]));
        p.entrypoint = Some(s(&["/new"]));
        assert_eq!(resolve_args(&p, &s(&["/ep"]), &s(&["a"])).unwrap(), s(&["/new", "b"]));
        p.command = None;
        // --entrypoint drops the image's Cmd.
        assert_eq!(resolve_args(&p, &s(&["/ep"]), &s(&["a"])).unwrap(), s(&["/new"]));
        p.entrypoint = Some(vec![]);
        assert!(matches!(resolve_args(&p, &[], &[]), Err(RunError::NoCommand)));
    }

    #[test]
    fn env_merging() {
        let mut p = RunPlan::new("");
        p.env = vec![("FOO".into(), "cli".into()), ("NEW".into(), "1".into())];
        let env = resolve_env(&p, &s(&["PATH=/img/bin", "FOO=image"]), "h", "/root");
        assert_eq!(
            env,
            s(&["PATH=/img/bin", "HOSTNAME=h", "FOO=cli", "HOME=/root", "NEW=1"])
        );
    }

    #[test]
    fn host_variables_sit_between_the_layers() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let mut p = RunPlan::new("");
        // --env-host: under the image's Env; a Slurm job's: over it; -e: over everything.
        p.host_env.inherited = vec![pair("A", "host"), pair("B", "host"), pair("PATH", "/host/bin")];
        p.host_env.job = vec![pair("C", "job"), pair("D", "job")];
        p.env = vec![pair("D", "cli")];
        let env = resolve_env(&p, &s(&["B=image", "C=image"]), "h", "/root");
        assert_eq!(
            env,
            s(&[
                "PATH=/host/bin",
                "HOSTNAME=h",
                "A=host",
                "B=image",
                "C=job",
                "HOME=/root",
                "D=cli"
            ])
        );
    }
}
