//! CDI: specs a host has (`/etc/cdi`, `/var/run/cdi`, or `--cdi-spec-dir` / `DRUN_CDI_SPEC_DIRS`) are parsed,
//! validated and applied with the `container-device-interface` crate; without one, [`generate`] builds the
//! equivalent spec from discovery (also what `drun cdi generate` writes).
//!
//! Device nodes the edits add are bind-mounted from the host instead of created with mknod (the same path then
//! works rootless); their device-cgroup allow rules stay. Edits only the OCI spec it is given; writes nothing but
//! the generated spec, in a private directory of the run.

use std::path::{Path, PathBuf};

use container_device_interface::cache::{with_auto_refresh, Cache};
use container_device_interface::spec_dirs::with_spec_dirs;
use serde_json::{json, Value};

use super::driver::{host_path, Driver, Gpu};

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// Device names no spec describes; `known` lists those that are.
    #[error("unresolvable CDI device {names}; known: {known}")]
    Unresolvable { names: String, known: String },
    #[error("cannot convert the container's spec for CDI")]
    SpecConversion(#[source] serde_json::Error),
    #[error("cannot inject the CDI devices {names}")]
    Inject {
        names: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot create the directory {path:?} for the CDI spec generated from discovery")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the CDI spec generated from discovery to {path:?}")]
    WriteSpec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CDI spec generated from discovery ({path:?}): it did not validate")]
    GeneratedInvalid { path: PathBuf },
}

impl CdiError {
    /// `names` are not among the `known` device names.
    pub fn unresolvable(names: &[&str], known: &[String]) -> CdiError {
        CdiError::Unresolvable {
            names: names.join(", "),
            known: if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            },
        }
    }
}

pub const NVIDIA_KIND: &str = "nvidia.com/gpu";
pub const DEFAULT_SPEC_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];
pub const SPEC_DIRS_ENV: &str = "DRUN_CDI_SPEC_DIRS";

/// The CDI spec directories: `--cdi-spec-dir` flags, else `DRUN_CDI_SPEC_DIRS` (colon-separated), else the
/// standard ones. Later directories win, as the CDI spec says.
pub fn spec_dirs(cli: &[PathBuf]) -> Vec<PathBuf> {
    if !cli.is_empty() {
        return cli.to_vec();
    }
    if let Ok(v) = std::env::var(SPEC_DIRS_ENV) {
        return v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect();
    }
    DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect()
}

/// A loaded set of CDI specs.
pub struct Specs {
    cache: Cache,
}

impl Specs {
    pub fn load(dirs: &[PathBuf]) -> Specs {
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        let refs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let mut cache = Cache::default();
        cache.configure(vec![with_spec_dirs(&refs), with_auto_refresh(false)]);
        if let Err(e) = cache.refresh() {
            tracing::warn!(error = %e, "cannot read some CDI specs");
        }
        Specs { cache }
    }

    /// Fully-qualified names of every device (`vendor/class=name`), sorted.
    pub fn devices(&mut self) -> Vec<String> {
        let mut d = self.cache.list_devices();
        d.sort();
        d
    }

    pub fn has(&mut self, name: &str) -> bool {
        self.cache.get_device(name).is_some()
    }

    /// The name these specs give `gpu` (`nvidia.com/gpu=<uuid>`, else `=<index>`), if any.
    pub fn gpu_name(&mut self, gpu: &Gpu) -> Option<String> {
        [gpu.uuid.clone(), gpu.index.to_string()]
            .into_iter()
            .map(|n| format!("{NVIDIA_KIND}={n}"))
            .find(|n| self.has(n))
    }

    /// Applies the edits of `names` (all resolvable, or nothing is edited) to the spec JSON.
    /// The files the edits of `names` (and their specs) mount: (container path, host path). Unknown names give
    /// nothing here; [`Self::inject`] reports them.
    pub fn mounted_files(&mut self, names: &[String]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for n in names {
            let Some(dev) = self.cache.get_device(n) else { continue };
            let mut edits = vec![serde_json::to_value(&dev.edits().container_edits).unwrap_or_default()];
            if let Some(e) = dev.get_spec().edits() {
                edits.push(serde_json::to_value(&e.container_edits).unwrap_or_default());
            }
            for e in edits {
                for m in e["mounts"].as_array().into_iter().flatten() {
                    if let (Some(c), Some(h)) = (m["containerPath"].as_str(), m["hostPath"].as_str()) {
                        if !out.iter().any(|(have, _)| have == c) {
                            out.push((c.to_string(), h.to_string()));
                        }
                    }
                }
            }
        }
        out
    }

