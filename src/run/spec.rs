//! RunPlan + the prepared process, mounts and namespaces → OCI runtime spec (`config.json`): namespaces, mounts
//! (a sized /dev/shm, read-only cgroup views), cgroup resources, capabilities, masked paths, seccomp, user, env
//! and cwd. The spec is written as JSON and checked by deserialising it into `oci_spec::runtime::Spec`, the type
//! libcontainer reads; [`write_bundle`] puts it where libcontainer reads it.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::plan::{MountSpec, NetworkMode, RunPlan, SeccompMode, Sharing, DEFAULT_CAPS};
use crate::run::cgroups::{device_cgroup_rules, tuned, CgroupPlan, ResourceLimits};
use crate::run::seccomp::default_profile;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unknown capability {0:?} (expected e.g. NET_ADMIN or CAP_NET_ADMIN, or ALL)")]
    Capability(String),
    #[error("cannot read the seccomp profile {path:?}")]
    SeccompRead { path: PathBuf, source: std::io::Error },
    #[error("invalid seccomp profile {path:?}")]
    SeccompParse { path: PathBuf, source: serde_json::Error },
    #[error("unknown ulimit {0:?} (expected e.g. nofile, nproc, memlock, stack, core)")]
    Ulimit(String),
    #[error(transparent)]
    ReservedDevicePath(#[from] crate::run::devices::ReservedPath),
    #[error("invalid runtime spec: {0}")]
    Invalid(serde_json::Error),
    #[error("cannot write the bundle {path:?}")]
    Bundle { path: PathBuf, source: std::io::Error },
}

/// The user a container process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Everything the spec needs besides the plan.
pub struct SpecInputs<'a> {
    pub plan: &'a RunPlan,
    /// The run's effective mounts (`run::mounts`), not the plan's.
    pub mounts: &'a [MountSpec],
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: ResolvedUser,
    pub rootfs: &'a Path,
    pub hostname: String,
    pub shm_bytes: u64,
    pub cgroup: &'a CgroupPlan,
    /// Files bind-mounted over /etc/hosts, /etc/hostname and /etc/resolv.conf.
    pub etc_files: Vec<(PathBuf, &'static str)>,
    /// Path of a prepared network namespace (for `--network none`).
    pub netns: Option<PathBuf>,
    /// Host path of the init binary bind-mounted at /dev/init (for `--init`).
    pub init: Option<PathBuf>,
    /// The plan's host devices, and the RDMA devices with `--rdma` (`devices::with_rdma`).
    pub host_devices: &'a [crate::plan::HostDevice],
}

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Character devices every container gets: (path, major, minor).
const STANDARD_DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Every capability the kernels drun supports know (CAP_LAST_CAP of Linux 5.9+).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn cap_name(s: &str) -> Result<String, SpecError> {
    let up = s.trim().to_ascii_uppercase();
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if ALL_CAPS.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(SpecError::Capability(s.to_string()))
    }
}

