//! `RunPlan`: the one validated description of what to run, the contract between the front ends (`drun run`
//! flags, workflow entries) and the run path. Built with [`RunPlan::new`], which sets every security default; it
//! has no `Default` that could leave one out, and the run path only ever reads it.
//!
//! [`parse`] holds the pure parsers both front ends share; [`host_paths`] is the one later step that looks at the
//! host's disk (bind sources, env files, required files, device nodes); [`host_env`] decides which host variables
//! reach the container, with the training variables of a Slurm step from [`slurm_env`].

pub mod check;
pub mod host_env;
pub mod host_paths;
pub mod parse;
pub mod setup;
pub mod slurm_env;

use std::path::PathBuf;

use crate::image::platform::Platform;
use crate::units::ByteSize;

// The spellings of these enums are clap's (`ValueEnum`): `--pull`, `--network`, `--ipc` and `--pid` take them,
// and [`parse`] reads a workflow's `network_mode` through the same table.

/// When to pull the image (`--pull`); defined beside the code that pulls, which sits below the plan.
pub use crate::image::ready::PullPolicy;

/// The container's network (`--network`, a workflow's `network_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum NetworkMode {
    /// The host's network namespace: what HPC jobs, GPUs and NCCL need, so the default.
    #[default]
    Host,
    /// A private network namespace with only loopback.
    None,
}

/// Whether a namespace is shared with the host or private to the container (`--ipc`, `--pid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Sharing {
    /// The host's namespace.
    Host,
    /// A namespace of the container's own (also spelt as an empty value).
    #[value(alias = "")]
    Private,
}

/// The seccomp filter (`--security-opt seccomp=…`).
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SeccompMode {
    /// drun's default profile (Docker's).
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A Docker-format JSON profile on the host.
    Profile(PathBuf),
}

/// One mount of the container. Bind sources are absolute host paths (those a user named made canonical by
/// [`host_paths`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MountSpec {
    /// A host file or directory.
    Bind {
        source: PathBuf,
        destination: String,
        read_only: bool,
    },
    /// A fresh tmpfs with mount options (`size=…`, `mode=…`).
    Tmpfs { destination: String, options: Vec<String> },
    /// A host directory shown copy-on-write: an overlay with `source` as its only lower layer and the run's own
    /// upper directory, so the container's writes never reach `source` (a workflow's project directory). At most
    /// one per run; mounted before every other mount, so mounts below its destination land on top of it.
    Overlay { source: PathBuf, destination: String },
}

/// What a container may do with a host device (`--device …:rwm`): the device cgroup's access letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceAccess {
    pub read: bool,
    pub write: bool,
    pub mknod: bool,
}

impl DeviceAccess {
    /// `rwm`, Docker's default.
    pub const ALL: DeviceAccess = DeviceAccess {
        read: true,
        write: true,
        mknod: true,
    };

    /// One or more of `r`, `w` and `m`, in any order, each at most once; None for anything else.
    pub fn parse(text: &str) -> Option<DeviceAccess> {
        let mut access = DeviceAccess {
            read: false,
            write: false,
            mknod: false,
        };
        for c in text.chars() {
            let flag = match c {
                'r' => &mut access.read,
                'w' => &mut access.write,
                'm' => &mut access.mknod,
                _ => return None,
            };
            if std::mem::replace(flag, true) {
                return None;
            }
        }
        (!text.is_empty()).then_some(access)
    }

    /// The letters, in `rwm` order (the device cgroup's `access`).
    pub fn letters(&self) -> String {
        [(self.read, 'r'), (self.write, 'w'), (self.mknod, 'm')]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| c)
            .collect()
    }
}

/// A character or a block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceKind {
    Char,
    Block,
}

impl DeviceKind {
    /// The OCI spec's and the device cgroup's letter.
    pub fn letter(self) -> &'static str {
        match self {
            DeviceKind::Char => "c",
            DeviceKind::Block => "b",
        }
    }
}

/// A host device node given to the container (`--device /dev/HOST[:/dev/CONTAINER][:rwm]`), as
/// [`host_paths`] found it: `host` is canonical (symlinks followed), the numbers are the node's.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostDevice {
    pub host: PathBuf,
    pub container: String,
    pub kind: DeviceKind,
    pub major: u64,
    pub minor: u64,
    pub access: DeviceAccess,
}

/// A block device's numbers, as [`host_paths`] found them for a path (`--device-read-bps /dev/sda:1mb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockDevice {
    pub major: u64,
    pub minor: u64,
}

/// One per-device block I/O setting: a weight (`--blkio-weight-device`) or a throttle rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceValue {
    pub device: BlockDevice,
    pub value: u64,
}

