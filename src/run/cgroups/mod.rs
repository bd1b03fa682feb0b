//! Where a container's cgroup goes and what it may see of it.
//!
//! The cgroup is created at an explicit path nested under the cgroup drun was started in, so a Slurm job's or a
//! systemd unit's limits, device rules and accounting still cover the container (never the caller's cgroup
//! itself: libcontainer's `delete()` kills every process of the cgroup it is given). On cgroup v2 a cgroup with
//! processes cannot delegate controllers to children; when drun's own cgroup has processes, drun moves itself into
//! a leaf `drun.supervisor-<pid>` beside the container's cgroup first.
//!
//! Rootless, drun uses a cgroup v2 subtree delegated to the caller (a systemd user slice, or a job cgroup made
//! writable): it creates the container's cgroup there and writes the limits itself (libcgroups would load the
//! eBPF device filter, which needs real root). Without one (cgroup v1, or a v2 directory that is not the
//! caller's) the container stays in drun's cgroup and requested limits are reported as not enforced.
//!
//! Inside, the container sees only its own cgroup, read-only: libcontainer mounts v1 hierarchies writable even
//! when asked not to, so drun leaves cgroup mounts out of the spec and bind-mounts the container's own directories
//! read-only instead. Container root can read its limits and cannot raise them.
//!
//! Here: where the cgroup goes and what the container sees of it. Resource limits are in `limits`, moving drun into a
//! supervisor leaf in `delegate`, emptying and removing a cgroup in `remove`.

mod delegate;
mod limits;
mod remove;
mod v1;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub use limits::{check_enforced, device_cgroup_rules, tuned, ResourceLimits};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// v1 hierarchies a container sees (the combined "cpu,cpuacct" mount on most hosts, separate ones on others).
const V1_CONTROLLERS: &[&str] = &[
    "memory",
    "cpu,cpuacct",
    "cpu",
    "cpuacct",
    "pids",
    "devices",
    "cpuset",
    "blkio",
    "freezer",
];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path:?}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot prepare the cgroup {path:?}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot create the cgroup {path:?}: {CGROUP_ROOT} is read-only, as in a job container that is not \
         privileged; {}",
        crate::run::error::PRIVILEGED_HINT
    )]
    ReadOnly { path: PathBuf },
    #[error("cannot mount a private cgroup2 view at {CGROUP_ROOT}")]
    PrivateView(#[source] nix::errno::Errno),
    #[error("--require-limits: cannot enforce {limits}: {reason}")]
    Unenforced { limits: String, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    /// v1 (or hybrid): one hierarchy per controller; `memsw` says whether swap accounting exists.
    V1 {
        memsw: bool,
    },
    V2,
}

/// Who manages the container's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Real root: libcontainer creates it and applies limits and device rules.
    Root,
    /// Rootless in a delegated v2 subtree: drun creates it and writes the limits; `controllers` are those the
    /// subtree may use.
    Delegated { controllers: Vec<String> },
    /// Rootless without a cgroup of its own, and why.
    None { reason: String },
}

#[derive(Clone, Debug)]
pub struct CgroupPlan {
    pub control: Control,
    pub version: Version,
    /// The container's cgroup, relative to each hierarchy's root, e.g. `/user.slice/job/drun-0123456789ab`.
    pub path: String,
    /// A supervisor leaf drun moved itself into (v2 only), removed by a later drun once empty.
    pub supervisor: Option<String>,
    /// Why no controller reaches the container's cgroup (v2, drun's cgroup shared with other processes): limits
    /// are then reported as not enforced, as rootless without a cgroup.
    pub blocked: Option<String>,
    /// `cgroupsPath` for libcontainer: `path`, or without a cgroup of its own, a child of drun's cgroup that
    /// it cannot create (on v1 hosts in drun's private cgroup2 view, see `hide_host_hierarchy`), so libcgroups'
    /// rootless mode leaves the container where drun is and its clean-up finds nothing to remove.
    spec_path: String,
    /// v1 as root: the hierarchies where the container's cgroup is not `path` (see `v1`).
    v1_places: Vec<v1::Place>,
    /// Container cgroups of a run recorded earlier that are not at `path` (relative to /sys/fs/cgroup).
    recorded_dirs: Vec<String>,
}

