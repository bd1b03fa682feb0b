//! Which GPUs a request gets: `--gpus all|N|device=…`, or a workflow's `resources.gpu {count, name, memory}`,
//! among the GPUs this process may use (a Slurm job's, or those a host's NVIDIA_/CUDA_VISIBLE_DEVICES name).
//! Decides only: it never opens a GPU for use (only probes its node for the job's device cgroup).

use std::fmt::Write as _;
use std::path::Path;

use super::driver::{host_path, Gpu};

/// No choice of GPUs satisfies a request; the message lists every GPU and why it was not chosen.
#[derive(Debug, thiserror::Error)]
#[error("cannot assign {wanted}{filters}; GPUs on this host:{listing}")]
pub struct SelectError {
    wanted: String,
    filters: String,
    listing: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Selector {
    All,
    Count(u32),
    /// Indices or UUIDs (`GPU-…`).
    Ids(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuRequest {
    pub selector: Selector,
    /// A case-insensitive substring of the model name ("A100").
    pub name: Option<String>,
    /// Minimum memory in MiB.
    pub memory_mib: Option<u64>,
}

impl GpuRequest {
    /// Whether it asks for no GPU at all (`--gpus 0`).
    pub fn is_empty(&self) -> bool {
        self.selector == Selector::Count(0)
    }
}

/// A GPU in one line, for the list of why each was not chosen.
fn describe(g: &Gpu) -> String {
    let mem = g.memory_mib.map(|m| format!(", {m} MiB")).unwrap_or_default();
    format!("{} {} ({}{mem})", g.index, g.model, g.uuid)
}

/// The GPUs this process may use, each with the reason it may not (None = usable).
pub fn usable(root: &Path, gpus: &[Gpu]) -> Vec<Option<String>> {
    let in_slurm = std::env::var_os("SLURM_JOB_ID").is_some();
    let mut reasons: Vec<Option<String>> = vec![None; gpus.len()];
    if in_slurm {
        // The job's device cgroup is the ground truth: EPERM = not this job's GPU; success or ENXIO (a node with
        // no driver behind it) = usable. CUDA_VISIBLE_DEVICES is renumbered per step and cannot say which.
        let mut constrained = false;
        for (g, r) in gpus.iter().zip(reasons.iter_mut()) {
            let node = host_path(root, &g.node());
            match nix::fcntl::open(
                &node,
                nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            ) {
                Err(nix::errno::Errno::EPERM) | Err(nix::errno::Errno::EACCES) => {
                    constrained = true;
                    *r = Some(format!(
                        "not allocated to Slurm job {} (its device cgroup denies {})",
                        std::env::var("SLURM_JOB_ID").unwrap_or_default(),
                        g.node()
                    ));
                }
                _ => {}
            }
        }
        // Without device constraints, Slurm's own list holds host indices.
        if !constrained {
            if let Some(list) = std::env::var("SLURM_STEP_GPUS")
                .ok()
                .or_else(|| std::env::var("SLURM_JOB_GPUS").ok())
            {
                let ids: Vec<&str> = list.split(',').map(str::trim).collect();
                for (g, r) in gpus.iter().zip(reasons.iter_mut()) {
                    if !ids.contains(&g.index.to_string().as_str()) {
                        *r = Some(format!("not in SLURM_STEP_GPUS={list}"));
                    }
                }
            }
        }
        return reasons;
    }
    for var in ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"] {
        let Ok(list) = std::env::var(var) else { continue };
        let list = list.trim().to_string();
        if list.is_empty() || list == "all" || list == "void" {
            continue;
        }
        let ids: Vec<&str> = list.split(',').map(str::trim).collect();
        for (g, r) in gpus.iter().zip(reasons.iter_mut()) {
            if list == "none" || !ids.iter().any(|i| *i == g.index.to_string() || *i == g.uuid) {
                r.get_or_insert(format!("not in the host's {var}={list}"));
            }
        }
        break;
    }
    reasons
}

/// Chooses GPUs for `req` among `gpus` (with `reasons` from [`usable`]). The error lists every GPU and why it was
/// not chosen.
pub fn choose(req: &GpuRequest, gpus: &[Gpu], reasons: &[Option<String>]) -> Result<Vec<Gpu>, SelectError> {
    let mut why: Vec<Option<String>> = reasons.to_vec();
    for (g, w) in gpus.iter().zip(why.iter_mut()) {
        if w.is_some() {
            continue;
        }
        if let Some(n) = &req.name {
            if !g.model.to_ascii_lowercase().contains(&n.to_ascii_lowercase()) {
                *w = Some(format!("model does not match {n:?}"));
                continue;
            }
        }
        if let Some(min) = req.memory_mib {
            match g.memory_mib {
                Some(m) if m >= min => {}
                Some(m) => *w = Some(format!("{m} MiB < {min} MiB requested")),
                None => *w = Some("memory unknown (nvidia-smi did not answer)".into()),
            }
        }
    }
    let fits: Vec<&Gpu> = gpus
        .iter()
        .zip(&why)
        .filter(|(_, w)| w.is_none())
        .map(|(g, _)| g)
        .collect();
    let chosen: Vec<Gpu> = match &req.selector {
        Selector::All => fits.iter().map(|g| (*g).clone()).collect(),
        Selector::Count(n) => {
            let wanted = usize::try_from(*n).unwrap_or(usize::MAX);
            if fits.len() < wanted {
                return Err(not_enough(&format!("{n} GPU(s)"), req, gpus, &why));
            }
            fits.iter().take(wanted).map(|g| (*g).clone()).collect()
        }
        Selector::Ids(ids) => {
            let mut out = Vec::new();
            for id in ids {
                let Some(i) = gpus.iter().position(|g| g.index.to_string() == *id || g.uuid == *id) else {
                    return Err(not_enough(&format!("GPU {id} (no such GPU)"), req, gpus, &why));
                };
                if let Some(w) = &why[i] {
                    return Err(not_enough(&format!("GPU {id} ({w})"), req, gpus, &why));
                }
                if !out.contains(&gpus[i]) {
                    out.push(gpus[i].clone());
                }
            }
            out
        }
    };
    if chosen.is_empty() && req.selector == Selector::All {
        return Err(not_enough("all GPUs (none usable)", req, gpus, &why));
    }
    Ok(chosen)
}

fn not_enough(wanted: &str, req: &GpuRequest, gpus: &[Gpu], why: &[Option<String>]) -> SelectError {
    let mut filters = Vec::new();
    if let Some(n) = &req.name {
        filters.push(format!("name {n:?}"));
    }
    if let Some(m) = req.memory_mib {
        filters.push(format!("memory ≥ {m} MiB"));
    }
    let filters = if filters.is_empty() {
        String::new()
    } else {
        format!(" with {}", filters.join(" and "))
    };
    let mut listing = String::new();
    if gpus.is_empty() {
        listing.push_str(" none");
    }
    for (g, w) in gpus.iter().zip(why) {
        let _ = write!(listing, "\n  {}: {}", describe(g), w.as_deref().unwrap_or("available"));
    }
    SelectError {
        wanted: wanted.to_string(),
        filters,
        listing,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    fn gpus() -> Vec<Gpu> {
        vec![
            Gpu {
                index: 0,
                pci: "0000:01:00.0".into(),
                model: "Tesla K80".into(),
                uuid: "GPU-aaaa".into(),
                minor: 0,
                memory_mib: Some(11441),
            },
            Gpu {
                index: 1,
                pci: "0000:02:00.0".into(),
                model: "NVIDIA A100-SXM4-80GB".into(),
                uuid: "GPU-bbbb".into(),
                minor: 1,
                memory_mib: Some(81920),
            },
        ]
    }

    fn req(selector: Selector, name: Option<&str>, mem: Option<u64>) -> GpuRequest {
        GpuRequest {
            selector,
            name: name.map(String::from),
            memory_mib: mem,
        }
    }

    #[test]
    fn selection() {
        let g = gpus();
        let ok = vec![None, None];
        let pick = |r: GpuRequest| choose(&r, &g, &ok).map(|v| v.iter().map(|g| g.index).collect::<Vec<_>>());
        assert_eq!(pick(req(Selector::Count(1), None, None)).unwrap(), [0]);
        assert_eq!(pick(req(Selector::Count(1), Some("a100"), None)).unwrap(), [1]);
        assert_eq!(pick(req(Selector::Count(1), None, Some(40000))).unwrap(), [1]);
        assert_eq!(pick(req(Selector::All, None, None)).unwrap(), [0, 1]);
        assert_eq!(
            pick(req(Selector::Ids(vec!["GPU-bbbb".into(), "0".into()]), None, None)).unwrap(),
            [1, 0]
        );
        let e = pick(req(Selector::Count(2), Some("K80"), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot assign 2 GPU(s) with name \"K80\""), "{e}");
        assert!(
            e.contains("1 NVIDIA A100-SXM4-80GB (GPU-bbbb, 81920 MiB): model does not match \"K80\""),
            "{e}"
        );
        let reasons = vec![Some("denied".to_string()), None];
        let e = choose(&req(Selector::Ids(vec!["0".into()]), None, None), &g, &reasons).unwrap_err();
        assert!(e.to_string().contains("GPU 0 (denied)"), "{e}");
    }
}
