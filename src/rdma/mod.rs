//! RDMA/InfiniBand (`--rdma`): finds the host's verbs, connection-manager and MAD device nodes under
//! `/dev/infiniband`, which the run path gives the container as host devices (bind mount and device-cgroup rule,
//! as `--device` does), and the RLIMIT_MEMLOCK the container gets (RDMA pins memory it registers).
//!
//! Reads under `DRUN_RDMA_ROOT` (a simulated tree in tests), else `/`. Nothing is mounted from sysfs: the
//! container's own sysfs shows the host's `/sys/class/infiniband` (RDMA devices are shared by all network
//! namespaces unless the host has set the RDMA subsystem exclusive). An image without its own verbs library gets
//! the host's ([`libs`]). Below the run path: starts nothing.

pub mod libs;

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};

pub const RDMA_ROOT_ENV: &str = "DRUN_RDMA_ROOT";

#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    #[error(
        "cannot use RDMA: no verbs device (uverbs*) in {dir:?}; is the adapter's driver loaded (e.g. mlx5_ib) and \
         rdma-core's ib_uverbs module?"
    )]
    NoDevice { dir: PathBuf },
    #[error("cannot read the RDMA devices in {dir:?}")]
    Read {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One character device node of `/dev/infiniband`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdmaNode {
    /// The host path (below the RDMA root).
    pub host: PathBuf,
    /// Its path in the container: `/dev/infiniband/NAME`.
    pub container: String,
    pub major: u64,
    pub minor: u64,
}

/// The host root RDMA devices are read under.
pub fn rdma_root() -> PathBuf {
    std::env::var_os(RDMA_ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The node names a container needs: verbs (`uverbs0`) and the connection manager (`rdma_cm`), all that verbs,
/// rdma_cm, UCX and NCCL use. Not the management-datagram nodes (`umad*`: raw MADs can reconfigure an unprotected
/// subnet for every tenant; hosts keep them root-only, and `--device /dev/infiniband/umad0` gives one on
/// purpose) nor `issm*`, the subnet manager's.
fn wanted(name: &str) -> bool {
    name.starts_with("uverbs") || name == "rdma_cm"
}

/// The RDMA device nodes under [`rdma_root`], sorted by name; at least one verbs device, or an error.
pub fn discover() -> Result<Vec<RdmaNode>, RdmaError> {
    discover_under(&rdma_root())
}

fn discover_under(root: &Path) -> Result<Vec<RdmaNode>, RdmaError> {
    let dir = root.join("dev/infiniband");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RdmaError::NoDevice { dir }),
        Err(source) => return Err(RdmaError::Read { dir, source }),
    };
    let mut nodes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| RdmaError::Read {
            dir: dir.clone(),
            source,
        })?;
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            continue;
        };
        // Not followed: the nodes there are nodes, and a symlink there is nothing drun needs.
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !wanted(&name) || !meta.file_type().is_char_device() {
            continue;
        }
        nodes.push(RdmaNode {
            host: entry.path(),
            container: format!("/dev/infiniband/{name}"),
            major: nix::sys::stat::major(meta.rdev()),
            minor: nix::sys::stat::minor(meta.rdev()),
        });
    }
    nodes.sort_by(|a, b| a.container.cmp(&b.container));
    if !nodes.iter().any(|n| n.container.starts_with("/dev/infiniband/uverbs")) {
        return Err(RdmaError::NoDevice { dir });
    }
    Ok(nodes)
}

/// RLIMIT_MEMLOCK for an RDMA run, as (soft, hard): unlimited where drun may raise it (its hard limit is already
/// unlimited, or it is real root with CAP_SYS_RESOURCE); else drun's own hard limit, with a warning, since no one
/// can raise a hard limit without that capability (rootless, the caller's hard limit is the ceiling).
pub fn memlock() -> (u64, u64) {
    let hard = getrlimit(Resource::RLIMIT_MEMLOCK).map_or(RLIM_INFINITY, |(_, hard)| hard);
    if hard == RLIM_INFINITY || (!crate::sys::userns::is_rootless() && has_sys_resource()) {
        return (RLIM_INFINITY, RLIM_INFINITY);
    }
    tracing::warn!(
        "RLIMIT_MEMLOCK for --rdma is capped at the hard limit of {} KiB, not unlimited: raise it for your \
         session (limits.conf's `memlock`, or Slurm's PropagateResourceLimits) if registering memory fails",
        hard / 1024
    );
    (hard, hard)
}

/// Whether drun's effective capabilities hold CAP_SYS_RESOURCE (bit 24).
fn has_sys_resource() -> bool {
    crate::sys::safe_fs::read_system("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string()))
        })
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn a_tree_without_verbs_devices_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let e = discover_under(t.path()).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "cannot use RDMA: no verbs device (uverbs*) in {:?}",
                t.path().join("dev/infiniband")
            )),
            "{e}"
        );
        // Files that are not device nodes do not count (making real ones needs root: the integration tests do).
        std::fs::create_dir_all(t.path().join("dev/infiniband")).unwrap();
        std::fs::write(t.path().join("dev/infiniband/uverbs0"), "").unwrap();
        assert!(matches!(discover_under(t.path()), Err(RdmaError::NoDevice { .. })));
    }

    #[test]
    fn only_the_nodes_a_container_needs() {
        for name in ["uverbs0", "uverbs12", "rdma_cm"] {
            assert!(wanted(name), "{name}");
        }
        for name in ["umad1", "issm0", "rdma_cm2", "README"] {
            assert!(!wanted(name), "{name}");
        }
    }
}