    pub fn inject(&mut self, spec: &mut Value, names: &[String]) -> Result<(), CdiError> {
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| self.cache.get_device(n).is_none())
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(CdiError::unresolvable(&unknown, &self.devices()));
        }
        // Device nodes of the spec-level and device-level edits: container path → host path.
        let mut nodes: Vec<(String, String)> = Vec::new();
        for n in names {
            let dev = self.cache.get_device(n).expect("checked above");
            let mut edits = vec![serde_json::to_value(&dev.edits().container_edits).unwrap_or_default()];
            if let Some(e) = dev.get_spec().edits() {
                edits.push(serde_json::to_value(&e.container_edits).unwrap_or_default());
            }
            for e in edits {
                for d in e["deviceNodes"].as_array().into_iter().flatten() {
                    if let Some(p) = d["path"].as_str() {
                        let host = d["hostPath"].as_str().unwrap_or(p).to_string();
                        if !nodes.iter().any(|(c, _)| c == p) {
                            nodes.push((p.to_string(), host));
                        }
                    }
                }
            }
        }
        // Rootless specs carry no cgroup resources (device rules need an eBPF filter only real root may load;
        // the user namespace already keeps the container from other devices): none are added for GPUs either.
        let had_resources = spec["linux"]["resources"].is_object();
        let mut oci: oci_spec::runtime::Spec =
            serde_json::from_value(spec.clone()).map_err(CdiError::SpecConversion)?;
        self.cache
            .inject_devices(Some(&mut oci), names.to_vec())
            .map_err(|source| CdiError::Inject {
                names: names.join(", "),
                source,
            })?;
        let mut out = serde_json::to_value(&oci).map_err(CdiError::SpecConversion)?;
        if let Some(devs) = out["linux"]["devices"].as_array_mut() {
            devs.retain(|d| !nodes.iter().any(|(c, _)| d["path"].as_str() == Some(c)));
        }
        if !had_resources {
            if let Some(linux) = out["linux"].as_object_mut() {
                linux.remove("resources");
            }
        }
        let mounts = out["mounts"].as_array_mut().expect("the spec has mounts");
        for (ctr, host) in &nodes {
            mounts.push(
                json!({"destination": ctr, "type": "bind", "source": host, "options": ["bind", "rprivate", "nosuid"]}),
            );
        }
        *spec = out;
        Ok(())
    }
}

/// A CDI spec (kind `nvidia.com/gpu`) for the discovered driver: one device per GPU by index and by UUID, and
/// `all`; control nodes, libraries of `caps`, binaries, firmware and IPC sockets as spec-level edits. Host paths
/// carry the driver root; container paths do not.
pub fn generate(driver: &Driver, caps: &[String]) -> Value {
    let root = &driver.root;
    let node = |p: &str| json!({"path": p, "hostPath": host_path(root, p)});
    let mut devices = Vec::new();
    for g in &driver.gpus {
        let edits = json!({"deviceNodes": [node(&g.node())]});
        devices.push(json!({"name": g.index.to_string(), "containerEdits": edits}));
        if !g.uuid.is_empty() {
            devices.push(json!({"name": g.uuid, "containerEdits": edits}));
        }
    }
    if !driver.gpus.is_empty() {
        let all: Vec<Value> = driver.gpus.iter().map(|g| node(&g.node())).collect();
        devices.push(json!({"name": "all", "containerEdits": {"deviceNodes": all}}));
    }
    let mounts: Vec<Value> = driver
        .mounts(caps)
        .iter()
        .map(|(host, container)| {
            json!({"hostPath": host_path(root, host), "containerPath": container,
                   "options": ["ro", "nosuid", "nodev", "rbind", "rprivate"]})
        })
        .collect();
    let nodes: Vec<Value> = driver.control_nodes.iter().map(|p| node(p)).collect();
    json!({
        "cdiVersion": "0.6.0",
        "kind": NVIDIA_KIND,
        "devices": devices,
        "containerEdits": {
            "env": [format!("NVIDIA_VISIBLE_DEVICES=void")],
            "deviceNodes": nodes,
            "mounts": mounts,
        },
    })
}

/// Writes `spec` as JSON to `dir/drun-nvidia.json` and loads it.
pub fn load_generated(dir: &Path, spec: &Value) -> Result<Specs, CdiError> {
    crate::sys::safe_fs::create_dir_mode(dir, 0o700).map_err(|source| CdiError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let file = dir.join("drun-nvidia.json");
    crate::sys::safe_fs::write_replace(&file, &serde_json::to_vec_pretty(spec).expect("serialises"), 0o600).map_err(
        |source| CdiError::WriteSpec {
            path: file.clone(),
            source,
        },
    )?;
    let mut specs = Specs::load(&[dir.to_path_buf()]);
    if specs.devices().is_empty() {
        return Err(CdiError::GeneratedInvalid { path: file });
    }
    Ok(specs)
}
