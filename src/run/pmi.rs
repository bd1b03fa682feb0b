//! MPI launched by `srun`: what a rank in the container needs to reach its step's process-management server.
//!
//! - PMI-2 (`srun --mpi=pmi2`): slurmstepd hands each task a connected socket and names it in `PMI_FD`. drun
//!   keeps it open into the container as fd 3 ([`PassFd`]) and rewrites `PMI_FD=3`.
//! - PMIx (`srun --mpi=pmix`): the server listens on loopback TCP (`PMIX_SERVER_URI*`: the container needs the
//!   host's network, drun's default) and keeps its shared-memory data store in `PMIX_SERVER_TMPDIR`
//!   (`<SlurmdSpoolDir>/pmix.JOB.STEP`); the step's clients get `<TmpFS>/spmix_appdir_UID_JOB.STEP`. Both are
//!   bound at the same paths, and `PMIX_MCA_ptl`/`psec`/`gds` pin the container's PMIx to the server's choices
//!   (`PMIX_PTL_MODULE`, `PMIX_SECURITY_MODE`, `PMIX_GDS_MODULE`), so that a different PMIx build in the image
//!   does not pick a component the server lacks. With munge security the munge socket's directory is bound too.
//!
//! The server checks that a client has the job's uid, so a rootless drun in a PMIx step runs the container with
//! the caller's own id by default ([`default_userns`]). Rootless containers of one step on a node share a user
//! namespace (`sys::userns`'s `step`), so that ranks reach each other's memory; where they could not, UCX shares
//! memory through named files and without cross-memory attach (`UCX_POSIX_USE_PROC_LINK=n`, `UCX_TLS=^cma`). The step's variables themselves reach the container through the plan (`plan::host_env`).
//! Reads only drun's environment and slurm.conf's `TmpFS` (bounded); binds only directories whose names are
//! the step's own.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use crate::plan::{MountSpec, NetworkMode, RunPlan};
use crate::sys::userns::UsernsMode;

/// The fd the PMI-2 socket has in the container: the first after stdio.
pub const CONTAINER_PMI_FD: RawFd = 3;

/// What the container gets for its step's PMI server.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rendezvous {
    /// Variables set in the container, below the caller's own `-e` settings.
    pub env: Vec<(String, String)>,
    /// Host directories bound read-write at the same path.
    pub binds: Vec<PathBuf>,
    /// drun's fd of the PMI-2 socket, to become [`CONTAINER_PMI_FD`].
    pub fd: Option<RawFd>,
}

/// The rendezvous of the Slurm step drun runs in (none outside one, or without an MPI plugin).
pub fn detect(plan: &RunPlan) -> Rendezvous {
    if !crate::plan::in_slurm_job() {
        return Rendezvous::default();
    }
    let vars: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| crate::plan::host_env::is_slurm_variable(k) || k == "SLURMD_NODENAME")
        .collect();
    // The step's SLURM_*, PMI_* and PMIX_* reach the container through the plan (`plan::host_env`); here only
    // what they need besides.
    let mut r = Rendezvous {
        env: pmix_mca(&vars),
        ..Rendezvous::default()
    };
    // The rootless containers of a step on a node share one user namespace (`sys::userns::shared_with_step`),
    // where ranks reach each other's memory and /proc/PID/fd. Where that failed, each has its own, and the kernel
    // refuses a process access to the memory and /proc/PID/fd of one in another namespace: UCX (MPICH's
    // transport, and Open MPI's when chosen) would share its POSIX shared memory through /proc/PID/fd ("Shared
    // memory error" at start) and copy with process_vm_readv (EPERM, fatal in mid-run). Named files in the host's
    // /dev/shm (--ipc host) and no cross-memory attach work then. (Open MPI's own shared memory sees the
    // namespaces differ and copies twice.)
    if crate::sys::userns::current().is_some() && !crate::sys::userns::shared_with_step() {
        for (k, v) in [("UCX_POSIX_USE_PROC_LINK", "n"), ("UCX_TLS", "^cma")] {
            if std::env::var_os(k).is_none() {
                r.env.push((k.into(), v.into()));
            }
        }
    }
    if let Some(fd) = vars.get("PMI_FD") {
        match fd.parse::<RawFd>().ok().filter(|&fd| fd > 2 && is_open_socket(fd)) {
            Some(fd) => {
                r.fd = Some(fd);
                set(&mut r.env, "PMI_FD", &CONTAINER_PMI_FD.to_string());
            }
            None => tracing::warn!(PMI_FD = ?fd, "PMI_FD is not an open socket: PMI-2 will not work in the container"),
        }
    }
    if vars.contains_key("PMIX_NAMESPACE") {
        r.binds = pmix_dirs(&vars);
        if plan.network == NetworkMode::None && vars.keys().any(|k| k.starts_with("PMIX_SERVER_URI")) {
            tracing::warn!("the PMIx server is reached over the host's loopback: MPI cannot start with --network none");
        }
    }
    r
}

