//! NVIDIA GPUs, CDI-style. Where to look:
//! - what the driver exposes and where drun reads it: [`driver`] (the data), [`discover`] (reading the host,
//!   with [`host_ld_cache`] to find libcuda, and [`nvidia_smi`] for memory sizes);
//! - which libraries each `NVIDIA_DRIVER_CAPABILITIES` brings: [`capabilities`];
//! - where a GPU is chosen for a request: [`select`];
//! - how a run's request and `--device` names become CDI devices: [`resolve`], with [`cdi`] for the host's specs
//!   or one generated from discovery;
//! - where GPUs, driver files and variables are injected into the container: [`inject`], which refreshes the
//!   container's ld cache through [`container_ldconfig`].
//!
//! Below the run path: nothing here starts a container or pulls an image.

pub mod capabilities;
pub mod cdi;
pub mod container_ldconfig;
pub mod discover;
pub mod driver;
pub mod host_ld_cache;
pub mod inject;
pub mod nvidia_smi;
pub mod resolve;
pub mod select;

use std::path::PathBuf;

pub use capabilities::{capabilities, library_capability, BINARIES, CAPABILITY_LIBS};
pub use discover::discover;
pub use driver::{driver_root, host_path, Driver, Gpu, DRIVER_ROOT_ENV};
pub use inject::Injection;
pub use nvidia_smi::query_memory;
pub use resolve::prepare;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("cannot read {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid GPU information in {path:?}: expected a `Device Minor` line")]
    NoDeviceMinor { path: PathBuf },
    #[error(transparent)]
    Select(#[from] select::SelectError),
    #[error(transparent)]
    Cdi(#[from] cdi::CdiError),
    #[error("no NVIDIA GPU found: no driver under {driver:?} and no {kind} device in the CDI specs of {dirs}")]
    NoGpu {
        driver: PathBuf,
        kind: &'static str,
        dirs: String,
    },
    #[error("no NVIDIA driver found under {0:?}")]
    NoDriver(PathBuf),
    #[error(
        "cannot select GPUs by name or memory: this host does not expose the driver's information; request a count \
         or device names"
    )]
    NeedsDriverInformation,
    #[error("cannot assign {wanted} GPU(s): the CDI specs describe {described}: {names}")]
    TooFewInCdiSpecs {
        wanted: u32,
        described: usize,
        names: String,
    },
    #[error("cannot choose GPUs: they changed while drun chose among them; try again")]
    Changed,
    #[error("cannot refresh the container's ld cache for the driver libraries")]
    LdCache(#[source] container_ldconfig::LdCacheError),
}