/// "All" capabilities: those in drun's own bounding set (a sandboxed root may lack some, and asking for more
/// fails in capset). `ALL_CAPS` is ordered by capability number.
fn all_caps() -> Vec<String> {
    let bounding = crate::sys::safe_fs::read_system("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        })
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// The capability set after `--cap-add`/`--cap-drop` (applied add-then-drop, `ALL` allowed in both).
pub fn capabilities(plan: &RunPlan) -> Result<Vec<String>, SpecError> {
    if plan.privileged {
        return Ok(all_caps());
    }
    let mut caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    for a in &plan.cap_add {
        if a.eq_ignore_ascii_case("all") {
            caps = all_caps();
        } else {
            let n = cap_name(a)?;
            if !caps.contains(&n) {
                caps.push(n);
            }
        }
    }
    for d in &plan.cap_drop {
        if d.eq_ignore_ascii_case("all") {
            caps.clear();
        } else {
            let n = cap_name(d)?;
            caps.retain(|c| *c != n);
        }
    }
    Ok(caps)
}

fn rlimit_type(name: &str) -> Result<&'static str, SpecError> {
    Ok(match name {
        "core" => "RLIMIT_CORE",
        "cpu" => "RLIMIT_CPU",
        "data" => "RLIMIT_DATA",
        "fsize" => "RLIMIT_FSIZE",
        "locks" => "RLIMIT_LOCKS",
        "memlock" => "RLIMIT_MEMLOCK",
        "msgqueue" => "RLIMIT_MSGQUEUE",
        "nice" => "RLIMIT_NICE",
        "nofile" => "RLIMIT_NOFILE",
        "nproc" => "RLIMIT_NPROC",
        "rss" => "RLIMIT_RSS",
        "rtprio" => "RLIMIT_RTPRIO",
        "rttime" => "RLIMIT_RTTIME",
        "sigpending" => "RLIMIT_SIGPENDING",
        "stack" => "RLIMIT_STACK",
        "as" => "RLIMIT_AS",
        other => return Err(SpecError::Ulimit(other.to_string())),
    })
}

pub fn build(inp: &SpecInputs<'_>) -> Result<Value, SpecError> {
    let plan = inp.plan;
    let caps = capabilities(plan)?;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    if let Some(ns) = crate::sys::userns::current() {
        rootless_mounts(&mut mounts, plan, ns);
    }
    match plan.ipc_mode() {
        Sharing::Private => {
            mounts.push(json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={}", inp.shm_bytes)]}));
            mounts.push(json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}));
        }
        Sharing::Host => {
            mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "nosuid", "nodev"]}));
        }
    }
    mounts.extend(inp.cgroup.container_mounts());
    for (src, dst) in &inp.etc_files {
        mounts.push(json!({"destination": dst, "type": "bind", "source": src, "options": ["bind", "rprivate"]}));
    }
    if let Some(init) = &inp.init {
        mounts.push(json!({"destination": "/dev/init", "type": "bind", "source": init, "options": ["bind", "ro", "nosuid", "nodev"]}));
    }
    for m in inp.mounts {
        mounts.push(match m {
            // Not in the effective list: the run path shows it as a bind of its prepared view.
            MountSpec::Overlay { .. } => continue,
            MountSpec::Bind {
                source,
                destination,
                read_only,
            } => {
                let mut o = vec!["rbind", "rprivate"];
                if *read_only {
                    o.push("ro");
                }
                json!({"destination": destination, "type": "bind", "source": source, "options": o})
            }
            MountSpec::Tmpfs { destination, options } => {
                let mut o: Vec<String> = vec!["nosuid".into(), "nodev".into()];
                o.extend(options.iter().cloned());
                json!({"destination": destination, "type": "tmpfs", "source": "tmpfs", "options": o})
            }
        });
    }

    let rootless = crate::sys::userns::is_rootless();
    let (device_mounts, device_rules) = crate::run::devices::edits(inp.host_devices, rootless)?;
    mounts.extend(device_mounts);

    let mut namespaces = vec![json!({"type": "mount"})];
    if plan.uts != Some(Sharing::Host) {
        namespaces.push(json!({"type": "uts"}));
    }
    if plan.pid_mode() == Sharing::Private {
        namespaces.push(json!({"type": "pid"}));
    }
    if plan.ipc_mode() == Sharing::Private {
        namespaces.push(json!({"type": "ipc"}));
    }
    if plan.network == NetworkMode::None {
        let mut ns = json!({"type": "network"});
        if let Some(p) = &inp.netns {
            ns["path"] = json!(p);
        }
        namespaces.push(ns);
    }

    let mut rlimits = Vec::new();
    let (soft, hard) = nofile_default();
    if !plan.ulimits.iter().any(|u| u.name == "nofile") {
        rlimits.push(json!({"type": "RLIMIT_NOFILE", "soft": soft, "hard": hard}));
    }
    for u in &plan.ulimits {
        rlimits.push(json!({"type": rlimit_type(&u.name)?, "soft": u.soft, "hard": u.hard}));
    }
    // RDMA registers (pins) memory: unlimited where it can be, unless --ulimit memlock said otherwise.
    if plan.rdma && !plan.ulimits.iter().any(|u| u.name == "memlock") {
        let (soft, hard) = crate::rdma::memlock();
        rlimits.push(json!({"type": "RLIMIT_MEMLOCK", "soft": soft, "hard": hard}));
    }

    let mut resources = inp.cgroup.resources(&ResourceLimits::of(plan));
    if let (Some(r), None) = (resources.as_mut(), &inp.cgroup.blocked) {
        let weights = plan.tuning.blkio_weight.is_some() || !plan.tuning.blkio_weight_device.is_empty();
        let weight_files = weights && inp.cgroup.has_io_weight();
        for warning in tuned(r, &inp.cgroup.version, weight_files, plan.memory, &plan.tuning) {
            tracing::warn!("{warning}");
        }
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": inp.cgroup.spec_path(),
        "resources": resources,
    });
    if !plan.sysctls.is_empty() {
        linux["sysctl"] = plan.sysctls.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    }
    if plan.privileged {
        if linux["resources"].is_object() {
            linux["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
        }
    } else {
        // Rootless specs have no resources (the user namespace stands in for the device cgroup): `get_mut`, since
        // indexing would make the null an object, and libcgroups would then load a device filter rootless.
        if let Some(rules) = linux.pointer_mut("/resources/devices").and_then(Value::as_array_mut) {
            rules.extend(device_rules);
            rules.extend(device_cgroup_rules(&plan.tuning));
        }
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        linux["devices"] = STANDARD_DEVICES
            .iter()
            .map(|(p, maj, min)| json!({"path": p, "type": "c", "major": maj, "minor": min, "fileMode": 0o666, "uid": 0, "gid": 0}))
            .collect();
        let seccomp = match &plan.seccomp {
            SeccompMode::Default => Some(default_profile()),
            SeccompMode::Unconfined => None,
            SeccompMode::Profile(path) => {
                let text = crate::sys::safe_fs::read_user_file(path, 16 << 20)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .map_err(|source| SpecError::SeccompRead {
                        path: path.clone(),
                        source,
                    })?;
                Some(serde_json::from_str(&text).map_err(|source| SpecError::SeccompParse {
                    path: path.clone(),
                    source,
                })?)
            }
        };
        if let Some(s) = seccomp {
            linux["seccomp"] = s;
        }
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "root": {"path": inp.rootfs, "readonly": plan.read_only},
        "mounts": mounts,
        "process": {
            "terminal": plan.tty,
            // Docker's umask, not drun's private one, which the init would otherwise inherit.
            "user": {"uid": inp.user.uid, "gid": inp.user.gid, "additionalGids": inp.user.additional_gids, "umask": 0o022},
            "args": inp.args,
            "env": inp.env,
            "cwd": inp.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": rlimits,
        },
        "linux": linux,
    });
    // Without a UTS namespace of its own the container has the host's names, which it must not set.
    if plan.uts != Some(Sharing::Host) {
        spec["hostname"] = json!(inp.hostname);
        if let Some(d) = &plan.domainname {
            spec["domainname"] = json!(d);
        }
    }
    if let Some(adj) = plan.oom_score_adj {
        spec["process"]["oomScoreAdj"] = json!(adj);
    }
    // Left out rather than false: libcontainer (0.7) takes any value as "no_new_privs is set" and then loads the
    // seccomp filter after dropping capabilities, which without no_new_privs the kernel refuses (EACCES).
    if plan.no_new_privileges && !plan.privileged {
        spec["process"]["noNewPrivileges"] = Value::Bool(true);
    }
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()).map_err(SpecError::Invalid)?;
    Ok(spec)
}