/// Cgroup settings beyond `--memory`, `--cpus` and `--pids-limit`, under docker-py's names. All unset by default;
/// the run path writes them where the host's cgroup version has them (see `run::cgroups::limits`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CgroupTuning {
    /// Relative CPU weight (v1 `cpu.shares`; v2 `cpu.weight`, converted).
    pub cpu_shares: Option<u64>,
    /// CFS period and quota in microseconds (`--cpu-period`, `--cpu-quota`), an alternative to `--cpus`.
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<i64>,
    /// CPUs and memory nodes to run on, as the kernel's list syntax (`0-3,8`).
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Memory soft limit (v1 `memory.soft_limit_in_bytes`, v2 `memory.low`).
    pub mem_reservation: Option<ByteSize>,
    /// Memory plus swap in bytes; -1 is unlimited swap. Needs a memory limit.
    pub memswap_limit: Option<i64>,
    /// 0–100; cgroup v1 only (v2 has none: ignored with a warning, as Docker does).
    pub mem_swappiness: Option<u64>,
    /// cgroup v1 only (ignored with a warning on v2, as Docker does).
    pub oom_kill_disable: bool,
    /// Block I/O weight, 10–1000 (needs the BFQ scheduler, or CFQ on old kernels: ignored with a warning without).
    pub blkio_weight: Option<u16>,
    pub blkio_weight_device: Vec<DeviceValue>,
    pub device_read_bps: Vec<DeviceValue>,
    pub device_write_bps: Vec<DeviceValue>,
    pub device_read_iops: Vec<DeviceValue>,
    pub device_write_iops: Vec<DeviceValue>,
    /// Extra device cgroup rules (`--device-cgroup-rule 'c 1:3 rwm'`).
    pub device_cgroup_rules: Vec<DeviceRule>,
}

impl CgroupTuning {
    /// Adds a per-device block I/O setting, as [`host_paths`] resolved it.
    pub fn push_blkio(&mut self, kind: parse::BlkioKind, value: DeviceValue) {
        use parse::BlkioKind::*;
        match kind {
            Weight => self.blkio_weight_device.push(value),
            ReadBps => self.device_read_bps.push(value),
            WriteBps => self.device_write_bps.push(value),
            ReadIops => self.device_read_iops.push(value),
            WriteIops => self.device_write_iops.push(value),
        }
    }

    /// Whether any block I/O setting is given.
    pub fn has_blkio(&self) -> bool {
        self.blkio_weight.is_some()
            || !self.blkio_weight_device.is_empty()
            || !self.device_read_bps.is_empty()
            || !self.device_write_bps.is_empty()
            || !self.device_read_iops.is_empty()
            || !self.device_write_iops.is_empty()
    }
}

/// A device cgroup rule: `TYPE MAJOR:MINOR ACCESS`, `*` (None) for any number; `kind` None is `a` (all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceRule {
    pub kind: Option<DeviceKind>,
    pub major: Option<u64>,
    pub minor: Option<u64>,
    pub access: DeviceAccess,
}

/// `/etc/resolv.conf` and `/etc/hosts` settings (`--dns`, `--dns-search`, `--dns-option`, `--add-host`): each list
/// given replaces the host's lines of its kind; hosts are added.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NameResolution {
    pub servers: Vec<std::net::IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
    /// `(host name, address)` lines added to /etc/hosts.
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
}

/// What to do when the container exits (`--restart`, docker-py's `restart_policy`). Without a daemon only
/// on-failure has a meaning: the run is started again, in the foreground.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum RestartPolicy {
    #[default]
    No,
    /// Start again after a non-zero exit, at most this many more times.
    OnFailure(u32),
}

