//! `drun run`'s flags, in three groups (clap `flatten`): [`ContainerArgs`] set up one container and belong in the
//! file when the run is a workflow file; [`WorkflowArgs`] only make sense for a workflow file; [`CommonRunArgs`]
//! apply to both. Which groups' flags were given is read from clap's own metadata ([`GivenFlags`]), so a new flag
//! is sorted by the group it is declared in, with no list to update.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args};

use crate::plan::{NetworkMode, PullPolicy, Sharing};

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    // Declared before the groups: a group's help heading would otherwise cover it.
    /// Image, then the command and its arguments; or a workflow file (*.yaml, *.yml), then workflow names
    #[arg(
        required = true,
        value_name = "IMAGE [COMMAND [ARG...]] | WORKFLOW.yaml [NAME...]",
        allow_hyphen_values = true
    )]
    pub image_and_command: Vec<String>,
    #[command(flatten)]
    pub container: ContainerArgs,
    #[command(flatten)]
    pub common: CommonRunArgs,
    #[command(flatten)]
    pub workflow: WorkflowArgs,
    /// The flags of each group given on the command line (filled in by [`super::parse_from`], not by clap).
    #[arg(skip)]
    pub given: GivenFlags,
}

/// Flags that set up one container: with a workflow file, each workflow sets them in the file.
#[derive(Args, Debug)]
pub struct ContainerArgs {
    /// Keep stdin open (pass drun's stdin to the container)
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal for the container
    #[arg(short, long)]
    pub tty: bool,
    /// Run in the background: print the container's id and leave it running under a monitor process; its output
    /// goes to a log (`drun logs`), and it stays listed after it ends (`drun ps -a`) until `drun rm`
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits, as Docker's --rm: what every foreground run does; with -d, nothing of
    /// it stays once it ended
    #[arg(long)]
    pub rm: bool,
    /// With -d, how large the log may grow: max-size=SIZE (per file, default 10m), max-file=N (default 2)
    #[arg(long, value_name = "OPT=VALUE")]
    pub log_opt: Vec<String>,
    /// Bind mount a volume: SRC:DST[:ro|rw]
    #[arg(short, long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// Attach a mount: type=bind,source=…,target=…[,readonly] or type=tmpfs,target=…[,tmpfs-size=…]
    #[arg(long, value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Mount a tmpfs: DST[:OPTIONS]
    #[arg(long, value_name = "DST[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// Working directory inside the container (created if missing)
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User: NAME|UID[:GROUP|GID], resolved in the image
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Replace the image's entrypoint ("" clears it)
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Memory limit, e.g. 256m (no extra swap)
    #[arg(short, long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit in CPUs, e.g. 1.5
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Maximum number of processes
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// CPU shares: a relative weight (default 1024)
    #[arg(short = 'c', long, value_name = "N")]
    pub cpu_shares: Option<String>,
    /// CFS period in microseconds (with --cpu-quota, instead of --cpus)
    #[arg(long, value_name = "US")]
    pub cpu_period: Option<String>,
    /// CFS quota in microseconds per period
    #[arg(long, value_name = "US", allow_hyphen_values = true)]
    pub cpu_quota: Option<String>,
    /// CPUs to run on, e.g. 0-3 or 0,2
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// NUMA memory nodes to allocate from, e.g. 0 or 0-1
    #[arg(long, value_name = "LIST")]
    pub cpuset_mems: Option<String>,
    /// Memory soft limit, e.g. 128m
    #[arg(long, value_name = "SIZE")]
    pub memory_reservation: Option<String>,
    /// Memory plus swap, e.g. 1g (-1: unlimited swap; default: no extra swap)
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Swappiness, 0 to 100 (cgroup v1; ignored with a warning on v2)
    #[arg(long, value_name = "N")]
    pub memory_swappiness: Option<String>,
    /// Kernel memory limit: accepted and ignored with a warning, as Docker does
    #[arg(long, value_name = "SIZE", hide = true)]
    pub kernel_memory: Option<String>,
    /// Disable the OOM killer (cgroup v1; ignored with a warning on v2)
    #[arg(long)]
    pub oom_kill_disable: bool,
    /// OOM score adjustment, -1000 to 1000
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub oom_score_adj: Option<String>,
    /// Block I/O weight, 10 to 1000 (needs the BFQ scheduler; ignored with a warning without)
    #[arg(long, value_name = "N")]
    pub blkio_weight: Option<String>,
    /// Block I/O weight of a device: DEVICE:WEIGHT
    #[arg(long, value_name = "DEVICE:WEIGHT")]
    pub blkio_weight_device: Vec<String>,
    /// Read rate limit of a device: DEVICE:RATE, e.g. /dev/sda:1mb
    #[arg(long, value_name = "DEVICE:RATE")]
    pub device_read_bps: Vec<String>,
    /// Write rate limit of a device: DEVICE:RATE
    #[arg(long, value_name = "DEVICE:RATE")]
    pub device_write_bps: Vec<String>,
    /// Read operations per second limit of a device: DEVICE:IOPS
    #[arg(long, value_name = "DEVICE:IOPS")]
    pub device_read_iops: Vec<String>,
    /// Write operations per second limit of a device: DEVICE:IOPS
    #[arg(long, value_name = "DEVICE:IOPS")]
    pub device_write_iops: Vec<String>,
    /// Add a device cgroup rule: 'TYPE MAJOR:MINOR ACCESS', e.g. 'c 1:3 rwm'
    #[arg(long, value_name = "RULE")]
    pub device_cgroup_rule: Vec<String>,
    /// Storage driver options: refused (drun's root file system is an overlay without size options)
    #[arg(long, value_name = "OPT", hide = true)]
    pub storage_opt: Vec<String>,
    /// Size of /dev/shm (default: the memory limit, else half of RAM)
    #[arg(long, value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Network: host (default) or none (loopback only)
    #[arg(long, alias = "net", value_enum, hide_possible_values = true, default_value_t = NetworkMode::Host, value_name = "MODE")]
    pub network: NetworkMode,
    /// IPC namespace: private, or host (default inside a Slurm job)
    #[arg(long, value_enum, hide_possible_values = true, value_name = "MODE")]
    pub ipc: Option<Sharing>,
    /// PID namespace: private, or host (default inside a Slurm job)
    #[arg(long, value_enum, hide_possible_values = true, value_name = "MODE")]
    pub pid: Option<Sharing>,
    /// UTS namespace: private (default) or host
    #[arg(long, value_enum, hide_possible_values = true, value_name = "MODE")]
    pub uts: Option<Sharing>,
    /// Container host name (default: the short container id; the host's inside a Slurm job)
    #[arg(long, short = 'H', value_name = "NAME")]
    pub hostname: Option<String>,
    /// Container NIS domain name
    #[arg(long, value_name = "NAME")]
    pub domainname: Option<String>,
    /// Name server for /etc/resolv.conf (repeatable; replaces the host's)
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// DNS search domain (repeatable; replaces the host's)
    #[arg(long, value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// resolv.conf option, e.g. ndots:2 (repeatable; replaces the host's)
    #[arg(long, alias = "dns-opt", value_name = "OPT")]
    pub dns_option: Vec<String>,
    /// Add a line to /etc/hosts: HOST:IP
    #[arg(long, value_name = "HOST:IP")]
    pub add_host: Vec<String>,
    /// Supplementary group: a name from the image's /etc/group, or a gid (repeatable)
    #[arg(long, value_name = "GROUP")]
    pub group_add: Vec<String>,
    /// Namespaced kernel parameter: NAME=VALUE (IPC ones; net.* with --network none)
    #[arg(long, value_name = "NAME=VALUE")]
    pub sysctl: Vec<String>,
    /// Signal that stops the container: what `drun stop` sends first and what drun's own SIGTERM becomes
    /// (default: the image's StopSignal for `drun stop`, else TERM)
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// A health check: a command run in the container by /bin/sh -c (exit 0: healthy), as Docker's
    #[arg(long, value_name = "COMMAND")]
    pub health_cmd: Option<String>,
    /// Time between health probes, e.g. 30s (default), 500ms, 1m30s
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// How long one health probe may run before it counts as failed (default 30s)
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Consecutive failed probes that make the container unhealthy (default 3)
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Time after the start during which failed probes do not count (default 0s)
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Disable any health check, the image's HEALTHCHECK included
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Restart policy: no (default) or on-failure:N (the same container started again after a failure, at most N times)
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Mount the root file system read-only
    #[arg(long)]
    pub read_only: bool,
    /// Add capabilities (e.g. NET_ADMIN, or ALL)
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop capabilities (e.g. CHOWN, or ALL)
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// All capabilities and devices, no seccomp, no masked paths
    #[arg(long)]
    pub privileged: bool,
    /// seccomp=unconfined|PROFILE.json, no-new-privileges[=true|false]
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Resource limits: NAME=SOFT[:HARD], e.g. nofile=1024:2048
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// Name the container (unique among running ones)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Run an init (catatonit) as PID 1 that forwards signals and reaps zombies
    #[arg(long)]
    pub init: bool,
    /// Write the container id to this file
    #[arg(long, value_name = "FILE")]
    pub cidfile: Option<PathBuf>,
    /// GPUs: all, a count, device=0,2 or device=GPU-<uuid>
    #[arg(long, value_name = "GPUS")]
    pub gpus: Option<String>,
    /// Add a host device, /dev/HOST[:/dev/CONTAINER][:rwm], or a CDI device by fully-qualified name,
    /// e.g. nvidia.com/gpu=0
    #[arg(long, value_name = "DEVICE")]
    pub device: Vec<String>,
    /// RDMA/InfiniBand: the host's /dev/infiniband verbs and rdma_cm devices, and RLIMIT_MEMLOCK unlimited
    #[arg(long)]
    pub rdma: bool,
}

