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
    /// (container path, capability)
    pub binaries: Vec<(String, &'static str)>,
    /// GSP firmware directory, if any.
    pub firmware: Option<String>,
    /// (container path, capability)
    pub ipc: Vec<(String, &'static str)>,
}

impl Driver {
    /// Host paths of everything to mount for `caps`: libraries, binaries, firmware and IPC endpoints.
    pub fn mounts(&self, caps: &[String]) -> Vec<String> {
        let mut out: Vec<String> = self
            .libraries
            .iter()
            .filter(|l| {
                let file = l.rsplit('/').next().unwrap_or(l);
                match library_capability(file) {
                    Some(cap) => wants(caps, cap),
                    None => wants(caps, "all"),
                }
            })
            .cloned()
            .collect();
        out.extend(
            self.binaries
                .iter()
                .filter(|(_, c)| wants(caps, c))
                .map(|(p, _)| p.clone()),
        );
        out.extend(self.firmware.iter().cloned());
        out.extend(self.ipc.iter().filter(|(_, c)| wants(caps, c)).map(|(p, _)| p.clone()));
        out
    }
}