/// `--userns` when none is given: keep-id for a rootless drun in a PMIx step, whose server accepts clients with
/// the job's uid only; auto otherwise.
pub fn default_userns() -> UsernsMode {
    let pmix = crate::plan::in_slurm_job() && std::env::var_os("PMIX_NAMESPACE").is_some();
    if pmix && !nix::unistd::geteuid().is_root() {
        UsernsMode::KeepId
    } else {
        UsernsMode::Auto
    }
}

/// munge's socket directory, bound (read-only) when the PMIx server uses munge security.
const MUNGE_DIR: &str = "/run/munge";

/// Adds the rendezvous to a run: its binds after the plan's mounts, its variables where the plan (the caller's
/// `-e`) set none.
pub fn apply(r: &Rendezvous, plan: &RunPlan, mounts: &mut Vec<MountSpec>, env: &mut Vec<String>) {
    mounts.extend(r.binds.iter().map(|p| MountSpec::Bind {
        source: p.clone(),
        destination: p.to_string_lossy().into_owned(),
        // Connecting to munge's socket needs no write access; a writable /run/munge would let a root container
        // replace the node's munge socket with its own and answer every credential check.
        read_only: p == Path::new(MUNGE_DIR),
    }));
    for (k, v) in &r.env {
        if plan.env.iter().any(|(pk, _)| pk == k) {
            continue;
        }
        let kv = format!("{k}={v}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').is_some_and(|(ek, _)| ek == k))
        {
            Some(e) => *e = kv,
            None => env.push(kv),
        }
    }
}

/// `PMIX_MCA_*` from the server's own choices, unless the caller set them.
fn pmix_mca(vars: &BTreeMap<String, String>) -> Vec<(String, String)> {
    [
        ("PMIX_PTL_MODULE", "PMIX_MCA_ptl"),
        ("PMIX_SECURITY_MODE", "PMIX_MCA_psec"),
        ("PMIX_GDS_MODULE", "PMIX_MCA_gds"),
    ]
    .iter()
    .filter(|(_, mca)| !vars.contains_key(*mca))
    .filter_map(|(from, mca)| Some((mca.to_string(), vars.get(*from)?.clone())))
    .collect()
}

fn set(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
}

/// The PMIx directories of this step that exist: the server's, the clients', and munge's socket directory when
/// the server uses munge.
fn pmix_dirs(vars: &BTreeMap<String, String>) -> Vec<PathBuf> {
    let (Some(job), Some(step)) = (vars.get("SLURM_JOB_ID"), vars.get("SLURM_STEP_ID")) else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    if let Some(server) = vars.get("PMIX_SERVER_TMPDIR") {
        dirs.push((
            PathBuf::from(server.trim_end_matches('/')),
            format!("pmix.{job}.{step}"),
        ));
    }
    let uid = crate::sys::userns::current().map_or_else(|| nix::unistd::geteuid().as_raw(), |r| r.uid);
    let base = vars.get("SLURM_PMIX_TMPDIR").cloned().or_else(|| {
        let conf = vars.get("SLURM_CONF").map_or("/etc/slurm/slurm.conf", String::as_str);
        // Followed: /etc/slurm is often a link to a shared configuration directory.
        let f = crate::sys::safe_fs::open_regular(Path::new(conf), true).ok()?;
        let text = crate::sys::safe_fs::read_file_bounded(f, 1 << 20, Path::new(conf)).ok()?;
        let host = crate::sys::safe_fs::read_system("/proc/sys/kernel/hostname")
            .ok()?
            .trim()
            .to_string();
        let node = vars.get("SLURMD_NODENAME").cloned().unwrap_or_else(|| host.clone());
        Some(tmpfs_of(&String::from_utf8_lossy(&text), &node, &host))
    });
    if let Some(base) = base {
        let name = format!("spmix_appdir_{uid}_{job}.{step}");
        dirs.push((Path::new(&base).join(&name), name));
    }
    if vars
        .get("PMIX_SECURITY_MODE")
        .is_some_and(|m| m.split(',').any(|c| c == "munge"))
    {
        dirs.push((PathBuf::from(MUNGE_DIR), "munge".into()));
    }
    dirs.into_iter()
        .filter_map(|(path, want)| {
            let ok = path.is_absolute()
                && path.file_name().is_some_and(|n| n == want.as_str())
                && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if !ok {
                tracing::debug!(?path, "PMIx directory not bound: missing, or not the step's");
                return None;
            }
            // Bound by name later (libcontainer opens a bind mount's source by path): as root, only a directory
            // that no one but root and the step's user could swap for another meanwhile (a symlink to / would
            // give the container the host's root file system).
            if !crate::sys::userns::is_rootless() {
                if let Some((dir, why)) = crate::sys::safe_fs::replaceable_by_others(&path, uid) {
                    tracing::warn!("PMIx directory {path:?} not bound: it is reached through {dir:?}, which {why}: another user could swap it");
                    return None;
                }
            }
            Some(path)
        })
        .collect()
}

/// slurm.conf's `TmpFS` (default /tmp), `%n` and `%h` expanded as slurmd does.
fn tmpfs_of(conf: &str, node: &str, host: &str) -> String {
    conf.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("TmpFS"))
        .map(|(_, v)| v.trim().to_string())
        .next_back()
        .unwrap_or_else(|| "/tmp".into())
        .replace("%n", node)
        .replace("%h", host)
}