pub fn detect() -> Version {
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        Version::V2
    } else {
        Version::V1 {
            memsw: Path::new(CGROUP_ROOT)
                .join("memory/memory.memsw.limit_in_bytes")
                .exists(),
        }
    }
}

/// drun's own cgroup path for `controller` (v1) or the unified hierarchy (v2), from /proc/self/cgroup.
fn own_cgroup(version: &Version) -> Result<String, CgroupError> {
    let path = PathBuf::from("/proc/self/cgroup");
    let text = crate::sys::safe_fs::read_system(&path).map_err(|source| CgroupError::Read { path, source })?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, p) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let hit = match version {
            Version::V2 => ctrls.is_empty(),
            Version::V1 { .. } => ctrls.split(',').any(|c| c == "memory"),
        };
        if hit {
            return Ok(below_mount_root(p, mount_root(version).as_deref()));
        }
    }
    Ok("/".to_string())
}

/// [`CgroupPlan::hide_host_hierarchy`] for a rootless run with no cgroup of its own on a `version` hierarchy, done
/// once, in drun's own user and mount namespace; `drun exec` into such a run passes the container's process as
/// `join`, to see the hierarchy through the cgroup namespace the run made rather than one of its own.
pub fn hide_host_hierarchy_rootless(version: &Version, join: Option<i32>) -> Result<(), CgroupError> {
    // On pure v2 libcgroups takes its rootless path by itself: the cgroup it cannot create is skipped.
    if crate::sys::userns::current().is_none() || *version == Version::V2 {
        return Ok(());
    }
    static DONE: std::sync::OnceLock<Result<(), nix::errno::Errno>> = std::sync::OnceLock::new();
    let res = DONE.get_or_init(|| {
        use nix::mount::{mount, MsFlags};
        use nix::sched::CloneFlags;
        match join {
            Some(pid) => {
                #[allow(clippy::disallowed_methods)] // the kernel's namespace file
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/cgroup"))
                    .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
                nix::sched::setns(ns, CloneFlags::CLONE_NEWCGROUP)?;
            }
            None => nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)?,
        }
        mount(
            Some("cgroup2"),
            CGROUP_ROOT,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
    });
    (*res).map_err(CgroupError::PrivateView)
}

/// The cgroup the hierarchy drun sees is mounted from, when not its root: in a CI job container without a cgroup
/// namespace (a privileged job on a cgroup v1 host), `/proc/self/cgroup` names the host's path
/// (`/libpod_parent/libpod-…`) while `/sys/fs/cgroup/memory` shows only the container's own subtree.
fn mount_root(version: &Version) -> Option<String> {
    let info = crate::sys::safe_fs::read_system(Path::new("/proc/self/mountinfo")).ok()?;
    info.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        let mut fs = fs.split(' ');
        let (kind, _source, options) = (fs.next()?, fs.next()?, fs.next().unwrap_or(""));
        let ours = match version {
            Version::V2 => kind == "cgroup2" && *point == CGROUP_ROOT,
            Version::V1 { .. } => {
                kind == "cgroup" && point.starts_with(CGROUP_ROOT) && options.split(',').any(|o| o == "memory")
            }
        };
        ours.then(|| root.to_string())
    })
}

/// `path` (from /proc/self/cgroup) relative to the hierarchy's mount root `root`.
pub(super) fn below_mount_root(path: &str, root: Option<&str>) -> String {
    match root.map(|r| r.trim_end_matches('/')).filter(|r| !r.is_empty()) {
        Some(r) if path == r => "/".to_string(),
        Some(r) => path
            .strip_prefix(r)
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(path)
            .to_string(),
        None => path.to_string(),
    }
}

