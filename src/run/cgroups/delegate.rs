//! On cgroup v2, a cgroup with processes cannot delegate controllers to children: when drun's own cgroup has
//! processes (drun at least), drun moves itself into a `drun.supervisor-<pid>` leaf beside the container's cgroup.

use std::path::Path;

use super::{join, CgroupError, Version, CGROUP_ROOT};

/// On v2, makes sure `parent` can delegate controllers to a child: when it has processes (drun at least), drun
/// moves itself into a leaf beside the container's cgroup first. Returns that leaf.
pub(super) fn delegate(version: &Version, parent: &str) -> Result<Option<String>, CgroupError> {
    if *version != Version::V2 || parent == "/" {
        return Ok(None);
    }
    let dir = Path::new(CGROUP_ROOT).join(parent.trim_start_matches('/'));
    if enable_controllers(&dir).is_ok() {
        return Ok(None);
    }
    let leaf = join(parent, &format!("drun.supervisor-{}", std::process::id()));
    let leaf_dir = Path::new(CGROUP_ROOT).join(leaf.trim_start_matches('/'));
    crate::sys::safe_fs::create_dir_all_mode(&leaf_dir, 0o755).map_err(|source| CgroupError::Write {
        path: leaf_dir.clone(),
        source,
    })?;
    let procs = leaf_dir.join("cgroup.procs");
    crate::run::warmup::move_self(&procs).map_err(|source| CgroupError::Write { path: procs, source })?;
    enable_controllers(&dir).map_err(|source| CgroupError::Write {
        path: dir.join("cgroup.subtree_control"),
        source,
    })?;
    Ok(Some(leaf))
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