fn is_open_socket(fd: RawFd) -> bool {
    // SAFETY: fstat only writes the stat buffer it is given; an fd that is not open gives EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::fstat(fd, &mut st) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
}

/// Runs in the container's init just before the executor it wraps: gives `fd` the number
/// [`CONTAINER_PMI_FD`], open across exec. (libcontainer keeps fds 3… only when they already have those
/// numbers in drun, where fd 3 is drun's own; renumbering in the child touches nothing of drun's.)
#[derive(Clone)]
pub struct PassFd<E> {
    pub inner: E,
    pub fd: Option<RawFd>,
}

impl<E: libcontainer::workload::Executor + Clone + 'static> libcontainer::workload::Executor for PassFd<E> {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorError> {
        if let Some(fd) = self.fd {
            // SAFETY: plain fd syscalls in the container's init, which owns its copy of drun's fd table; fd 3
            // there is replaced (libcontainer marked every fd from 3 on close-on-exec anyway), and dup2 and
            // F_SETFD leave the new fd open across exec.
            let r = unsafe {
                if fd == CONTAINER_PMI_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, CONTAINER_PMI_FD)
                }
            };
            if r < 0 {
                // The container's stderr is the one place to say it.
                #[allow(clippy::print_stderr)]
                {
                    eprintln!(
                        "drun: cannot pass PMI_FD into the container: {}",
                        std::io::Error::last_os_error()
                    );
                }
                // SAFETY: ends the container's init at once, as exec would have replaced it.
                unsafe { libc::_exit(crate::exit::DRUN_ERROR) };
            }
        }
        self.inner.exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        self.inner.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pmix_components_follow_the_servers_unless_set() {
        let v = vars(&[
            ("PMIX_SECURITY_MODE", "native"),
            ("PMIX_GDS_MODULE", "ds21,ds12,hash"),
            ("PMIX_MCA_gds", "hash"),
        ]);
        assert_eq!(pmix_mca(&v), [("PMIX_MCA_psec".to_string(), "native".to_string())]);
    }

    #[test]
    fn tmpfs_is_read_as_slurmd_expands_it() {
        let conf = "# TmpFS=/no\nSlurmdSpoolDir=/s/%n\ntmpfs = /scratch/%n/tmp # per node\n";
        assert_eq!(tmpfs_of(conf, "n1", "h"), "/scratch/n1/tmp");
        assert_eq!(tmpfs_of("ClusterName=c\n", "n1", "h"), "/tmp");
    }

    #[test]
    fn the_callers_env_wins_over_the_rendezvous() {
        let mut plan = RunPlan::new("i");
        plan.env = vec![("PMIX_MCA_psec".into(), "none".into())];
        let r = Rendezvous {
            env: vec![("PMIX_MCA_psec".into(), "native".into()), ("PMI_FD".into(), "3".into())],
            binds: vec![PathBuf::from("/spool/pmix.1.0")],
            fd: None,
        };
        let (mut mounts, mut env) = (Vec::new(), vec!["PMI_FD=11".to_string(), "PMIX_MCA_psec=none".into()]);
        apply(&r, &plan, &mut mounts, &mut env);
        assert_eq!(env, ["PMI_FD=3", "PMIX_MCA_psec=none"]);
        assert_eq!(
            mounts,
            [MountSpec::Bind {
                source: "/spool/pmix.1.0".into(),
                destination: "/spool/pmix.1.0".into(),
                read_only: false
            }]
        );
    }
}