/// Writes `spec` as `run_dir/bundle/config.json` and returns the bundle directory. The spec holds the container's
/// environment (secrets passed with -e): its owner's alone.
pub fn write_bundle(run_dir: &Path, spec: &Value) -> Result<PathBuf, SpecError> {
    let bundle = run_dir.join("bundle");
    crate::sys::safe_fs::create_dir_mode(&bundle, 0o700).map_err(|source| SpecError::Bundle {
        path: bundle.clone(),
        source,
    })?;
    let config = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(spec).expect("spec serialises");
    crate::sys::safe_fs::write_new(&config, &json, 0o600)
        .map_err(|source| SpecError::Bundle { path: config, source })?;
    Ok(bundle)
}

/// Whether the spec has poststop hooks (a GPU spec may add some): libcontainer's delete() must then run them.
pub fn has_poststop_hooks(spec: &Value) -> bool {
    spec.pointer("/hooks/poststop")
        .and_then(Value::as_array)
        .is_some_and(|h| !h.is_empty())
}

/// What a user namespace cannot mount itself: sysfs needs a network namespace it owns (with the host network,
/// the host's /sys is bind-mounted read-only, as rootless Podman does), proc a PID namespace it owns (`--pid
/// host`: the host's /proc); devpts' `gid=5` needs gid 5 mapped.
fn rootless_mounts(mounts: &mut [Value], plan: &RunPlan, ns: &crate::sys::userns::Rootless) {
    for m in mounts.iter_mut() {
        match m["destination"].as_str() {
            Some("/sys") if plan.network != NetworkMode::None => {
                *m = json!({"destination": "/sys", "type": "bind", "source": "/sys",
                    "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
            }
            Some("/proc") if plan.pid_mode() == Sharing::Host => {
                *m = json!({"destination": "/proc", "type": "bind", "source": "/proc",
                    "options": ["rbind", "nosuid", "noexec", "nodev"]});
            }
            Some("/dev/pts") if !ns.maps_gid(5) => {
                *m = json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                    "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]});
            }
            _ => {}
        }
    }
}

/// RLIMIT_NOFILE for containers: drun's own hard limit as both soft and hard (Docker and Podman raise it too;
/// the usual soft 1024 is too low for data loaders and MPI).
fn nofile_default() -> (u64, u64) {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) if hard != nix::sys::resource::RLIM_INFINITY => (hard, hard),
        _ => (1 << 20, 1 << 20),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn capability_arithmetic() {
        let mut p = RunPlan::new("");
        let caps = capabilities(&p).unwrap();
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()) && caps.contains(&"CAP_CHOWN".to_string()));
        p.cap_add = vec!["net_admin".into()];
        p.cap_drop = vec!["CAP_CHOWN".into()];
        let caps = capabilities(&p).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()) && !caps.contains(&"CAP_CHOWN".to_string()));
        p.cap_drop = vec!["ALL".into()];
        assert!(capabilities(&p).unwrap().is_empty());
        p.cap_add = vec!["FLY".into()];
        assert!(capabilities(&p).is_err());
    }
}
