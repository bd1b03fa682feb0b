//! Command-line interface (clap derive): the raw flags of every subcommand; `drun run`'s are in [`run`]. Commands
//! turn them into validated settings (a [`crate::plan::RunPlan`]); nothing here checks values or prints.

pub mod run;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

pub use run::{CommonRunArgs, ContainerArgs, GivenFlags, RunArgs, WorkflowArgs};

/// Parses a command line (`args[0]` is the program name), recording which `drun run` flags were given.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut matches = Cli::command().try_get_matches_from(&args)?;
    // After an image, everything is the container's command; after a workflow file, flags are still drun's, as in
    // runflow's `run FILE --var NAME=VALUE`: parsed again without the trailing-arguments rule.
    if let Some(("run", run)) = matches.subcommand() {
        let positional: Vec<&String> = run
            .get_many::<String>("image_and_command")
            .into_iter()
            .flatten()
            .collect();
        if positional
            .first()
            .is_some_and(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
            && positional[1..].iter().any(|a| a.starts_with('-'))
        {
            let command = Cli::command().mut_subcommand("run", |c| {
                c.trailing_var_arg(false).mut_arg("image_and_command", |a| {
                    a.trailing_var_arg(false).allow_hyphen_values(false)
                })
            });
            matches = command.try_get_matches_from(&args)?;
        }
    }
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Command::Run(run), Some(("run", run_matches))) = (&mut cli.command, matches.subcommand()) {
        run.given = GivenFlags::from_matches(run_matches);
    }
    Ok(cli)
}

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
    /// Shared directory of squashfs image files (a cluster file system): `drun run IMAGE` and `drun pull
    /// --squash IMAGE` use the image's file there, converting it once if no node has (also config `image_dir`)
    #[arg(long, global = true, env = "DRUN_IMAGE_DIR", value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (or a tracing filter; also DRUN_LOG)
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pull an image from a registry, an OCI layout (oci:DIR[:TAG]), an OCI archive (oci-archive:FILE[:TAG]) or a docker save archive (docker-archive:FILE)
    Pull(PullArgs),
    /// List stored images
    Images(ImagesArgs),
    /// Show an image's manifest and config as JSON
    Inspect(InspectArgs),
    /// Write an image as one squashfs image file (FILE.sqsh), which `drun run FILE.sqsh` runs without unpacking
    Export(ExportArgs),
    /// Remove images (and the layers no other image uses)
    Rmi(RmiArgs),
    /// Remove unreferenced layers, blobs and leftovers of interrupted pulls and runs
    Prune(PruneArgs),
    /// Check the store and the runs' state for damage and leftovers (--repair: remove them)
    Check(CheckArgs),
    /// Run a command in a new container (pulls the image if missing), or the workflows of a workflow.yaml
    Run(Box<RunArgs>),
    /// List running containers (-a: also those that ended, until `drun rm`)
    Ps(PsArgs),
    /// Send a signal to a running container
    Kill(KillArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
    /// Print a detached container's output (-f: follow it until the container ends)
    Logs(LogsArgs),
    /// Wait until containers end and print their exit codes
    Wait(WaitArgs),
    /// Stop containers: their stop signal, then SIGKILL after a timeout
    Stop(StopArgs),
    /// Remove containers that ended (-f: also running ones, killed first)
    Rm(RmArgs),
    /// List the NVIDIA GPUs drun finds (CDI specs and driver discovery)
    Gpus(GpusArgs),
    /// CDI specs: `drun cdi generate [-o FILE]` writes one for this host's NVIDIA GPUs
    Cdi(CdiArgs),
    /// Check this host for drun: kernel features, ids, GPUs, RDMA, Slurm, storage; each problem with its fix
    Doctor(DoctorArgs),
    /// A detached container's monitor, started by drun itself with its order on a pipe (`run::detach`)
    #[command(hide = true)]
    Monitor,
}

