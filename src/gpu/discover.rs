//! Discovering the NVIDIA driver on a host (under [`super::driver_root`], so tests can point it at a simulated
//! driver tree): the GPUs in `/proc/driver/nvidia`, the versioned libraries, utilities, firmware, control nodes
//! and IPC endpoints. Reads only; never mounts or writes.
//!
//! Where the driver lives is what the host says, not a list of known places: libcuda is looked for through the
//! ld cache first, then `LD_LIBRARY_PATH`, then the distributions' library directories. The driver's install
//! prefix (the parent of the directory holding libcuda, e.g. `/usr/local/nvidia` for `/usr/local/nvidia/lib64`)
//! is searched for its `bin/` utilities and `firmware/` before `PATH` and the usual directories, so a driver
//! installed under a prefix of its own (as on the GPU machine of hack/gpu-hardware.sh) is found whole.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::capabilities::BINARIES;
use super::driver::{host_path, Driver, Gpu};
use super::{host_ld_cache, GpuError};

const BIN_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"];

const LIB_DIRS: &[&str] = &[
    "/usr/lib64",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu/nvidia/current",
    "/lib64",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib",
];

/// Where the host's programs and libraries are looked for besides the fixed places: the caller's `PATH` and
/// `LD_LIBRARY_PATH` (directories as seen from the driver root).
#[derive(Clone, Debug, Default)]
pub struct HostSearch {
    pub path: Vec<String>,
    pub library_path: Vec<String>,
}

impl HostSearch {
    /// From drun's own environment. (Under `sudo` both are usually reset: the ld cache is what counts then.)
    pub fn from_env() -> HostSearch {
        let dirs = |var: &str| -> Vec<String> {
            std::env::var(var)
                .unwrap_or_default()
                .split(':')
                .filter(|d| d.starts_with('/'))
                .map(|d| d.trim_end_matches('/').to_string())
                .filter(|d| !d.is_empty())
                .collect()
        };
        HostSearch {
            path: dirs("PATH"),
            library_path: dirs("LD_LIBRARY_PATH"),
        }
    }
}

impl HostSearch {
    /// As root, only the directories nobody but root can change: drun mounts what it finds there into every GPU
    /// container (and `drun cdi generate` writes it into a spec), so a `PATH` or `LD_LIBRARY_PATH` inherited by
    /// a root drun (a CI runner, a service, an admin's `module load`) that names a directory another user can
    /// write must not let that user plant an `nvidia-smi` or a library there.
    fn trusted_by_root(&self, root: &Path) -> HostSearch {
        let keep = |dirs: &[String]| -> Vec<String> {
            dirs.iter()
                .filter(|d| {
                    let ok = changeable_by_root_only(&host_path(root, d));
                    if !ok {
                        // Debug, not a warning: a skipped directory is the safe outcome, and an inherited PATH with
                        // such a directory (/usr/local/bin is group-writable on some hosts) would warn on every run.
                        tracing::debug!(dir = %d, "not searching for driver files in a directory others can change");
                    }
                    ok
                })
                .cloned()
                .collect()
        };
        HostSearch {
            path: keep(&self.path),
            library_path: keep(&self.library_path),
        }
    }
}

/// Whether `dir` (resolved) and every directory above it are root's and writable by nobody else (a sticky
/// ancestor such as /tmp is fine: others cannot rename root's entries in it).
fn changeable_by_root_only(dir: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(dir) else {
        return false;
    };
    real.ancestors().enumerate().all(|(depth, p)| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.is_dir() && crate::sys::safe_fs::open_to_others(&m, |owner| owner == 0, depth > 0).is_none()
        })
    })
}

/// IPC endpoints (optional) and the capability that needs them.
const IPC: &[(&str, &str)] = &[
    ("/run/nvidia-persistenced/socket", "utility"),
    ("/run/nvidia-fabricmanager/socket", "compute"),
    ("/tmp/nvidia-mps", "compute"),
];

const CONTROL_NODES: &[&str] = &[
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];

/// The value of `key: value` in a `/proc/driver/nvidia/gpus/*/information` text.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.trim_start().strip_prefix(':')))
        .map(str::trim)
}

/// Reads the driver under `root`; `None` when no NVIDIA driver is loaded there.
pub fn discover(root: &Path) -> Result<Option<Driver>, GpuError> {
    discover_with(root, &HostSearch::from_env())
}

