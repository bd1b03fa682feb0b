//! NVIDIA GPUs, CDI-style. [`discover`] reads what the driver exposes (under a configurable host root, so tests
//! can point it at a simulated driver tree); [`cdi`] turns that into a CDI spec, or uses the CDI specs a host
//! already has; [`select`] picks GPUs for a request; [`ldconfig`] refreshes the container's ld cache.

pub mod cdi;
pub mod ldcache;
pub mod ldconfig;
pub mod select;

use std::path::{Path, PathBuf};

/// The environment variable naming the host root drun reads the driver under (default `/`).
pub const DRIVER_ROOT_ENV: &str = "DRUN_DRIVER_ROOT";

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
    pub fn node(&self) -> String {
        format!("/dev/nvidia{}", self.minor)
    }
}

/// Library groups of `NVIDIA_DRIVER_CAPABILITIES` (libnvidia-container's lists).
pub const CAPABILITY_LIBS: &[(&str, &[&str])] = &[
    ("utility", &["libnvidia-ml", "libnvidia-cfg", "libnvidia-nscq"]),
    (
        "compute",
        &[
            "libcuda",
            "libcudadebugger",
            "libnvidia-opencl",
            "libnvidia-gpucomp",
            "libnvidia-ptxjitcompiler",
            "libnvidia-fatbinaryloader",
            "libnvidia-allocator",
            "libnvidia-compiler",
            "libnvidia-pkcs11",
            "libnvidia-pkcs11-openssl3",
            "libnvidia-nvvm",
        ],
    ),
    (
        "video",
        &[
            "libvdpau_nvidia",
            "libnvidia-encode",
            "libnvidia-opticalflow",
            "libnvcuvid",
        ],
    ),
    (
        "graphics",
        &[
            "libnvidia-eglcore",
            "libnvidia-glcore",
            "libnvidia-tls",
            "libnvidia-glsi",
            "libnvidia-fbc",
            "libnvidia-ifr",
            "libnvidia-rtcore",
            "libnvoptix",
            "libGLX_nvidia",
            "libEGL_nvidia",
            "libGLESv2_nvidia",
            "libGLESv1_CM_nvidia",
            "libnvidia-glvkspirv",
            "libnvidia-cbl",
        ],
    ),
    ("ngx", &["libnvidia-ngx"]),
];

/// Utility binaries and the capability that brings them.
pub const BINARIES: &[(&str, &str)] = &[
    ("nvidia-smi", "utility"),
    ("nvidia-debugdump", "utility"),
    ("nvidia-persistenced", "utility"),
    ("nvidia-cuda-mps-control", "compute"),
    ("nvidia-cuda-mps-server", "compute"),
];

const BIN_DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/sbin",
    "/bin",
    "/sbin",
    "/usr/local/bin",
    "/usr/local/nvidia/bin",
];

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
    "/usr/local/nvidia/lib64",
];

/// IPC endpoints (optional) and the capability that needs them.
const IPC: &[(&str, &str)] = &[
    ("/run/nvidia-persistenced/socket", "utility"),
    ("/run/nvidia-fabricmanager/socket", "compute"),
    ("/tmp/nvidia-mps", "compute"),
];

/// The capability group of a library file name, if it is a known driver library.
pub fn library_capability(file: &str) -> Option<&'static str> {
    let stem = file.split(".so").next()?;
    CAPABILITY_LIBS
        .iter()
        .find(|(_, libs)| libs.contains(&stem))
        .map(|(cap, _)| *cap)
}

/// The capabilities named by `NVIDIA_DRIVER_CAPABILITIES` (unset or empty: compute and utility).
pub fn capabilities(value: Option<&str>) -> Vec<String> {
    let v = value.map(str::trim).unwrap_or("");
    if v.is_empty() {
        return vec!["compute".into(), "utility".into()];
    }
    let caps: Vec<String> = v
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    if caps.iter().any(|c| c == "all") {
        return vec!["all".into()];
    }
    caps
}

fn wants(caps: &[String], cap: &str) -> bool {
    caps.iter().any(|c| c == "all" || c == cap)
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

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{0}")]
    Select(String),
    #[error("CDI: {0}")]
    Cdi(String),
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("ldconfig in the container's root file system failed: {0}")]
    Ldconfig(String),
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.trim_start().strip_prefix(':')))
        .map(str::trim)
}