/// drun's own cgroup's `cgroup.procs` (the v2 hierarchy's, or on v1 the memory hierarchy's, as `own_cgroup`
/// reads it), if it is there.
pub fn own_procs_file() -> Option<PathBuf> {
    let version = detect();
    let rel = own_cgroup(&version).ok()?;
    let mount = match version {
        Version::V2 => PathBuf::from(CGROUP_ROOT),
        Version::V1 { .. } => Path::new(CGROUP_ROOT).join("memory"),
    };
    let procs = mount.join(rel.trim_start_matches('/')).join("cgroup.procs");
    procs.exists().then_some(procs)
}

/// Whether the block device `major:minor` uses the BFQ I/O scheduler (`[bfq]` in its queue's scheduler file).
fn bfq_schedules(major: u64, minor: u64) -> bool {
    crate::sys::safe_fs::read_system(format!("/sys/dev/block/{major}:{minor}/queue/scheduler"))
        .is_ok_and(|s| s.contains("[bfq]"))
}

fn join(parent: &str, child: &str) -> String {
    format!("{}/{child}", parent.trim_end_matches('/'))
}

impl CgroupPlan {
    /// Plans the cgroup of container `short_id` and, on v2, makes sure controllers can be delegated to it.
    pub fn prepare(short_id: &str) -> Result<CgroupPlan, CgroupError> {
        let leaf = format!("drun-{short_id}");
        if crate::sys::userns::is_rootless() {
            // Decided once per process: after the first run without a cgroup, drun's own view of the hierarchy is
            // its private cgroup2 mount (see `hide_host_hierarchy`), which says nothing about the host.
            static FIRST: std::sync::OnceLock<(Version, String)> = std::sync::OnceLock::new();
            let (version, parent) = match FIRST.get() {
                Some(first) => first.clone(),
                None => {
                    let version = detect();
                    let parent = own_cgroup(&version)?;
                    FIRST.get_or_init(|| (version, parent)).clone()
                }
            };
            return Ok(Self::rootless(version, &parent, leaf));
        }
        let version = detect();
        let parent = own_cgroup(&version)?;
        let path = join(&parent, &leaf);
        let delegation = delegate::delegate(&version, &parent)?;
        let v1_places = match version {
            Version::V1 { .. } => v1::places(&path, &leaf)?,
            Version::V2 => Vec::new(),
        };
        Ok(CgroupPlan {
            control: Control::Root,
            version,
            spec_path: path.clone(),
            path,
            supervisor: delegation.supervisor,
            blocked: delegation.blocked,
            v1_places,
            recorded_dirs: Vec::new(),
        })
    }

    /// The cgroup of a run recorded earlier, for clean-up: `path`, and `dirs` (see [`dirs_to_record`]
    /// (Self::dirs_to_record)).
    pub fn existing(version: Version, path: String, dirs: Vec<String>) -> CgroupPlan {
        CgroupPlan {
            control: Control::Root,
            version,
            spec_path: path.clone(),
            path,
            supervisor: None,
            blocked: None,
            v1_places: Vec::new(),
            recorded_dirs: dirs,
        }
    }

    /// The container's cgroups that are not at `path` (v1: below drun's own cgroup of another hierarchy), relative
    /// to /sys/fs/cgroup, for the run's record.
    pub fn dirs_to_record(&self) -> Vec<String> {
        self.v1_places
            .iter()
            .filter(|p| !p.stays)
            .filter_map(|p| {
                let dir = p.dir();
                let rel = dir.strip_prefix(CGROUP_ROOT).ok()?;
                Some(rel.to_string_lossy().into_owned())
            })
            .collect()
    }

    /// v1 as root, once libcontainer has created the container and before it starts: moves its init `pid` into
    /// its cgroup of each hierarchy where that is not `path` (see `v1`).
    pub fn settle(&self, pid: i32) -> Result<(), CgroupError> {
        if self.control != Control::Root || self.v1_places.is_empty() {
            return Ok(());
        }
        v1::settle(&self.path, &self.v1_places, pid)
    }