/// Flags for a container and for every workflow of a workflow file alike.
#[derive(Args, Debug)]
#[command(next_help_heading = "Options for a container and a workflow file alike")]
pub struct CommonRunArgs {
    /// Set environment variables (KEY=VALUE, or KEY to pass the host's value)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines; # comments)
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// When to pull: missing (default), always, never
    #[arg(long, value_enum, hide_possible_values = true, default_value_t = PullPolicy::Missing, value_name = "POLICY")]
    pub pull: PullPolicy,
    /// Platform to pull (OS/ARCH[/VARIANT])
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// No pull progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// Directory of CDI specs (repeatable; default: DRUN_CDI_SPEC_DIRS, else /etc/cdi and /var/run/cdi)
    #[arg(long, value_name = "DIR")]
    pub cdi_spec_dir: Vec<PathBuf>,
    /// Rootless: auto (you are root in the container) or keep-id (you keep your own uid and gid, with a
    /// passwd/group entry)
    #[arg(long, value_name = "MODE")]
    pub userns: Option<crate::sys::userns::UsernsMode>,
    /// Fail instead of warning when --memory/--cpus/--pids-limit cannot be enforced (rootless without a
    /// delegated cgroup)
    #[arg(long)]
    pub require_limits: bool,
    /// Pass every host environment variable (but DRUN_*, LD_*, HOME, HOSTNAME, PATH, PWD); the image's Env and
    /// -e override them
    #[arg(long)]
    pub env_host: bool,
    /// Most the container's writable layer may hold where it is kept in memory (a state directory on overlayfs
    /// or NFS, as in a CI job container; default: the config file's tmp_size, else half of RAM)
    #[arg(long, value_name = "SIZE")]
    pub tmp_size: Option<String>,
    /// In a Slurm step, do not set MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE and
    /// NODE_RANK (SLURM_*, PMI_* and PMIX_* still pass)
    #[arg(long)]
    pub no_training_env: bool,
}

