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
    /// Remove unreferenced layers, blobs and leftovers of interrupted pulls
    Prune(PruneArgs),
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
