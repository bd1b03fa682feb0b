//! A container's resource limits (`--memory`, `--cpus`, `--pids-limit`): which of them its cgroup can enforce,
//! written by drun itself in a delegated subtree, or handed to libcontainer as `linux.resources` as root. The
//! other cgroup settings (`--cpu-shares`, `--cpuset-cpus`, `--memory-swap`, block I/O … [`CgroupTuning`]) are
//! added to `linux.resources` as root by [`tuned`], which leaves out, with Docker's warnings, what the host's
//! cgroups ignore.

use std::path::Path;

use serde_json::{json, Value};

use super::{CgroupError, CgroupPlan, Control, Version, CGROUP_ROOT};
use crate::plan::{CgroupTuning, DeviceValue, RunPlan};
use crate::units::ByteSize;

/// The limits of a run, all a cgroup needs of its plan (the warm-up thread carries its own copy).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResourceLimits {
    pub memory: Option<ByteSize>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    /// `--memory-swap`: when given, drun does not set "no extra swap" itself.
    pub memswap: Option<i64>,
    /// Whether any other cgroup setting ([`CgroupTuning`]) is asked for.
    pub tuned: bool,
}

impl ResourceLimits {
    pub fn of(plan: &RunPlan) -> ResourceLimits {
        ResourceLimits {
            memory: plan.memory,
            cpus: plan.cpus,
            pids: plan.pids_limit,
            memswap: plan.tuning.memswap_limit,
            tuned: plan.tuning != CgroupTuning::default(),
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
            (
                "tuning",
                limits
                    .tuned
                    .then(|| "the cgroup settings beyond those (--cpu-shares, --cpuset-cpus …)".to_string()),
            ),
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
                    Control::Delegated { .. } if ctrl == "tuning" => Some((
                        flag,
                        "drun writes only --memory, --cpus and --pids-limit into a delegated cgroup".to_string(),
                    )),
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

/// Adds `t` to the root `resources` of a cgroup of `version` (`memory`: the memory limit; `weight_files`: whether
/// the container's cgroup has a block I/O weight file, which needs the BFQ scheduler, or CFQ on old kernels), and
/// returns warnings for what is left out because the host ignores it, as Docker warns: swappiness and the OOM
/// killer switch on cgroup v2, weights without a weight file, a swap limit without swap accounting.
pub fn tuned(
    resources: &mut Value,
    version: &Version,
    weight_files: bool,
    memory: Option<ByteSize>,
    t: &CgroupTuning,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let v2 = *version == Version::V2;
    let object = |r: &mut Value, key: &str| {
        if !r[key].is_object() {
            r[key] = json!({});
        }
    };
    let mut cpu = serde_json::Map::new();
    if let Some(s) = t.cpu_shares {
        cpu.insert("shares".into(), json!(s));
    }
    if let Some(p) = t.cpu_period {
        cpu.insert("period".into(), json!(p));
    }
    if let Some(q) = t.cpu_quota {
        cpu.insert("quota".into(), json!(q));
    }
    if let Some(c) = &t.cpuset_cpus {
        cpu.insert("cpus".into(), json!(c));
    }
    if let Some(m) = &t.cpuset_mems {
        cpu.insert("mems".into(), json!(m));
    }
    if !cpu.is_empty() {
        object(resources, "cpu");
        for (k, v) in cpu {
            resources["cpu"][k] = v;
        }
    }
    let mut mem = serde_json::Map::new();
    if let Some(r) = t.mem_reservation {
        mem.insert("reservation".into(), json!(r.0));
    }
    if let Some(swap) = t.memswap_limit {
        if matches!(version, Version::V1 { memsw: false }) {
            warnings.push(
                "this host's kernel has no swap accounting (memory.memsw): --memory-swap (memswap_limit) is ignored \
                 and the memory is limited without swap"
                    .to_string(),
            );
        } else {
            mem.insert("swap".into(), json!(swap));
        }
    }
    if let Some(s) = t.mem_swappiness {
        if v2 {
            warnings.push(
                "cgroup v2 has no per-cgroup swappiness: --memory-swappiness (mem_swappiness) is ignored".to_string(),
            );
        } else {
            mem.insert("swappiness".into(), json!(s));
        }
    }
    if t.oom_kill_disable {
        if v2 {
            warnings.push(
                "cgroup v2 cannot disable the OOM killer: --oom-kill-disable (oom_kill_disable) is ignored".to_string(),
            );
        } else {
            if memory.is_none() {
                warnings.push(
                    "the OOM killer is disabled without a memory limit: the container can run the host out of memory"
                        .to_string(),
                );
            }
            mem.insert("disableOOMKiller".into(), json!(true));
        }
    }
    if !mem.is_empty() {
        object(resources, "memory");
        for (k, v) in mem {
            resources["memory"][k] = v;
        }
    }
    let mut io = serde_json::Map::new();
    if t.blkio_weight.is_some() || !t.blkio_weight_device.is_empty() {
        if weight_files {
            if let Some(w) = t.blkio_weight {
                io.insert("weight".into(), json!(w));
            }
            if !t.blkio_weight_device.is_empty() {
                let list: Vec<Value> = t
                    .blkio_weight_device
                    .iter()
                    .map(|d| json!({"major": d.device.major, "minor": d.device.minor, "weight": d.value}))
                    .collect();
                io.insert("weightDevice".into(), json!(list));
            }
        } else {
            warnings.push(
                "this host's block I/O scheduler has no weights (they need BFQ): --blkio-weight and \
                 --blkio-weight-device (blkio_weight, blkio_weight_device) are ignored"
                    .to_string(),
            );
        }
    }
    let rates = |list: &[DeviceValue]| -> Value {
        list.iter()
            .map(|d| json!({"major": d.device.major, "minor": d.device.minor, "rate": d.value}))
            .collect()
    };
    for (key, list) in [
        ("throttleReadBpsDevice", &t.device_read_bps),
        ("throttleWriteBpsDevice", &t.device_write_bps),
        ("throttleReadIOPSDevice", &t.device_read_iops),
        ("throttleWriteIOPSDevice", &t.device_write_iops),
    ] {
        if !list.is_empty() {
            io.insert(key.into(), rates(list));
        }
    }
    if !io.is_empty() {
        resources["blockIO"] = Value::Object(io);
    }
    warnings
}

/// `--device-cgroup-rule`s as `linux.resources.devices` entries.
pub fn device_cgroup_rules(t: &CgroupTuning) -> Vec<Value> {
    t.device_cgroup_rules
        .iter()
        .map(|r| {
            let mut rule = json!({"allow": true, "access": r.access.letters()});
            rule["type"] = json!(r.kind.map_or("a", |k| k.letter()));
            if let Some(m) = r.major {
                rule["major"] = json!(m);
            }
            if let Some(m) = r.minor {
                rule["minor"] = json!(m);
            }
            rule
        })
        .collect()
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

    fn device(major: u64, minor: u64, value: u64) -> DeviceValue {
        DeviceValue {
            device: crate::plan::BlockDevice { major, minor },
            value,
        }
    }

    fn every_setting() -> CgroupTuning {
        CgroupTuning {
            cpu_shares: Some(512),
            cpu_period: Some(50_000),
            cpu_quota: Some(25_000),
            cpuset_cpus: Some("0-1".into()),
            cpuset_mems: Some("0".into()),
            mem_reservation: Some(ByteSize(32 << 20)),
            memswap_limit: Some(128 << 20),
            mem_swappiness: Some(10),
            oom_kill_disable: true,
            blkio_weight: Some(300),
            blkio_weight_device: vec![device(8, 0, 400)],
            device_read_bps: vec![device(8, 0, 1 << 20)],
            device_write_bps: vec![device(8, 0, 2 << 20)],
            device_read_iops: vec![device(8, 0, 100)],
            device_write_iops: vec![device(8, 0, 200)],
            device_cgroup_rules: Vec::new(),
        }
    }

    #[test]
    fn on_cgroup_v2_swappiness_and_the_oom_killer_switch_are_ignored_with_warnings() {
        let mut r = json!({"memory": {"limit": 64 << 20, "swap": 64 << 20}});
        let warnings = tuned(&mut r, &Version::V2, true, Some(ByteSize(64 << 20)), &every_setting());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("--memory-swappiness (mem_swappiness) is ignored"));
        assert!(warnings[1].contains("--oom-kill-disable (oom_kill_disable) is ignored"));
        // What libcgroups' v2 manager turns into cpu.weight, cpu.max, cpuset.*, memory.low, memory.swap.max (the
        // difference), io.bfq.weight/io.weight and io.max lines.
        assert_eq!(
            r,
            json!({
                "cpu": {"shares": 512, "period": 50_000, "quota": 25_000, "cpus": "0-1", "mems": "0"},
                "memory": {"limit": 64 << 20, "swap": 128 << 20, "reservation": 32 << 20},
                "blockIO": {
                    "weight": 300,
                    "weightDevice": [{"major": 8, "minor": 0, "weight": 400}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1 << 20}],
                    "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 2 << 20}],
                    "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 200}],
                },
            })
        );
        serde_json::from_value::<oci_spec::runtime::LinuxResources>(r).expect("a valid linux.resources");
    }

    #[test]
    fn on_cgroup_v1_everything_applies_and_weights_need_a_weight_file() {
        let mut r = json!({});
        let warnings = tuned(&mut r, &Version::V1 { memsw: true }, false, None, &every_setting());
        assert_eq!(r["memory"]["swappiness"], json!(10));
        assert_eq!(r["memory"]["disableOOMKiller"], json!(true));
        assert!(r["blockIO"].get("weight").is_none() && r["blockIO"].get("weightDevice").is_none());
        assert!(warnings
            .iter()
            .any(|w| w.contains("the OOM killer is disabled without a memory limit")));
        assert!(warnings
            .iter()
            .any(|w| w.contains("block I/O scheduler has no weights")));
        let mut r = json!({});
        let warnings = tuned(&mut r, &Version::V1 { memsw: false }, true, None, &every_setting());
        assert!(r["memory"].get("swap").is_none());
        assert!(warnings.iter().any(|w| w.contains("no swap accounting")));
    }

    #[test]
    fn cpus_become_a_quota_over_100_ms() {
        assert_eq!(cpu_quota(0.5), (50_000, 100_000));
        assert_eq!(cpu_quota(2.0), (200_000, 100_000));
        assert_eq!(cpu_quota(0.000_004), (0, 100_000));
    }
}