/// Flags for a workflow file only.
#[derive(Args, Debug)]
#[command(next_help_heading = "Options for a workflow file")]
pub struct WorkflowArgs {
    /// Where artifacts and logs go (default: artifacts/ beside the workflow file)
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Print the resolved plan and run nothing
    #[arg(long)]
    pub dry_run: bool,
    /// After a failure, still run the workflows that do not depend on it
    #[arg(long)]
    pub keep_going: bool,
    /// Set a variable of the workflow file, used there as ${var.NAME} (repeatable; a later one wins)
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Read variables from a YAML file of NAME: VALUE lines (repeatable; --var wins over a file)
    #[arg(long, value_name = "FILE")]
    pub var_file: Vec<PathBuf>,
    /// Build every workflow's setup (apt_packages, requirements, setup) again, replacing its cached layer
    #[arg(long)]
    pub no_cache: bool,
    /// Status lines as text, or as json: one JSON object per line per event
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`: how a workflow run reports each workflow's events on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[2026-01-02 10:00:00] Workflow "NAME" is started.`
    #[default]
    Text,
    /// `{"workflow":"NAME","event":"started","time":"2026-01-02T10:00:00.123Z"}`
    Json,
}

/// Flags given on the command line, as `-m/--memory`, by group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GivenFlags {
    /// [`ContainerArgs`] flags.
    pub container: Vec<String>,
    /// [`WorkflowArgs`] flags.
    pub workflow: Vec<String>,
}

impl GivenFlags {
    /// Reads them from the matches of `drun run`.
    pub(super) fn from_matches(matches: &ArgMatches) -> GivenFlags {
        let given = |group: Vec<Arg>| -> Vec<String> {
            group
                .iter()
                .filter(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
                .map(flag_name)
                .collect()
        };
        GivenFlags {
            container: given(group_args::<ContainerArgs>()),
            workflow: given(group_args::<WorkflowArgs>()),
        }
    }
}

/// The flags of a workflow file run (common and workflow-only), as `-e/--env`, in declaration order.
pub fn workflow_file_flags() -> Vec<String> {
    let mut flags: Vec<String> = group_args::<CommonRunArgs>().iter().map(flag_name).collect();
    flags.extend(workflow_only_flags());
    flags
}

/// The workflow-only flags, as `--dry-run`, in declaration order.
pub fn workflow_only_flags() -> Vec<String> {
    group_args::<WorkflowArgs>().iter().map(flag_name).collect()
}

/// The arguments a group of flags declares, from clap's metadata.
fn group_args<A: Args>() -> Vec<Arg> {
    A::augment_args(clap::Command::new("group"))
        .get_arguments()
        .cloned()
        .collect()
}

/// `-m/--memory`, `--mount`.
fn flag_name(arg: &Arg) -> String {
    match (arg.get_short(), arg.get_long()) {
        (Some(short), Some(long)) => format!("-{short}/--{long}"),
        (None, Some(long)) => format!("--{long}"),
        (Some(short), None) => format!("-{short}"),
        (None, None) => arg.get_id().to_string(),
    }
}