/// [`discover`], with the search directories given.
pub fn discover_with(root: &Path, search: &HostSearch) -> Result<Option<Driver>, GpuError> {
    let trusted;
    // Real root only: rootless, drun runs as uid 0 of its own user namespace, where root's directories belong to
    // nobody, and what it mounts is only the caller's to lose.
    let search = if !crate::sys::userns::is_rootless() {
        trusted = search.trusted_by_root(root);
        &trusted
    } else {
        search
    };
    let Some(gpus) = gpus(root)? else {
        return Ok(None);
    };
    let mut driver = Driver {
        root: root.to_path_buf(),
        gpus,
        ..Default::default()
    };
    driver.version = crate::sys::safe_fs::read_system(host_path(root, "/sys/module/nvidia/version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let lib_dirs = library_dirs(root, &search.library_path, &mut driver.version);
    // The driver's install prefixes: where libcuda's directory is (…/lib64 → …).
    let prefixes: Vec<String> = lib_dirs
        .iter()
        .filter_map(|d| Path::new(d).parent().and_then(Path::to_str).map(str::to_string))
        .filter(|p| p != "/" && p != "/usr" && p != "/usr/lib" && p != "/lib")
        .collect();
    if !driver.version.is_empty() {
        let suffix = format!(".so.{}", driver.version);
        for dir in &lib_dirs {
            let Ok(rd) = std::fs::read_dir(host_path(root, dir)) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(&suffix))
                .collect();
            names.sort();
            driver
                .libraries
                .extend(names.into_iter().map(|n| format!("{}/{n}", dir.trim_end_matches('/'))));
        }
        driver.firmware = firmware_dirs(root, &prefixes)
            .into_iter()
            .map(|d| format!("{d}/nvidia/{}", driver.version))
            .find(|fw| host_path(root, fw).is_dir());
    }
    let bin_dirs: Vec<String> = prefixes
        .iter()
        .map(|p| format!("{p}/bin"))
        .chain(search.path.iter().cloned())
        .chain(BIN_DIRS.iter().map(|d| (*d).to_string()))
        .collect();
    for (bin, cap) in BINARIES {
        if let Some(d) = bin_dirs
            .iter()
            .find(|d| host_path(root, &format!("{d}/{bin}")).is_file())
        {
            driver.binaries.push((format!("{d}/{bin}"), cap));
        }
    }
    for n in CONTROL_NODES {
        if std::fs::symlink_metadata(host_path(root, n)).is_ok() {
            driver.control_nodes.push((*n).to_string());
        }
    }
    if let Ok(rd) = std::fs::read_dir(host_path(root, "/dev/nvidia-caps")) {
        let mut caps: Vec<String> = rd
            .flatten()
            .map(|e| format!("/dev/nvidia-caps/{}", e.file_name().to_string_lossy()))
            .collect();
        caps.sort();
        driver.control_nodes.extend(caps);
    }
    for (p, cap) in IPC {
        if ipc_endpoint_trusted(&host_path(root, p)) {
            driver.ipc.push(((*p).to_string(), cap));
        }
    }
    Ok(Some(driver))
}

/// The GPUs of `/proc/driver/nvidia/gpus` under `root`, numbered as nvidia-smi does; `None` without a driver.
fn gpus(root: &Path) -> Result<Option<Vec<Gpu>>, GpuError> {
    let gpus_dir = host_path(root, "/proc/driver/nvidia/gpus");
    let rd = match std::fs::read_dir(&gpus_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(GpuError::Read { path: gpus_dir, source }),
    };
    let mut gpus = Vec::new();
    for e in rd.flatten() {
        let path = e.path().join("information");
        let text = crate::sys::safe_fs::read_system(&path).map_err(|source| GpuError::Read {
            path: path.clone(),
            source,
        })?;
        let minor = field(&text, "Device Minor")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| GpuError::NoDeviceMinor { path: path.clone() })?;
        gpus.push(Gpu {
            index: 0,
            pci: field(&text, "Bus Location")
                .map(str::to_string)
                .unwrap_or_else(|| e.file_name().to_string_lossy().into_owned()),
            model: field(&text, "Model").unwrap_or("NVIDIA GPU").to_string(),
            uuid: field(&text, "GPU UUID").unwrap_or("").to_string(),
            minor,
            memory_mib: None,
        });
    }
    // nvidia-smi numbers GPUs in PCI bus order.
    gpus.sort_by_key(|g| g.pci.to_ascii_lowercase());
    for (i, g) in gpus.iter_mut().enumerate() {
        g.index = i;
    }
    Ok(Some(gpus))
}

