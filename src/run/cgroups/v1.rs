//! Cgroup v1: one cgroup per hierarchy, nested under drun's own cgroup in *that* hierarchy.
//!
//! libcgroups' v1 manager puts the container at one path (`CgroupPlan::path`, below drun's memory cgroup) in every
//! hierarchy. drun's own cgroups may differ per hierarchy: in a Slurm step, the step's devices (and, when the
//! site constrains them, cpuset and memory) cgroups are `…/job_J/step_S/task_T`, its freezer cgroup is
//! `…/job_J/step_S`, and the other hierarchies are wherever slurmd was. Left at the memory path, the container
//! escapes the step's device and core confinement and its freezer cgroup, which is how Slurm's proctrack/cgroup
//! finds what to kill: a cancelled step would leave the container running. So, once libcontainer has created the
//! container and before it starts (its init is then the only process), drun moves it, per hierarchy:
//! - where drun sets limits (memory, cpu, cpuacct, cpuset, pids, devices, blkio), into `drun-<id>` below drun's
//!   own cgroup of that hierarchy, with the settings libcontainer wrote into its cgroup copied over;
//! - elsewhere (freezer, perf_event, net_cls, hugetlb …), into drun's own cgroup itself: Slurm 22.05's
//!   proctrack/cgroup signals only the processes of the step's freezer cgroup, not those of cgroups below it.
//!
//! libcontainer's cgroups there (and parents it had to create) are removed once empty.

use std::path::{Path, PathBuf};

use super::{join, CgroupError, CGROUP_ROOT};

/// Hierarchies drun writes limits or device rules into.
const MANAGED: &[&str] = &["memory", "cpu", "cpuacct", "cpuset", "pids", "devices", "blkio"];

/// A v1 hierarchy where the container does not go to `CgroupPlan::path`.
#[derive(Clone, Debug)]
pub(super) struct Place {
    /// The hierarchy's mount, e.g. `/sys/fs/cgroup/devices`.
    pub mount: PathBuf,
    /// Where the container goes, relative to the hierarchy's root.
    pub rel: String,
    /// The container stays in drun's own cgroup (`rel`); else `rel` is a cgroup of its own.
    pub stays: bool,
    /// Ancestors of `CgroupPlan::path` missing in this hierarchy before the run (libcontainer creates them),
    /// deepest first: removed again once empty.
    pub missing: Vec<PathBuf>,
}

impl Place {
    pub fn dir(&self) -> PathBuf {
        self.mount.join(self.rel.trim_start_matches('/'))
    }
}

/// The hierarchies where the container's cgroup differs from `path` (drun's memory cgroup + `leaf`).
pub(super) fn places(path: &str, leaf: &str) -> Result<Vec<Place>, CgroupError> {
    let file = PathBuf::from("/proc/self/cgroup");
    let text = crate::sys::safe_fs::read_system(&file).map_err(|source| CgroupError::Read { path: file, source })?;
    let parent = path.strip_suffix(&format!("/{leaf}")).unwrap_or("/");
    let parent = if parent.is_empty() { "/" } else { parent };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, own) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        // The v2 line, and named hierarchies (systemd's), which libcgroups leaves alone.
        if ctrls.is_empty() || ctrls.starts_with("name=") {
            continue;
        }
        let mount = Path::new(CGROUP_ROOT).join(ctrls);
        if !mount.is_dir() {
            continue;
        }
        // In a job container without a cgroup namespace, /proc/self/cgroup names the host's path while the
        // hierarchy is mounted from the container's own subtree.
        let own = super::below_mount_root(own, mount_root(&mount).as_deref());
        let own = own.as_str();
        let managed = ctrls.split(',').any(|c| MANAGED.contains(&c));
        if managed && own == parent {
            continue;
        }
        let rel = if managed { join(own, leaf) } else { own.to_string() };
        // libcontainer makes `path` with its parents here: note which of them are not there yet.
        let mut missing = Vec::new();
        let mut dir = mount.join(path.trim_start_matches('/'));
        while dir != mount && !dir.exists() {
            missing.push(dir.clone());
            dir.pop();
        }
        // `path` itself is removed by name; only its missing parents are listed.
        if !missing.is_empty() {
            missing.remove(0);
        }
        out.push(Place {
            mount,
            rel,
            stays: !managed,
            missing,
        });
    }
    Ok(out)
}

