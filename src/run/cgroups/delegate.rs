//! On cgroup v2, a cgroup with processes cannot delegate controllers to children (the "no internal processes"
//! rule): when drun's own cgroup has processes, drun moves itself into a `drun.supervisor-<pid>` leaf beside the
//! container's cgroup first. When other processes share that cgroup too (a CI job container, a batch script's
//! shell in a Slurm task or an ssh session's scope), no controller can be delegated at all: the container still
//! gets a cgroup of its own, without limits, and [`Delegation::blocked`] says why.

use std::path::Path;

use super::{join, CgroupError, Version, CGROUP_ROOT};

/// What [`delegate`] could arrange.
#[derive(Debug, Default)]
pub(super) struct Delegation {
    /// The leaf drun moved itself into, removed by a later drun once empty.
    pub supervisor: Option<String>,
    /// Why no controller can be enabled for the container's cgroup, when none can.
    pub blocked: Option<String>,
}

/// On v2, makes sure `parent` can delegate controllers to a child: when it has processes (drun at least), drun
/// moves itself into a leaf beside the container's cgroup first.
pub(super) fn delegate(version: &Version, parent: &str) -> Result<Delegation, CgroupError> {
    if *version != Version::V2 || parent == "/" {
        return Ok(Delegation::default());
    }
    let dir = Path::new(CGROUP_ROOT).join(parent.trim_start_matches('/'));
    if enable_controllers(&dir).is_ok() {
        return Ok(Delegation::default());
    }
    // Moving drun out helps only when drun is the cgroup's one process.
    if others_in(&dir) {
        return Ok(Delegation {
            supervisor: None,
            blocked: Some(shared_reason(&dir)),
        });
    }
    let leaf = join(parent, &format!("drun.supervisor-{}", std::process::id()));
    let leaf_dir = Path::new(CGROUP_ROOT).join(leaf.trim_start_matches('/'));
    crate::sys::safe_fs::create_dir_all_mode(&leaf_dir, 0o755).map_err(|source| CgroupError::Write {
        path: leaf_dir.clone(),
        source,
    })?;
    let procs = leaf_dir.join("cgroup.procs");
    crate::run::warmup::move_self(&procs).map_err(|source| CgroupError::Write { path: procs, source })?;
    match enable_controllers(&dir) {
        Ok(()) => Ok(Delegation {
            supervisor: Some(leaf),
            blocked: None,
        }),
        // A process entered the cgroup meanwhile.
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => Ok(Delegation {
            supervisor: Some(leaf),
            blocked: Some(shared_reason(&dir)),
        }),
        Err(source) => Err(CgroupError::Write {
            path: dir.join("cgroup.subtree_control"),
            source,
        }),
    }
}

fn shared_reason(dir: &Path) -> String {
    format!(
        "drun runs in the cgroup {}, which other processes share, and cgroup v2 lets a cgroup with processes \
         delegate no controller; start drun in a cgroup of its own (`systemd-run --scope drun …`, or move the \
         job's processes into a leaf cgroup first)",
        dir.display()
    )
}

/// Whether processes other than drun are in the cgroup `dir` (its `cgroup.procs` lists thread-group ids, so
/// drun's own threads count as drun).
fn others_in(dir: &Path) -> bool {
    let me = std::process::id().to_string();
    crate::sys::safe_fs::read_system(dir.join("cgroup.procs"))
        .map(|procs| procs.split_whitespace().any(|p| p != me))
        .unwrap_or(false)
}

fn enable_controllers(dir: &Path) -> std::io::Result<()> {
    let available = crate::sys::safe_fs::read_system(dir.join("cgroup.controllers"))?;
    let want: Vec<String> = ["cpu", "memory", "pids", "io", "cpuset"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    crate::sys::safe_fs::write_system(dir.join("cgroup.subtree_control"), want.join(" "))
}
