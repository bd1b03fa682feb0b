//! A container's resource limits (`--memory`, `--cpus`, `--pids-limit`): which of them its cgroup can enforce,
//! written by drun itself in a delegated subtree, or handed to libcontainer as `linux.resources` as root.

use std::path::Path;

use serde_json::{json, Value};

use super::{CgroupError, CgroupPlan, Control, Version, CGROUP_ROOT};
use crate::plan::RunPlan;
use crate::units::ByteSize;

/// The limits of a run, all a cgroup needs of its plan (the warm-up thread carries its own copy).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResourceLimits {
    pub memory: Option<ByteSize>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
}

impl ResourceLimits {
    pub fn of(plan: &RunPlan) -> ResourceLimits {
        ResourceLimits {
            memory: plan.memory,
            cpus: plan.cpus,
            pids: plan.pids_limit,
        }
    }
}

/// Limits a rootless run cannot enforce: one warning naming each, or an error with `--require-limits`.
pub fn check_enforced(cgroup: &CgroupPlan, limits: &ResourceLimits, require: bool) -> Result<(), CgroupError> {
    let missing = cgroup.unenforced(limits);
    if missing.is_empty() {
        return Ok(());
    }
    let limits = missing.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(", ");
    let mut reasons: Vec<&str> = missing.iter().map(|(_, r)| r.as_str()).collect();
    reasons.dedup();
    let reason = reasons.join("; ");
    if require {
        return Err(CgroupError::Unenforced { limits, reason });
    }
    tracing::warn!("limits NOT enforced: {limits} ({reason}); pass --require-limits to refuse to run instead");
    Ok(())
}

impl CgroupPlan {
    /// The `limits` this cgroup cannot enforce, as `(flag, why)`.
    pub fn unenforced(&self, limits: &ResourceLimits) -> Vec<(String, String)> {
        let wanted = [
            ("memory", limits.memory.map(|m| format!("--memory {m}"))),
            ("cpu", limits.cpus.map(|c| format!("--cpus {c}"))),
            ("pids", limits.pids.map(|p| format!("--pids-limit {p}"))),
        ];
        wanted
            .into_iter()
            .filter_map(|(ctrl, flag)| {
                let flag = flag?;
                if let Some(reason) = &self.blocked {
                    return Some((flag, reason.clone()));
                }
                match &self.control {
                    Control::Root => None,
                    Control::Delegated { controllers } if controllers.iter().any(|c| c == ctrl) => None,
                    Control::Delegated { .. } => Some((
                        flag,
                        format!("the {ctrl} controller is not delegated to your cgroup subtree"),
                    )),
                    Control::None { reason } => Some((flag, reason.clone())),
                }
            })
            .collect()
    }

    /// Rootless with a delegated subtree: writes the limits into the container's cgroup (created by
    /// [`create_dirs`](Self::create_dirs)).
    pub fn write_limits(&self, limits: &ResourceLimits) -> Result<(), CgroupError> {
        let Control::Delegated { controllers } = &self.control else {
            return Ok(());
        };
        let dir = Path::new(CGROUP_ROOT).join(self.path.trim_start_matches('/'));
        let has = |c: &str| controllers.iter().any(|x| x == c);
        let mut writes: Vec<(&str, String)> = Vec::new();
        if let (Some(m), true) = (limits.memory, has("memory")) {
            writes.push(("memory.max", m.0.to_string()));
        }
        if let (Some(c), true) = (limits.cpus, has("cpu")) {
            let (quota, period) = cpu_quota(c);
            writes.push(("cpu.max", format!("{quota} {period}")));
        }
        if let (Some(p), true) = (limits.pids, has("pids")) {
            writes.push(("pids.max", p.to_string()));
        }
        for (file, value) in writes {
            let f = dir.join(file);
            crate::sys::safe_fs::write_system(&f, &value).map_err(|source| CgroupError::Write { path: f, source })?;
        }
        Ok(())
    }

    /// `linux.resources`: limits and the device allow-list; none rootless (drun writes delegated limits itself).
    pub fn resources(&self, limits: &ResourceLimits) -> Option<Value> {
        (self.control == Control::Root).then(|| self.root_resources(limits))
    }

    fn root_resources(&self, limits: &ResourceLimits) -> Value {
        let mut r = json!({"devices": device_rules()});
        if self.blocked.is_some() {
            // No controller reaches the cgroup: libcontainer could not write a limit (the device rules are an
            // eBPF program, which needs none).
            return r;
        }
        if let Some(m) = limits.memory {
            let mut mem = json!({"limit": m.0});
            // "No extra swap": the memory+swap total equals the memory limit.
            if matches!(self.version, Version::V2 | Version::V1 { memsw: true }) {
                mem["swap"] = json!(m.0);
            }
            r["memory"] = mem;
        }
        if let Some(c) = limits.cpus {
            let (quota, period) = cpu_quota(c);
            r["cpu"] = json!({"quota": quota, "period": period});
        }
        if let Some(p) = limits.pids {
            r["pids"] = json!({"limit": p});
        }
        r
    }
}

/// `--cpus` as a CFS quota over a 100 ms period: (quota, period) in microseconds.
fn cpu_quota(cpus: f64) -> (u64, u64) {
    const PERIOD: u64 = 100_000;
    // `as` saturates (and maps NaN to 0): the parser accepts only positive, finite CPU counts, far below
    // u64::MAX / PERIOD.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let quota = (cpus * PERIOD as f64).round() as u64;
    (quota, PERIOD)
}

/// Standard device access: nothing by default, then the character devices every container needs.
fn device_rules() -> Value {
    let allow = |major: i64, minor: Option<i64>| {
        let mut v = json!({"allow": true, "type": "c", "major": major, "access": "rwm"});
        if let Some(m) = minor {
            v["minor"] = json!(m);
        }
        v
    };
    json!([
        {"allow": false, "access": "rwm"},
        allow(1, Some(3)), allow(1, Some(5)), allow(1, Some(7)), allow(1, Some(8)), allow(1, Some(9)),
        allow(5, Some(0)), allow(5, Some(1)), allow(5, Some(2)), allow(136, None),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_become_a_quota_over_100_ms() {
        assert_eq!(cpu_quota(0.5), (50_000, 100_000));
        assert_eq!(cpu_quota(2.0), (200_000, 100_000));
        assert_eq!(cpu_quota(0.000_004), (0, 100_000));
    }
}