/// Reads the driver under `root`; `None` when no NVIDIA driver is loaded there.
pub fn discover(root: &Path) -> Result<Option<Driver>, GpuError> {
    let gpus_dir = host_path(root, "/proc/driver/nvidia/gpus");
    let rd = match std::fs::read_dir(&gpus_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(GpuError::Read { path: gpus_dir, source }),
    };
    let mut gpus = Vec::new();
    for e in rd.flatten() {
        let path = e.path().join("information");
        let text = crate::safe_fs::read_system(&path).map_err(|source| GpuError::Read {
            path: path.clone(),
            source,
        })?;
        let minor = field(&text, "Device Minor")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| GpuError::Select(format!("{}: no `Device Minor`", path.display())))?;
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

    let mut driver = Driver {
        root: root.to_path_buf(),
        gpus,
        ..Default::default()
    };
    driver.version = crate::safe_fs::read_system(host_path(root, "/sys/module/nvidia/version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();

    // Libraries: every `*.so.<version>` in the directories holding libcuda.so.<version>.
    let mut lib_dirs: Vec<String> = Vec::new();
    let consider = |dir: &str, lib_dirs: &mut Vec<String>, version: &mut String| {
        let Ok(rd) = std::fs::read_dir(host_path(root, dir)) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(v) = name.strip_prefix("libcuda.so.") else {
                continue;
            };
            // A loaded module's version wins over whatever libcuda a directory holds (stale after upgrades).
            if v.split('.').count() >= 2 && (version.is_empty() || v == version.as_str()) {
                if version.is_empty() {
                    *version = v.to_string();
                }
                if !lib_dirs.iter().any(|d| d == dir) {
                    lib_dirs.push(dir.to_string());
                }
            }
        }
    };
    for d in LIB_DIRS {
        consider(d, &mut lib_dirs, &mut driver.version);
    }
    for (name, path) in ldcache::read(root) {
        if name.starts_with("libcuda.so") {
            if let Some(dir) = path.parent().and_then(Path::to_str) {
                consider(dir, &mut lib_dirs, &mut driver.version);
            }
        }
    }
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
        let fw = format!("/lib/firmware/nvidia/{}", driver.version);
        if host_path(root, &fw).is_dir() {
            driver.firmware = Some(fw);
        }
    }
    for (bin, cap) in BINARIES {
        if let Some(d) = BIN_DIRS
            .iter()
            .find(|d| host_path(root, &format!("{d}/{bin}")).is_file())
        {
            driver.binaries.push((format!("{d}/{bin}"), cap));
        }
    }
    for n in [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-modeset",
    ] {
        if std::fs::symlink_metadata(host_path(root, n)).is_ok() {
            driver.control_nodes.push(n.to_string());
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
            driver.ipc.push((p.to_string(), cap));
        }
    }
    Ok(Some(driver))
}

/// Whether an IPC endpoint of the driver may be mounted into containers: the real thing, never a symlink (which
/// libcontainer would follow to wherever it points), and a directory (MPS's pipes) writable by its owner alone;
/// a socket is for everyone to connect to. One in a directory others may write to (`/tmp/nvidia-mps`: anyone
/// could plant one there) must also be root's or the caller's; the sockets under `/run` cannot be planted.
/// (Rootless, root's files look like any unmapped user's, so such an endpoint of root's is left out: CUDA then
/// runs without MPS.)
fn ipc_endpoint_trusted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
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