impl Command {
    /// Whether a rootless drun must enter its user namespace for this command (everything that touches the
    /// store or containers), and with which mode.
    pub fn userns(&self) -> Option<crate::sys::userns::UsernsMode> {
        match self {
            // doctor looks at the caller as the host sees them.
            Command::Gpus(_) | Command::Cdi(_) | Command::Doctor(_) => None,
            // exec joins the container's own namespace instead (`commands::exec`).
            Command::Exec(_) => None,
            // `drun run -d` only starts the monitor, which enters its namespace itself (see `run::detach`).
            Command::Run(a) if a.container.detach && !crate::run::detach::is_monitor() => None,
            Command::Run(a) => Some(a.common.userns.unwrap_or_else(crate::run::pmi::default_userns)),
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
pub struct DoctorArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
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
pub struct PsArgs {
    /// Also list detached containers that ended (kept until `drun rm`)
    #[arg(short, long)]
    pub all: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Print ids only
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow the output until the container ends
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<u64>,
    /// Container id (or a unique prefix) or name
    pub container: String,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Container ids (or unique prefixes) or names
    #[arg(required = true)]
    pub containers: Vec<String>,
    /// What to wait for: stopped (the default: print the exit code), healthy (fails if the container turns
    /// unhealthy or ends first) or unhealthy
    #[arg(long, value_name = "CONDITION", default_value = "stopped")]
    pub condition: WaitCondition,
    /// With --condition healthy or unhealthy: give up (exit 125) after this long, e.g. 60s
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

/// `drun wait --condition`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitCondition {
    #[value(alias = "exited", alias = "not-running")]
    Stopped,
    Healthy,
    Unhealthy,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait after the stop signal before SIGKILL
    #[arg(
        short = 't',
        long = "time",
        visible_alias = "timeout",
        default_value_t = 10,
        value_name = "SECONDS"
    )]
    pub time: u64,
    /// Container ids (or unique prefixes) or names
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill and remove a running container
    #[arg(short, long)]
    pub force: bool,
    /// Container ids (or unique prefixes) or names
    #[arg(required = true)]
    pub containers: Vec<String>,
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
pub struct ExecArgs {
    /// Pass drun's stdin to the command (else it reads /dev/null)
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Set a variable (repeatable), over the container's environment
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User (name or uid, from the container's /etc/passwd) and optional group
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Working directory in the container (absolute)
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Container id (or a unique prefix) or name
    pub container: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Image reference, e.g. busybox, registry:5000/repo:tag, repo@sha256:…, oci:DIR:TAG, oci-archive:FILE:TAG, docker-archive:FILE
    pub image: String,
    /// Platform to choose from a multi-arch image (default: this host's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Print nothing but errors
    #[arg(short, long)]
    pub quiet: bool,
    /// Keep the image as one squashfs file in the store instead of unpacked layers (`drun run` mounts it)
    #[arg(long)]
    pub squash: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Image reference (pulled first if the store does not have it)
    pub image: String,
    /// What to write (replaced atomically if it exists): FILE.sqsh (a squashfs image file),
    /// oci-archive:FILE[:TAG] or docker-archive:FILE (a tarball for `drun pull`, podman, docker and skopeo)
    #[arg(short, long, value_name = "FILE.sqsh|oci-archive:FILE[:TAG]|docker-archive:FILE")]
    pub output: std::path::PathBuf,
    /// Bound mksquashfs's memory for its caches (its `-mem`; 256M unless given), for small nodes or Slurm jobs
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
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
pub struct CheckArgs {
    /// Remove what is damaged (and the images that need it: pull them again) and every leftover; waits for
    /// pulls and runs that are registering to finish
    #[arg(long)]
    pub repair: bool,
    /// Also hash every stored blob and walk every layer's files (slower: reads the whole store)
    #[arg(long)]
    pub deep: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Print only the number of bytes freed
    #[arg(short, long)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NetworkMode, PullPolicy, Sharing};

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = parse_from(["drun", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(a) => Ok(*a),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn value_enums_take_every_spelling_of_before() {
        let a = run_args(&["--net", "none", "--pull", "never", "--ipc", "host", "--pid", "", "img"]).unwrap();
        assert_eq!(a.container.network, NetworkMode::None);
        assert_eq!(a.common.pull, PullPolicy::Never);
        assert_eq!(a.container.ipc, Some(Sharing::Host));
        assert_eq!(a.container.pid, Some(Sharing::Private));
        let a = run_args(&["--network=host", "--pull=always", "--ipc=private", "img"]).unwrap();
        assert_eq!(a.container.network, NetworkMode::Host);
        assert_eq!(a.common.pull, PullPolicy::Always);
        assert_eq!(a.container.ipc, Some(Sharing::Private));
        let a = run_args(&["img", "--network", "none"]).unwrap();
        assert_eq!(
            a.container.network,
            NetworkMode::Host,
            "after the image, flags are the command's"
        );
        assert_eq!(a.image_and_command, ["img", "--network", "none"]);
        for bad in [
            &["--network", "bridge", "img"][..],
            &["--pull", "sometimes", "img"],
            &["--pid", "sideways", "img"],
        ] {
            let e = run_args(bad).unwrap_err();
            assert!(e.to_string().contains(bad[0]), "{e}");
        }
    }

    #[test]
    fn given_flags_are_sorted_by_group() {
        let a = run_args(&[
            "-m",
            "1g",
            "--cpus=2",
            "-e",
            "A=1",
            "--dry-run",
            "--network",
            "host",
            "wf.yaml",
        ])
        .unwrap();
        assert_eq!(
            a.given,
            GivenFlags {
                container: vec!["-m/--memory".into(), "--cpus".into(), "--network".into()],
                workflow: vec!["--dry-run".into()],
            }
        );
        // Defaults are not given flags.
        assert_eq!(run_args(&["-q", "wf.yaml"]).unwrap().given, GivenFlags::default());
    }

    #[test]
    fn a_workflow_file_run_names_its_flags() {
        let flags = run::workflow_file_flags();
        for want in [
            "-e/--env",
            "--env-file",
            "--pull",
            "-q/--quiet",
            "--userns",
            "--artifacts",
            "--keep-going",
        ] {
            assert!(flags.iter().any(|f| f == want), "{want} not in {flags:?}");
        }
        assert!(!flags.iter().any(|f| f.contains("memory")), "{flags:?}");
    }
}