/// One resource limit (`--ulimit`, a workflow's `ulimits`); `u64::MAX` is unlimited.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// What to run and how. Fields are public for the run path to read; a plan is made with [`RunPlan::new`] (and
/// struct update syntax: `RunPlan { memory, ..RunPlan::new(image) }`), never field by field from nothing. The run
/// path takes it by shared reference: it does not change once the run starts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunPlan {
    /// The image as typed (resolved through the store, pulled per `pull`).
    pub image: String,
    pub pull: PullPolicy,
    pub platform: Option<Platform>,
    /// Replaces the image's Entrypoint (`Some(vec![])` clears it).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` settings in order; later ones win. Above every other layer.
    pub env: Vec<(String, String)>,
    /// The host's variables that reach the container (`--env-host`, a Slurm job's): see [`host_env`].
    pub host_env: host_env::HostEnv,
    pub mounts: Vec<MountSpec>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub memory: Option<ByteSize>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// Every other cgroup setting (CPU shares and sets, memory reservation and swap, block I/O …).
    pub tuning: CgroupTuning,
    /// The process's `/proc/self/oom_score_adj`, -1000–1000.
    pub oom_score_adj: Option<i32>,
    pub shm_size: Option<ByteSize>,
    /// The most the container's writable layer may hold where it is kept in memory (see `run/rootfs/memory.rs`);
    /// None: the config file's `tmp_size`, else half of RAM.
    pub tmp_size: Option<ByteSize>,
    /// A workflow's setup, run once and kept as a layer above the image's (see [`setup`]).
    pub setup: Option<setup::SetupPlan>,
    pub network: NetworkMode,
    pub ipc: Option<Sharing>,
    pub pid: Option<Sharing>,
    /// The UTS namespace: the container's own (None, the default) or the host's (`--uts host`).
    pub uts: Option<Sharing>,
    pub hostname: Option<String>,
    /// The NIS domain name (`--domainname`): needs the container's own UTS namespace.
    pub domainname: Option<String>,
    pub dns: NameResolution,
    /// Supplementary groups (`--group-add`): names resolved in the image's /etc/group, or numbers.
    pub group_add: Vec<String>,
    /// Namespaced kernel parameters (`--sysctl`), checked by [`parse::sysctl`].
    pub sysctls: Vec<(String, String)>,
    /// The signal that stops the container (`--stop-signal`, else the image's StopSignal, else SIGTERM): what
    /// `drun stop` sends first, and what a SIGTERM to a foreground drun becomes.
    #[serde(with = "signal_number")]
    pub stop_signal: Option<nix::sys::signal::Signal>,
    pub restart: RestartPolicy,
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
    /// Host device nodes (`--device /dev/zero:/dev/myzero:r`, a workflow's `devices`).
    pub host_devices: Vec<HostDevice>,
    /// The host's RDMA devices and RLIMIT_MEMLOCK raised (`--rdma`, `resources.rdma`).
    pub rdma: bool,
    /// CDI spec directories (empty: DRUN_CDI_SPEC_DIRS, else /etc/cdi and /var/run/cdi).
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Fail rather than warn when limits cannot be enforced (rootless without a delegated cgroup).
    pub require_limits: bool,
    /// Its health check (`--health-*`, a workflow's `healthcheck`), over the image's.
    pub health: crate::run::health::HealthPlan,
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
    /// A plan that runs `image` with drun's defaults: the image's own command, environment and user; the host
    /// network; private IPC and PID namespaces (the host's inside a Slurm job, see [`RunPlan::ipc_mode`]); the
    /// default capabilities ([`DEFAULT_CAPS`]), the default seccomp profile and no_new_privileges; no limits.
    pub fn new(image: impl Into<String>) -> RunPlan {
        RunPlan {
            image: image.into(),
            pull: PullPolicy::Missing,
            platform: None,
            entrypoint: None,
            command: None,
            env: Vec::new(),
            host_env: host_env::HostEnv::default(),
            mounts: Vec::new(),
            workdir: None,
            user: None,
            memory: None,
            cpus: None,
            pids_limit: None,
            tuning: CgroupTuning::default(),
            oom_score_adj: None,
            shm_size: None,
            tmp_size: None,
            setup: None,
            network: NetworkMode::Host,
            ipc: None,
            pid: None,
            uts: None,
            hostname: None,
            domainname: None,
            dns: NameResolution::default(),
            group_add: Vec::new(),
            sysctls: Vec::new(),
            stop_signal: None,
            restart: RestartPolicy::No,
            read_only: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            privileged: false,
            seccomp: SeccompMode::Default,
            no_new_privileges: true,
            ulimits: Vec::new(),
            name: None,
            interactive: false,
            tty: false,
            init: false,
            init_signals_group: false,
            cidfile: None,
            labels: Vec::new(),
            gpus: None,
            devices: Vec::new(),
            host_devices: Vec::new(),
            rdma: false,
            cdi_spec_dirs: Vec::new(),
            require_limits: false,
            health: crate::run::health::HealthPlan::default(),
        }
    }

    /// Private by default; the host's inside a Slurm job (ranks on a node share /dev/shm), unless a /dev/shm
    /// size was asked for: the host's /dev/shm cannot be sized, so that run gets its own.
    pub fn ipc_mode(&self) -> Sharing {
        self.ipc.unwrap_or(if in_slurm_job() && self.shm_size.is_none() {
            Sharing::Host
        } else {
            Sharing::Private
        })
    }

    /// Private by default; the host's inside a Slurm job.
    pub fn pid_mode(&self) -> Sharing {
        self.pid.unwrap_or(if in_slurm_job() {
            Sharing::Host
        } else {
            Sharing::Private
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_plan_is_secure_by_default() {
        let plan = RunPlan::new("busybox");
        assert_eq!(plan.image, "busybox");
        assert!(plan.no_new_privileges);
        assert_eq!(plan.seccomp, SeccompMode::Default);
        assert!(!plan.privileged);
        assert!(plan.cap_add.is_empty() && plan.cap_drop.is_empty());
        assert_eq!(plan.network, NetworkMode::Host);
        assert_eq!(plan.pull, PullPolicy::Missing);
    }

    #[test]
    fn device_access_letters() {
        assert_eq!(DeviceAccess::parse("rwm"), Some(DeviceAccess::ALL));
        assert_eq!(DeviceAccess::parse("mr").unwrap().letters(), "rm");
        assert_eq!(DeviceAccess::parse("w").unwrap().letters(), "w");
        for bad in ["", "rr", "rwx", "R", "rw m"] {
            assert_eq!(DeviceAccess::parse(bad), None, "{bad:?}");
        }
    }
}

/// A signal as its number, for a plan handed to a detached run's monitor (`run::detach`).
mod signal_number {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(sig: &Option<Signal>, s: S) -> Result<S::Ok, S::Error> {
        sig.map(|g| g as i32).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Signal>, D::Error> {
        Option::<i32>::deserialize(d)?
            .map(|n| Signal::try_from(n).map_err(serde::de::Error::custom))
            .transpose()
    }
}