    fn rootless(version: Version, parent: &str, leaf: String) -> CgroupPlan {
        let path = join(parent, &leaf);
        let none = |reason: String| CgroupPlan {
            control: Control::None { reason },
            version: version.clone(),
            path: String::new(),
            supervisor: None,
            blocked: None,
            v1_places: Vec::new(),
            recorded_dirs: Vec::new(),
            spec_path: if version == Version::V2 {
                join(parent, &leaf)
            } else {
                format!("/{leaf}")
            },
        };
        if version != Version::V2 {
            return none("this host uses cgroup v1, whose hierarchies cannot be delegated to an ordinary user".into());
        }
        let dir = Path::new(CGROUP_ROOT).join(parent.trim_start_matches('/'));
        let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
        if parent == "/" || !writable(&dir) || !writable(&dir.join("cgroup.procs")) {
            return none(format!(
                "drun's cgroup {} is not delegated to you (not writable); run under `systemd-run --user --scope` \
                 or in a job whose cgroup is delegated",
                dir.display()
            ));
        }
        match delegate::delegate(&version, parent) {
            Ok(delegation) => {
                let controllers = crate::sys::safe_fs::read_system(dir.join("cgroup.subtree_control"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                CgroupPlan {
                    control: Control::Delegated { controllers },
                    version,
                    spec_path: path.clone(),
                    path,
                    supervisor: delegation.supervisor,
                    blocked: delegation.blocked,
                    v1_places: Vec::new(),
                    recorded_dirs: Vec::new(),
                }
            }
            Err(e) => none(format!("cannot use the delegated cgroup {}: {e}", dir.display())),
        }
    }

    /// Rootless without a cgroup on a v1 or hybrid host: libcgroups' v1 manager would fail to move the container
    /// into a cgroup it cannot write. In drun's own mount namespace, a cgroup namespace and a fresh cgroup2 mount
    /// at /sys/fs/cgroup make it take its rootless v2 path, which leaves the container in drun's cgroup.
    pub fn hide_host_hierarchy(&self) -> Result<(), CgroupError> {
        if !matches!(self.control, Control::None { .. }) {
            return Ok(());
        }
        hide_host_hierarchy_rootless(&self.version, None)
    }

    /// `cgroupsPath` for the spec.
    pub fn spec_path(&self) -> &str {
        &self.spec_path
    }

    /// Host directories of the container's cgroup (one per v1 hierarchy, or the single v2 one).
    pub fn host_dirs(&self) -> Vec<(PathBuf, String)> {
        if matches!(self.control, Control::None { .. }) {
            return Vec::new();
        }
        let rel = self.path.trim_start_matches('/');
        match self.version {
            Version::V2 => vec![(Path::new(CGROUP_ROOT).join(rel), CGROUP_ROOT.to_string())],
            Version::V1 { .. } => V1_CONTROLLERS
                .iter()
                // Real mounts only: "cpu" and "cpuacct" are often symlinks to "cpu,cpuacct".
                .filter(|c| std::fs::symlink_metadata(Path::new(CGROUP_ROOT).join(c)).is_ok_and(|m| m.is_dir()))
                .map(|c| {
                    let mount = Path::new(CGROUP_ROOT).join(c);
                    let dir = match self.v1_places.iter().find(|p| p.mount == mount) {
                        Some(place) => place.dir(),
                        None => mount.join(rel),
                    };
                    (dir, format!("{CGROUP_ROOT}/{c}"))
                })
                .collect(),
        }
    }

    /// Creates the cgroup directories before libcontainer runs, so the read-only bind mounts have a source.
    pub fn create_dirs(&self, limits: &ResourceLimits) -> Result<(), CgroupError> {
        for (dir, _) in self.host_dirs() {
            crate::sys::safe_fs::create_dir_all_mode(&dir, 0o755).map_err(|source| {
                if source.raw_os_error() == Some(libc::EROFS) {
                    CgroupError::ReadOnly { path: dir.clone() }
                } else {
                    CgroupError::Write {
                        path: dir.clone(),
                        source,
                    }
                }
            })?;
            // libcgroups (0.7) never writes a v2 `memory.swap.max` of 0 (it treats 0 as "unset"), so "no extra
            // swap" is set here; libcontainer leaves it alone afterwards.
            if self.version == Version::V2 && limits.memory.is_some() && limits.memswap.is_none() {
                let f = dir.join("memory.swap.max");
                if f.exists() {
                    crate::sys::safe_fs::write_system(&f, "0")
                        .map_err(|source| CgroupError::Write { path: f, source })?;
                }
            }
        }
        Ok(())
    }

    /// Whether the container's cgroup has a block I/O weight file (`blkio.weight`/`io.weight`, or BFQ's): block
    /// I/O weights need one. Looked at once its directories exist.
    pub fn has_io_weight(&self) -> bool {
        let files: &[&str] = match self.version {
            Version::V2 => &["io.weight", "io.bfq.weight"],
            Version::V1 { .. } => &["blkio.weight", "blkio.bfq.weight"],
        };
        self.host_dirs()
            .iter()
            .filter(|(_, inside)| self.version == Version::V2 || inside.ends_with("/blkio"))
            .any(|(dir, _)| files.iter().any(|f| dir.join(f).exists()))
    }

    /// What libcgroups (0.7) leaves undone on v1, as root, for drun to write into the container's cgroup once it is
    /// set up and before the container starts: `memory.oom_control` for `--oom-kill-disable` (libcgroups writes it
    /// from a setting libcontainer never fills in, always "enabled") and the per-device weights of
    /// `--blkio-weight-device` (which its v1 controller never writes).
    pub fn v1_writes(&self, tuning: &crate::plan::CgroupTuning) -> Vec<(PathBuf, String)> {
        if self.control != Control::Root || self.blocked.is_some() || self.version == Version::V2 {
            return Vec::new();
        }
        let dir = |controller: &str| {
            self.host_dirs()
                .into_iter()
                .find(|(_, inside)| inside.ends_with(&format!("/{controller}")))
                .map(|(dir, _)| dir)
        };
        let mut writes = Vec::new();
        if let (true, Some(d)) = (tuning.oom_kill_disable, dir("memory")) {
            writes.push((d.join("memory.oom_control"), "1".to_string()));
        }
        if let (false, Some(d)) = (tuning.blkio_weight_device.is_empty(), dir("blkio")) {
            let file = ["blkio.weight_device", "blkio.bfq.weight_device"]
                .iter()
                .map(|f| d.join(f))
                .find(|f| f.exists());
            // Without a weight file, `limits::tuned` has warned that weights are ignored.
            if let Some(f) = file {
                for w in &tuning.blkio_weight_device {
                    let (major, minor) = (w.device.major, w.device.minor);
                    // BFQ's file takes weights only for devices it schedules (the kernel answers EOPNOTSUPP).
                    if f.ends_with("blkio.bfq.weight_device") && !bfq_schedules(major, minor) {
                        tracing::warn!(
                            "the block device {major}:{minor} is not scheduled by BFQ: its weight \
                             (--blkio-weight-device, blkio_weight_device) is ignored"
                        );
                        continue;
                    }
                    writes.push((f.clone(), format!("{major}:{minor} {}", w.value)));
                }
            }
        }
        writes
    }

    /// The spec mounts that show the container its own cgroup, read-only.
    pub fn container_mounts(&self) -> Vec<Value> {
        let mut out = Vec::new();
        if matches!(self.control, Control::None { .. }) {
            return out;
        }
        if matches!(self.version, Version::V1 { .. }) {
            out.push(json!({"destination": CGROUP_ROOT, "type": "tmpfs", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "mode=755"]}));
        }
        for (src, dst) in self.host_dirs() {
            out.push(json!({"destination": dst, "type": "bind", "source": src, "options": ["bind", "ro", "nosuid", "noexec", "nodev"]}));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_mounted_from_a_subtree_is_named_below_it() {
        let job = "/libpod_parent/libpod-0189";
        assert_eq!(below_mount_root(job, Some(job)), "/");
        assert_eq!(below_mount_root(&format!("{job}/step"), Some(job)), "/step");
        assert_eq!(below_mount_root("/user.slice/x", Some("/")), "/user.slice/x");
        assert_eq!(
            below_mount_root("/libpod_parentx", Some("/libpod_parent")),
            "/libpod_parentx"
        );
        assert_eq!(below_mount_root("/a", None), "/a");
    }
}