/// Where the kernel loads firmware from (firmware_class's `path` parameter, then its fixed directories), then
/// the driver's install prefixes' `firmware/`.
fn firmware_dirs(root: &Path, prefixes: &[String]) -> Vec<String> {
    let custom = crate::sys::safe_fs::read_system(host_path(root, "/sys/module/firmware_class/parameters/path"))
        .map(|p| p.trim().trim_end_matches('/').to_string())
        .unwrap_or_default();
    [custom]
        .into_iter()
        .filter(|p| p.starts_with('/'))
        .chain(["/lib/firmware/updates", "/lib/firmware"].map(String::from))
        .chain(prefixes.iter().map(|p| format!("{p}/firmware")))
        .collect()
}

/// The directories (container paths) that hold `libcuda.so.<version>`: those the host's ld cache names, then
/// `library_path` (`LD_LIBRARY_PATH`), then the usual ones. `version` is the loaded module's, if known (it wins
/// over whatever libcuda a directory holds, stale after upgrades); else it is set from the first libcuda found.
fn library_dirs(root: &Path, library_path: &[String], version: &mut String) -> Vec<String> {
    let mut lib_dirs: Vec<String> = Vec::new();
    // One directory reached by two names (`/usr/local/nvidia/lib -> lib64`, both in the ld cache and
    // LD_LIBRARY_PATH) is taken once, under the first name seen.
    let mut seen: Vec<std::path::PathBuf> = Vec::new();
    let mut consider = |dir: &str| {
        let Ok(real) = std::fs::canonicalize(host_path(root, dir)) else {
            return;
        };
        if seen.contains(&real) {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&real) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(v) = name.strip_prefix("libcuda.so.") else {
                continue;
            };
            if v.split('.').count() >= 2 && (version.is_empty() || v == version.as_str()) {
                if version.is_empty() {
                    *version = v.to_string();
                }
                if !seen.contains(&real) {
                    lib_dirs.push(dir.to_string());
                    seen.push(real.clone());
                }
            }
        }
    };
    for (name, path) in host_ld_cache::read(root) {
        if name.starts_with("libcuda.so") {
            if let Some(dir) = path.parent().and_then(Path::to_str) {
                consider(dir);
            }
        }
    }
    for d in library_path {
        consider(d);
    }
    for d in LIB_DIRS {
        consider(d);
    }
    lib_dirs
}

