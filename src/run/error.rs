//! What can end a run before the container's command does, and the exit status each maps to.

use crate::run::{cgroups, rootfs, seccomp, spec, user};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Image(#[from] crate::image::ready::ReadyError),
    #[error(transparent)]
    Store(#[from] crate::image::store::StoreError),
    /// `drun stop` or `drun kill` came while the container was being restarted (`run::restart`): it is not.
    #[error("the container was stopped while it was being restarted")]
    StopRequested,
    #[error("no command specified: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("a container named {0:?} is already running")]
    NameInUse(String),
    #[error(
        "the name {name:?} is already in use by container {id}, which has ended: remove it with `drun rm {id}`, or \
         choose another name"
    )]
    NameKept { name: String, id: String },
    #[error("cannot {what}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Squash(#[from] crate::run::squash_mount::SquashMountError),
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("--init needs catatonit (Debian package `catatonit`), which is not installed")]
    NoInit,
    #[error("libcontainer cannot {what}")]
    Runtime {
        what: &'static str,
        source: libcontainer::error::LibcontainerError,
    },
    /// The command cannot be run (as `docker run` says it: the path, then why), with its exit status.
    #[error("{path}: {message}")]
    Exec { path: String, message: String, code: i32 },
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error(transparent)]
    Rdma(#[from] crate::rdma::RdmaError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::FilterError),
    #[error("a run has at most one copy-on-write (overlay) mount")]
    TwoOverlays,
    /// The workflow's setup ended with `code` (0: without its mark); nothing of it was kept.
    #[error("the setup failed (exit code {code}): nothing of it was kept, the next run tries again")]
    SetupFailed { code: i32 },
    #[error(
        "cannot run a container: drun runs as root without CAP_SYS_ADMIN, as in a job container that is not \
             privileged; {PRIVILEGED_HINT}"
    )]
    NotPrivileged,
}

/// What a CI runner must change for drun to run containers in its job container: one sentence, ending every error
/// that an unprivileged job container causes (see docs/ci-runners.md).
pub(crate) const PRIVILEGED_HINT: &str = "run the job container privileged: `privileged = true` under \
    [runners.docker] in GitLab Runner's config.toml, `options: --privileged` under the job's `container:` in \
    GitHub Actions, `--privileged` with docker or podman run (docs/ci-runners.md)";

/// Real root without CAP_SYS_ADMIN (an unprivileged job container) can neither mount nor create namespaces:
/// said before anything is prepared, rather than as the first mount's EPERM.
pub(crate) fn check_privileged() -> Result<(), RunError> {
    if crate::sys::userns::is_rootless() || !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    const CAP_SYS_ADMIN: u32 = 21;
    let status = crate::sys::safe_fs::read_system("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match effective {
        Some(caps) if caps & (1 << CAP_SYS_ADMIN) == 0 => Err(RunError::NotPrivileged),
        _ => Ok(()),
    }
}

impl RunError {
    /// The exit status this error maps to (125 unless the command itself could not be run).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Exec { code, .. } => *code,
            RunError::SetupFailed { code } if *code != 0 => *code,
            _ => crate::exit::DRUN_ERROR,
        }
    }
}

/// An I/O error as the step of the run that could not be done (`what`: "create the run directory").
pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}
