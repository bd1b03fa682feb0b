//! `RunPlan`: the single, validated description of what to run, built from `drun run` flags (and, later, from a
//! workflow entry). Everything after it — the OCI spec, the root file system, supervision — is shared.

use std::path::PathBuf;

use crate::image::platform::Platform;
use crate::units::ByteSize;

/// Defined beside the code that pulls: the image layer sits below the plan.
pub use crate::image::ready::PullPolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// The host's network namespace: what HPC jobs, GPUs and NCCL need, so the default.
    #[default]
    Host,
    /// A private network namespace with only loopback.
    None,
}

/// Whether a namespace is shared with the host or private to the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    Host,
    Private,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum SeccompMode {
    #[default]
    Default,
    Unconfined,
    Profile(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSpec {
    Bind {
        source: PathBuf,
        destination: String,
        read_only: bool,
    },
    Tmpfs {
        destination: String,
        options: Vec<String>,
    },
    /// A host directory shown copy-on-write: an overlay with `source` as its only lower layer and the run's own
    /// upper directory, so the container's writes never reach `source` (a workflow's project directory). At most
    /// one per run; mounted before every other mount, so mounts below its destination land on top of it.
    Overlay {
        source: PathBuf,
        destination: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Clone, Debug, Default)]
pub struct RunPlan {
    /// The image as typed (resolved through the store, pulled per `pull`).
    pub image: String,
    pub pull: PullPolicy,
    pub platform: Option<Platform>,
    /// Replaces the image's Entrypoint (`Some(vec![])` clears it).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` settings in order; later ones win.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<MountSpec>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub memory: Option<ByteSize>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub shm_size: Option<ByteSize>,
    pub network: NetworkMode,
    pub ipc: Option<Sharing>,
    pub pid: Option<Sharing>,
    pub hostname: Option<String>,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub seccomp: SeccompMode,
    pub no_new_privileges: bool,
    pub ulimits: Vec<Ulimit>,
    pub name: Option<String>,
    pub interactive: bool,
    pub tty: bool,
    pub init: bool,
    /// With `init`: signals go to the command's whole process group (as a terminal's Ctrl-C does), not only to it.
    pub init_signals_group: bool,
    pub cidfile: Option<PathBuf>,
    pub labels: Vec<(String, String)>,
    /// GPUs to inject (`--gpus`, `resources.gpu`).
    pub gpus: Option<crate::gpu::select::GpuRequest>,
    /// CDI devices to inject by fully-qualified name (`--device nvidia.com/gpu=0`).
    pub devices: Vec<String>,
    /// CDI spec directories (empty: DRUN_CDI_SPEC_DIRS, else /etc/cdi and /var/run/cdi).
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Fail rather than warn when limits cannot be enforced (rootless without a delegated cgroup).
    pub require_limits: bool,
}

/// Default PATH when an image sets none (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Podman's default capabilities: Docker's minus NET_RAW, MKNOD and AUDIT_WRITE. With the host network as the
/// default, NET_RAW would let container root sniff and spoof host traffic.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Whether drun runs inside a Slurm job step (ranks on a node then share /dev/shm and IPC with each other).
pub fn in_slurm_job() -> bool {
    std::env::var_os("SLURM_JOB_ID").is_some()
}

impl RunPlan {
    /// Private by default; the host's inside a Slurm job (ranks on a node share /dev/shm), unless a /dev/shm
    /// size was asked for: the host's /dev/shm cannot be sized, so that run gets its own.
    pub fn ipc_mode(&self) -> Sharing {
        self.ipc.unwrap_or(if in_slurm_job() && self.shm_size.is_none() {
            Sharing::Host
        } else {
            Sharing::Private
        })
    }

    pub fn pid_mode(&self) -> Sharing {
        self.pid.unwrap_or(if in_slurm_job() {
            Sharing::Host
        } else {
            Sharing::Private
        })
    }
}