/// The cgroup a v1 hierarchy mounted at `mount` is mounted from (its root in /proc/self/mountinfo).
fn mount_root(mount: &Path) -> Option<String> {
    let info = crate::sys::safe_fs::read_system(Path::new("/proc/self/mountinfo")).ok()?;
    info.lines().find_map(|line| {
        let (fields, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = fields.split(' ').collect();
        (fs.starts_with("cgroup ") && Path::new(fields.get(4)?) == mount)
            .then(|| fields.get(3).map(|r| r.to_string()))?
    })
}

/// Moves the container's init `pid` from libcontainer's cgroups (`path` in each hierarchy) to its `places`.
pub(super) fn settle(path: &str, places: &[Place], pid: i32) -> Result<(), CgroupError> {
    let write = |f: PathBuf, value: &str| {
        crate::sys::safe_fs::write_system(&f, value).map_err(|source| CgroupError::Write { path: f, source })
    };
    for place in places {
        let from = place.mount.join(path.trim_start_matches('/'));
        let to = place.dir();
        if !place.stays {
            copy_settings(&from, &to)?;
        }
        write(to.join("cgroup.procs"), &pid.to_string())?;
        // Empty now: libcontainer's delete() finds nothing there, and drun removes `to` with the run.
        let _ = std::fs::remove_dir(&from);
        for d in &place.missing {
            let _ = std::fs::remove_dir(d);
        }
    }
    Ok(())
}

/// Copies what libcontainer wrote into `from` (limits, device rules) to the container's cgroup `to` of the same
/// hierarchy: drun's limits and rules are few, and libcgroups' controllers are private to it.
fn copy_settings(from: &Path, to: &Path) -> Result<(), CgroupError> {
    let read =
        |f: PathBuf| crate::sys::safe_fs::read_system(&f).map_err(|source| CgroupError::Read { path: f, source });
    let write = |f: PathBuf, value: &str| {
        crate::sys::safe_fs::write_system(&f, value.trim()).map_err(|source| CgroupError::Write { path: f, source })
    };
    // A new cpuset cgroup has no CPUs or memory nodes, and takes no task until it has: its parent's, then what
    // libcontainer set (`--cpuset-cpus`/`--cpuset-mems`, or what it inherited).
    if let Some(parent) = to.parent() {
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if to.join(f).exists() {
                let inherited = read(parent.join(f))?;
                write(to.join(f), &inherited)?;
                if from.join(f).exists() {
                    let set = read(from.join(f))?;
                    if !set.trim().is_empty() && set.trim() != inherited.trim() {
                        write(to.join(f), &set)?;
                    }
                }
            }
        }
    }
    // Per-device block I/O settings: one "MAJ:MIN VALUE" line each.
    for f in [
        "blkio.weight_device",
        "blkio.bfq.weight_device",
        "blkio.throttle.read_bps_device",
        "blkio.throttle.write_bps_device",
        "blkio.throttle.read_iops_device",
        "blkio.throttle.write_iops_device",
    ] {
        if from.join(f).exists() && to.join(f).exists() {
            for line in read(from.join(f))?.lines().filter(|l| l.contains(':')) {
                write(to.join(f), line)?;
            }
        }
    }
    // In order: a period before its quota, the memory limit before memory+swap (which must not be below it).
    let files = [
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "cpu.cfs_period_us",
        "cpu.cfs_quota_us",
        "cpu.shares",
        "pids.max",
        "memory.soft_limit_in_bytes",
        "memory.swappiness",
        "blkio.weight",
        "blkio.bfq.weight",
    ];
    for f in files {
        if from.join(f).exists() && to.join(f).exists() {
            let value = read(from.join(f))?;
            if value.trim() != read(to.join(f))?.trim() {
                write(to.join(f), &value)?;
            }
        }
    }
    // Device rules: deny all, then allow what libcontainer's cgroup allows ("a *:* rwm" when it allows all).
    if from.join("devices.list").exists() && to.join("devices.allow").exists() {
        let list = read(from.join("devices.list"))?;
        write(to.join("devices.deny"), "a")?;
        for rule in list.lines().filter(|l| !l.trim().is_empty()) {
            let rule = if rule.starts_with("a ") { "a" } else { rule };
            match crate::sys::safe_fs::write_system(to.join("devices.allow"), rule) {
                Ok(()) => {}
                // The kernel refuses a rule that overlaps one the parent denies (a Slurm step denies the GPUs it
                // was not given, so even the default "c *:* m" is refused there): the container gets less.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    if rule.ends_with(" m") && rule.contains("*:*") {
                        tracing::debug!(rule, "device rule refused by drun's own device cgroup; left out");
                    } else {
                        tracing::warn!("device rule {rule:?} is refused by the device cgroup drun runs in; left out");
                    }
                }
                Err(source) => {
                    return Err(CgroupError::Write {
                        path: to.join("devices.allow"),
                        source,
                    })
                }
            }
        }
    }
    Ok(())
}