/// Whether an IPC endpoint of the driver may be mounted into containers: the real thing, never a symlink (which
/// libcontainer would follow to wherever it points), and a directory (MPS's pipes) writable by its owner alone;
/// a socket is for everyone to connect to. One in a directory others may write to (`/tmp/nvidia-mps`: anyone
/// could plant one there) must also be root's or the caller's; the sockets under `/run` cannot be planted.
/// (Rootless, root's files look like any unmapped user's, so such an endpoint of root's is left out: CUDA then
/// runs without MPS.)
fn ipc_endpoint_trusted(path: &Path) -> bool {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return false;
    };
    let plantable = path
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|p| p.mode() & 0o022 != 0);
    let (root, caller) = if crate::sys::userns::is_rootless() {
        (None, Some(crate::sys::userns::caller_ids().0))
    } else {
        (Some(0), crate::sys::userns::invoking_owner().map(|(u, _)| u))
    };
    let owner_ok = Some(m.uid()) == root || Some(m.uid()) == caller;
    let ok = !m.file_type().is_symlink() && (!m.is_dir() || m.mode() & 0o022 == 0) && (!plantable || owner_ok);
    if !ok {
        tracing::warn!(path = %path.display(), uid = m.uid(), mode = format!("{:o}", m.mode() & 0o7777),
            "not mounting a driver IPC endpoint that is a symlink, someone else's, or writable by others");
    }
    ok
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn planted_ipc_endpoints_are_not_mounted() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        // As /tmp is: every user can plant an entry there.
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        // /tmp/nvidia-mps is in a directory every user can write to: a symlink to /root, a directory others may
        // write to, or one of another user's, is not MPS.
        let link = t.path().join("link");
        std::os::unix::fs::symlink("/root", &link).unwrap();
        assert!(!ipc_endpoint_trusted(&link));
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!ipc_endpoint_trusted(&open));
        if nix::unistd::geteuid().is_root() {
            let real = t.path().join("real");
            std::fs::create_dir(&real).unwrap();
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert!(ipc_endpoint_trusted(&real));
            let theirs = t.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(54321), Some(54321)).unwrap();
            assert!(!ipc_endpoint_trusted(&theirs));
            // Where nobody else can write (the sockets under /run), nothing can be planted: the owner is not asked.
            let private = tempfile::tempdir().unwrap();
            let socket = private.path().join("socket");
            std::fs::write(&socket, "").unwrap();
            std::os::unix::fs::chown(&socket, Some(54321), Some(54321)).unwrap();
            assert!(ipc_endpoint_trusted(&socket));
        }
    }

    #[test]
    fn proc_fields() {
        let t = "Model: \t\t Tesla K80\nIRQ:   33\nGPU UUID: \t GPU-1234\nDevice Minor: \t 3\n";
        assert_eq!(field(t, "Model"), Some("Tesla K80"));
        assert_eq!(field(t, "GPU UUID"), Some("GPU-1234"));
        assert_eq!(field(t, "Device Minor"), Some("3"));
    }

    /// A driver under a prefix of its own (the GPU machine's /usr/local/nvidia), named only by LD_LIBRARY_PATH:
    /// libraries from there, utilities and firmware from beside them; PATH finds utilities elsewhere.
    #[test]
    fn a_driver_prefix_is_followed_from_ld_library_path() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let mk = |p: &str, text: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        mk(
            "proc/driver/nvidia/gpus/0000:00:06.0/information",
            "Model: H\nGPU UUID: GPU-1\nDevice Minor: 0\n",
        );
        mk("sys/module/nvidia/version", "580.1.2\n");
        mk("opt/nv/lib64/libcuda.so.580.1.2", "");
        mk("opt/nv/lib64/libnvidia-ml.so.580.1.2", "");
        mk("opt/nv/bin/nvidia-smi", "");
        mk("opt/nv/firmware/nvidia/580.1.2/gsp.bin", "");
        mk("opt/tools/nvidia-debugdump", "");
        let none = discover_with(r, &HostSearch::default()).unwrap().unwrap();
        assert!(none.libraries.is_empty(), "{:?}", none.libraries);
        // As on the H200 machine: lib -> lib64, and both on the search path.
        std::os::unix::fs::symlink("lib64", r.join("opt/nv/lib")).unwrap();
        let search = HostSearch {
            path: vec!["/opt/tools".into()],
            library_path: vec!["/opt/nv/lib64".into(), "/opt/nv/lib".into()],
        };
        let d = discover_with(r, &search).unwrap().unwrap();
        assert_eq!(
            d.libraries,
            [
                "/opt/nv/lib64/libcuda.so.580.1.2",
                "/opt/nv/lib64/libnvidia-ml.so.580.1.2"
            ]
        );
        let bins: Vec<&str> = d.binaries.iter().map(|(b, _)| b.as_str()).collect();
        assert!(bins.contains(&"/opt/nv/bin/nvidia-smi"), "{bins:?}");
        assert!(bins.contains(&"/opt/tools/nvidia-debugdump"), "{bins:?}");
        assert_eq!(d.firmware.as_deref(), Some("/opt/nv/firmware/nvidia/580.1.2"));
    }

    /// As root, a PATH or LD_LIBRARY_PATH directory another user can write is not searched.
    #[test]
    fn as_root_only_directories_nobody_else_can_change_are_searched() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["opt/ok/lib64", "opt/open/lib64", "opt/theirs/lib64"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::set_permissions(r.join("opt/open"), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::chown(r.join("opt/theirs/lib64"), Some(54321), None).unwrap();
        let search = HostSearch {
            path: vec!["/opt/open/lib64".into()],
            library_path: vec![
                "/opt/ok/lib64".into(),
                "/opt/open/lib64".into(),
                "/opt/theirs/lib64".into(),
            ],
        };
        let kept = search.trusted_by_root(r);
        assert_eq!(kept.library_path, ["/opt/ok/lib64"]);
        assert!(kept.path.is_empty());
    }

    #[test]
    fn no_driver_is_none() {
        let t = tempfile::tempdir().unwrap();
        assert!(discover(t.path()).unwrap().is_none());
    }
}
