//! Command-line interface (clap derive). Raw flags live here; commands turn them into validated settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "drun",
    version,
    about = "A daemonless container runtime for HPC and GPU hosts"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Store directory (default: /var/lib/drun as root, $XDG_DATA_HOME/drun otherwise)
    #[arg(long, global = true, env = "DRUN_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Directory for running containers' state (default: /run/drun as root, $XDG_RUNTIME_DIR/drun otherwise)
    #[arg(long, global = true, env = "DRUN_STATE", value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Shared cache of verified compressed layer blobs (read from when present, filled when writable); lets
    /// several users download each layer once. Unpacked layers stay per user.
    #[arg(long, global = true, env = "DRUN_BLOB_CACHE", value_name = "DIR")]
    pub blob_cache: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (or a tracing filter; also DRUN_LOG)
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pull an image from a registry, an OCI layout (oci:DIR[:TAG]) or a docker save archive (docker-archive:FILE)
    Pull(PullArgs),
    /// List stored images
    Images(ImagesArgs),
    /// Show an image's manifest and config as JSON
    Inspect(InspectArgs),
    /// Remove images (and the layers no other image uses)
    Rmi(RmiArgs),
    /// Remove unreferenced layers, blobs and leftovers of interrupted pulls and runs
    Prune(PruneArgs),
    /// Run a command in a new container (pulls the image if missing), or the workflows of a workflow.yaml
    Run(Box<RunArgs>),
    /// List running containers
    Ps(PsArgs),
    /// Send a signal to a running container
    Kill(KillArgs),
    /// List the NVIDIA GPUs drun finds (CDI specs and driver discovery)
    Gpus(GpusArgs),
    /// CDI specs: `drun cdi generate [-o FILE]` writes one for this host's NVIDIA GPUs
    Cdi(CdiArgs),
}

impl Command {
    /// Whether a rootless drun must enter its user namespace for this command (everything that touches the
    /// store or containers), and with which mode.
    pub fn userns(&self) -> Option<crate::sys::userns::UsernsMode> {
        match self {
            Command::Gpus(_) | Command::Cdi(_) => None,
            Command::Run(a) => Some(a.userns.unwrap_or_default()),
            _ => Some(crate::sys::userns::UsernsMode::Auto),
        }
    }
}

#[derive(Args, Debug)]
pub struct GpusArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Directory of CDI specs (repeatable; default: DRUN_CDI_SPEC_DIRS, else /etc/cdi and /var/run/cdi)
    #[arg(long, value_name = "DIR")]
    pub cdi_spec_dir: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CdiArgs {
    #[command(subcommand)]
    pub command: CdiCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CdiCommand {
    /// Write a CDI spec (kind nvidia.com/gpu) for this host's driver: YAML, or JSON for a .json file
    Generate {
        /// Output file (default: standard output)
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Library groups to include (NVIDIA_DRIVER_CAPABILITIES syntax)
        #[arg(long, default_value = "all", value_name = "CAPS")]
        capabilities: String,
    },
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Keep stdin open (pass drun's stdin to the container)
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal for the container
    #[arg(short, long)]
    pub tty: bool,
    /// Set environment variables (KEY=VALUE, or KEY to pass the host's value)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines; # comments)
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
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
    pub cpus: Option<f64>,
    /// Maximum number of processes
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Size of /dev/shm (default: the memory limit, else half of RAM)
    #[arg(long, value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Network: host (default) or none (loopback only)
    #[arg(long, alias = "net", default_value = "host", value_name = "MODE")]
    pub network: String,
    /// IPC namespace: private, or host (default inside a Slurm job)
    #[arg(long, value_name = "MODE")]
    pub ipc: Option<String>,
    /// PID namespace: private, or host (default inside a Slurm job)
    #[arg(long, value_name = "MODE")]
    pub pid: Option<String>,
    /// Container host name (default: the short container id)
    #[arg(long, short = 'H', value_name = "NAME")]
    pub hostname: Option<String>,
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
    /// When to pull: missing (default), always, never
    #[arg(long, default_value = "missing", value_name = "POLICY")]
    pub pull: String,
    /// Platform to pull (OS/ARCH[/VARIANT])
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Write the container id to this file
    #[arg(long, value_name = "FILE")]
    pub cidfile: Option<PathBuf>,
    /// No pull progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// GPUs: all, a count, device=0,2 or device=GPU-<uuid>
    #[arg(long, value_name = "GPUS")]
    pub gpus: Option<String>,
    /// Add a CDI device by fully-qualified name, e.g. nvidia.com/gpu=0 or vendor.com/class=name
    #[arg(long, value_name = "CDI-NAME")]
    pub device: Vec<String>,
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
    /// Workflows: where artifacts and logs go (default: artifacts/ beside the workflow file)
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Workflows: print the resolved plan and run nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Workflows: after a failure, still run the workflows that do not depend on it
    #[arg(long)]
    pub keep_going: bool,
    /// Image, then the command and its arguments; or a workflow file (*.yaml, *.yml), then workflow names
    #[arg(
        required = true,
        value_name = "IMAGE [COMMAND [ARG...]] | WORKFLOW.yaml [NAME...]",
        allow_hyphen_values = true
    )]
    pub image_and_command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Print ids only
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal to send (name or number)
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    /// Container ids (or unique prefixes) or names
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Image reference, e.g. busybox, registry:5000/repo:tag, repo@sha256:…, oci:DIR:TAG, docker-archive:FILE
    pub image: String,
    /// Platform to choose from a multi-arch image (default: this host's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Print nothing but errors
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Print image names only
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Image name or ID
    pub image: String,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Image names or IDs
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Print only the number of bytes freed
    #[arg(short, long)]
    pub quiet: bool,
}
