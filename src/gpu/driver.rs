//! What the NVIDIA driver exposes on a host ([`Driver`], its [`Gpu`]s), where drun looks for it
//! ([`driver_root`]), and which of its files a container gets for a set of capabilities ([`Driver::mounts`]).
//! Data only: reading the host is [`super::discover`]'s job.

use std::path::{Path, PathBuf};

use super::capabilities::{library_capability, wants};

/// The environment variable naming the host root drun reads the driver under (default `/`).
pub const DRIVER_ROOT_ENV: &str = "DRUN_DRIVER_ROOT";

/// The host root drun reads the driver under: `DRUN_DRIVER_ROOT` (a simulated driver tree in tests), else `/`.
pub fn driver_root() -> PathBuf {
    std::env::var_os(DRIVER_ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Joins a container (host-absolute) path below `root`.
pub fn host_path(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Gpu {
    /// nvidia-smi's index: PCI bus order.
    pub index: usize,
    pub pci: String,
    pub model: String,
    pub uuid: String,
    /// The minor of `/dev/nvidia<minor>`.
    pub minor: u32,
    /// Total memory in MiB, when nvidia-smi told us.
    pub memory_mib: Option<u64>,
}

impl Gpu {
    /// The GPU's device node, `/dev/nvidia<minor>`.
    pub fn node(&self) -> String {
        format!("/dev/nvidia{}", self.minor)
    }
}

/// What the driver exposes on this host.
#[derive(Clone, Debug, Default)]
pub struct Driver {
    pub root: PathBuf,
    pub version: String,
    pub gpus: Vec<Gpu>,
    /// Control nodes present (container paths): nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset, MIG caps.
    pub control_nodes: Vec<String>,
    /// Versioned driver libraries (container paths).
    pub libraries: Vec<String>,
    /// (host path, capability); mounted at `/usr/bin/<name>`
    pub binaries: Vec<(String, &'static str)>,
    /// GSP firmware directory, if any.
    pub firmware: Option<String>,
    /// (container path, capability)
    pub ipc: Vec<(String, &'static str)>,
}

impl Driver {
    /// What to mount for `caps`, as (host path without the driver root, container path): libraries, firmware and
    /// IPC endpoints at their host paths; utilities in `/usr/bin`, where every image's PATH finds them (as the
    /// NVIDIA Container Toolkit puts them), wherever the host keeps them (`/usr/local/nvidia/bin`, say).
    pub fn mounts(&self, caps: &[String]) -> Vec<(String, String)> {
        let same = |p: &String| (p.clone(), p.clone());
        let mut out: Vec<(String, String)> = self
            .libraries
            .iter()
            .filter(|l| {
                let file = l.rsplit('/').next().unwrap_or(l);
                match library_capability(file) {
                    Some(cap) => wants(caps, cap),
                    None => wants(caps, "all"),
                }
            })
            .map(same)
            .collect();
        out.extend(self.binaries.iter().filter(|(_, c)| wants(caps, c)).map(|(p, _)| {
            let name = p.rsplit('/').next().unwrap_or(p);
            (p.clone(), format!("/usr/bin/{name}"))
        }));
        out.extend(self.firmware.iter().map(same));
        out.extend(self.ipc.iter().filter(|(_, c)| wants(caps, c)).map(|(p, _)| same(p)));
        out
    }
}