/// Fills in memory sizes from `nvidia-smi` (run as a separate process). Returns false when it could not answer.
pub fn query_memory(driver: &mut Driver) -> bool {
    let Some((smi, _)) = driver.binaries.iter().find(|(b, _)| b.ends_with("/nvidia-smi")) else {
        return false;
    };
    let out = std::process::Command::new(host_path(&driver.root, smi))
        .args([
            "--query-gpu=index,uuid,name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else { return false };
    if !out.status.success() {
        return false;
    };
    let mut any = false;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if let [_, uuid, _, mem, ..] = f.as_slice() {
            if let (Some(g), Ok(m)) = (driver.gpus.iter_mut().find(|g| g.uuid == *uuid), mem.parse::<u64>()) {
                g.memory_mib = Some(m);
                any = true;
            }
        }
    }
    any
}

/// What a run injects: CDI device names from the host's specs and from the spec generated by discovery.
pub struct Injection {
    host: Option<(cdi::Specs, Vec<String>)>,
    generated: Option<(cdi::Specs, Vec<String>)>,
    /// The GPUs chosen for a `--gpus`/`resources.gpu` request (empty for `--device` alone).
    pub gpus: Vec<Gpu>,
    /// "CDI" or "discovery".
    pub source: &'static str,
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Resolves a run's GPU request and `--device` names against the host (`env` is the container's environment,
/// for NVIDIA_DRIVER_CAPABILITIES; `work` a private directory for a generated spec).
pub fn prepare(
    req: Option<&select::GpuRequest>,
    devices: &[String],
    cdi_dirs: &[PathBuf],
    env: &[String],
    work: &Path,
) -> Result<Option<Injection>, GpuError> {
    let req = req.filter(|r| !r.is_empty());
    if req.is_none() && devices.is_empty() {
        return Ok(None);
    }
    let caps = capabilities(env_value(env, "NVIDIA_DRIVER_CAPABILITIES"));
    let dirs = cdi::spec_dirs(cdi_dirs);
    let mut host = cdi::Specs::load(&dirs);
    let host_names = host.devices();
    let mut host_pick: Vec<String> = Vec::new();
    let mut gen_pick: Vec<String> = Vec::new();
    let mut gpus = Vec::new();
    let mut driver = None;
    let mut source = "CDI";
    if let Some(req) = req {
        let root = driver_root();
        let found = discover(&root)?;
        match found {
            Some(mut d) if !d.gpus.is_empty() => {
                if req.memory_mib.is_some() {
                    query_memory(&mut d);
                }
                let reasons = select::usable(&root, &d.gpus);
                gpus = match select::choose(req, &d.gpus, &reasons) {
                    Ok(g) => g,
                    Err(_) => {
                        // The error lists every GPU: with its memory, when nvidia-smi can tell.
                        query_memory(&mut d);
                        let reasons = select::usable(&root, &d.gpus);
                        return Err(select::choose(req, &d.gpus, &reasons).err().unwrap_or_else(|| {
                            GpuError::Select("the GPUs changed while drun chose among them; try again".into())
                        }));
                    }
                };
                let names: Vec<Option<String>> = gpus.iter().map(|g| host.gpu_name(g)).collect();
                if names.iter().all(Option::is_some) {
                    host_pick.extend(names.into_iter().flatten());
                } else {
                    source = "discovery";
                    gen_pick.extend(gpus.iter().map(|g| format!("{}={}", cdi::NVIDIA_KIND, g.index)));
                }
                if !d.control_nodes.iter().any(|n| n == "/dev/nvidia-uvm") {
                    eprintln!(
                        "warning: {} is missing, so CUDA will fail to initialise; load it with `nvidia-modprobe -u -c=0` (as root)",
                        host_path(&root, "/dev/nvidia-uvm").display()
                    );
                }
                driver = Some(d);
            }
            _ => {
                // No driver to read here: a host whose GPUs are described only by CDI specs.
                let cdi_gpus: Vec<String> = host_names
                    .iter()
                    .filter(|n| n.starts_with(&format!("{}=", cdi::NVIDIA_KIND)) && !n.ends_with("=all"))
                    .cloned()
                    .collect();
                if cdi_gpus.is_empty() {
                    return Err(GpuError::Select(format!(
                        "no NVIDIA GPU found: no driver under {} and no {} device in the CDI specs of {}",
                        host_path(&root, "/proc/driver/nvidia/gpus").display(),
                        cdi::NVIDIA_KIND,
                        dirs.iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                if req.name.is_some() || req.memory_mib.is_some() {
                    return Err(GpuError::Select(
                        "selecting GPUs by name or memory needs the driver's information, which this host does not expose; request a count or device names".into(),
                    ));
                }
                match &req.selector {
                    select::Selector::All => host_pick = cdi_gpus,
                    select::Selector::Count(n) => {
                        if cdi_gpus.len() < *n as usize {
                            return Err(GpuError::Select(format!(
                                "cannot assign {n} GPU(s): the CDI specs describe {}: {}",
                                cdi_gpus.len(),
                                cdi_gpus.join(", ")
                            )));
                        }
                        host_pick = cdi_gpus.into_iter().take(*n as usize).collect();
                    }
                    select::Selector::Ids(ids) => {
                        host_pick = ids.iter().map(|i| format!("{}={i}", cdi::NVIDIA_KIND)).collect();
                    }
                }
            }
        }
    }
    for d in devices {
        if host.has(d) {
            host_pick.push(d.clone());
        } else if d.starts_with(&format!("{}=", cdi::NVIDIA_KIND)) {
            if driver.is_none() {
                driver = discover(&driver_root())?;
            }
            gen_pick.push(d.clone());
            source = "discovery";
        } else {
            return Err(GpuError::Cdi(format!(
                "unresolvable CDI device {d}; known: {}",
                if host_names.is_empty() {
                    "none".to_string()
                } else {
                    host_names.join(", ")
                }
            )));
        }
    }
    let generated = if gen_pick.is_empty() {
        None
    } else {
        let d = driver
            .ok_or_else(|| GpuError::Select(format!("no NVIDIA driver found under {}", driver_root().display())))?;
        Some((cdi::load_generated(work, &cdi::generate(&d, &caps))?, gen_pick))
    };
    Ok(Some(Injection {
        host: (!host_pick.is_empty()).then_some((host, host_pick)),
        generated,
        gpus,
        source,
    }))
}

impl Injection {
    /// Applies the edits to the spec, sets the NVIDIA variables and refreshes the ld cache in `rootfs`.
    pub fn apply(mut self, spec: &mut serde_json::Value, rootfs: &Path) -> Result<(), GpuError> {
        let before: Vec<serde_json::Value> = spec["mounts"].as_array().cloned().unwrap_or_default();
        for (specs, names) in [self.host.as_mut(), self.generated.as_mut()].into_iter().flatten() {
            specs.inject(spec, names)?;
        }
        let env = spec["process"]["env"]
            .as_array_mut()
            .expect("the spec has an environment");
        let mut set = |k: &str, v: String| {
            env.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&format!("{k}="))));
            env.push(serde_json::Value::String(format!("{k}={v}")));
        };
        if !self.gpus.is_empty() {
            set(
                "NVIDIA_VISIBLE_DEVICES",
                self.gpus.iter().map(|g| g.uuid.clone()).collect::<Vec<_>>().join(","),
            );
            set(
                "CUDA_VISIBLE_DEVICES",
                (0..self.gpus.len())
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        let has_caps = env
            .iter()
            .any(|e| e.as_str().is_some_and(|s| s.starts_with("NVIDIA_DRIVER_CAPABILITIES=")));
        if !has_caps {
            env.push(serde_json::Value::String(
                "NVIDIA_DRIVER_CAPABILITIES=compute,utility".into(),
            ));
        }
        let libs: Vec<(PathBuf, String)> = spec["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| !before.contains(m))
            .filter_map(|m| {
                let dst = m["destination"].as_str()?;
                let src = m["source"].as_str()?;
                let file = dst.rsplit('/').next()?;
                (file.contains(".so") && Path::new(src).is_file()).then(|| (PathBuf::from(src), dst.to_string()))
            })
            .collect();
        tracing::debug!(source = self.source, libraries = libs.len(), "GPU edits applied");
        ldconfig::refresh(rootfs, &libs)
    }
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
    fn capability_groups() {
        assert_eq!(library_capability("libcuda.so.550.54.15"), Some("compute"));
        assert_eq!(library_capability("libnvidia-ml.so.550.54.15"), Some("utility"));
        assert_eq!(library_capability("libnvidia-encode.so.1"), Some("video"));
        assert_eq!(library_capability("libsomething.so.1"), None);
        assert_eq!(capabilities(None), ["compute", "utility"]);
        assert_eq!(capabilities(Some("video, compute")), ["video", "compute"]);
        assert_eq!(capabilities(Some("compute,all")), ["all"]);
    }

    #[test]
    fn proc_fields() {
        let t = "Model: \t\t Tesla K80\nIRQ:   33\nGPU UUID: \t GPU-1234\nDevice Minor: \t 3\n";
        assert_eq!(field(t, "Model"), Some("Tesla K80"));
        assert_eq!(field(t, "GPU UUID"), Some("GPU-1234"));
        assert_eq!(field(t, "Device Minor"), Some("3"));
    }
}
