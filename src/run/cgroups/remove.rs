//! Emptying and removing a container's cgroup: SIGKILL until no process is left, then rmdir deepest first.

use std::path::{Path, PathBuf};

use super::{CgroupPlan, Version, CGROUP_ROOT};

impl CgroupPlan {
    /// Removes the container's cgroup directories (after killing anything left in them) and an empty supervisor
    /// leaf of a dead drun. Used for clean-up after a crash; a normal run's cgroup goes with libcontainer's delete.
    pub fn remove(&self) {
        if self.path.is_empty() {
            return;
        }
        let dirs = self.all_dirs();
        // An empty cgroup (the usual case: the container's init was reaped, and its pid namespace with it) goes at
        // once; one with processes or child cgroups refuses (EBUSY) and is emptied first.
        let busy: Vec<&PathBuf> = dirs
            .iter()
            .filter(|d| std::fs::remove_dir(d).is_err() && d.is_dir())
            .collect();
        if busy.is_empty() {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        self.kill_and_wait(deadline);
        // Killed processes leave their cgroup a moment later; rmdir fails (EBUSY) until then.
        for dir in busy {
            while !remove_cgroup_tree(dir) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// The container's cgroup in every hierarchy: libcontainer creates it in each v1 hierarchy, not only the ones
    /// the container sees; on v1 also those below drun's own cgroup of another hierarchy (never drun's own).
    fn all_dirs(&self) -> Vec<PathBuf> {
        let rel = self.path.trim_start_matches('/');
        match self.version {
            Version::V2 => vec![Path::new(CGROUP_ROOT).join(rel)],
            Version::V1 { .. } => {
                let mut dirs: Vec<PathBuf> = std::fs::read_dir(CGROUP_ROOT)
                    .map(|rd| {
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path().join(rel))
                            .collect()
                    })
                    .unwrap_or_default();
                let others = self
                    .dirs_to_record()
                    .into_iter()
                    .chain(self.recorded_dirs.iter().cloned());
                dirs.extend(others.map(|d| Path::new(CGROUP_ROOT).join(d)));
                dirs.sort();
                dirs.dedup();
                dirs
            }
        }
    }

    /// SIGKILLs every process of the container's cgroup, again and again (a process may fork while it is being
    /// killed), until none is left; false if some still are at `deadline`. v2's `cgroup.kill` (Linux ≥ 5.14)
    /// kills the whole subtree at once, forks in flight included.
    pub fn kill_and_wait(&self, deadline: std::time::Instant) -> bool {
        if self.path.is_empty() {
            return true;
        }
        let dirs = self.all_dirs();
        loop {
            let mut busy = false;
            for dir in &dirs {
                if has_processes(dir) {
                    busy = true;
                    if crate::sys::safe_fs::write_system(dir.join("cgroup.kill"), "1").is_err() {
                        kill_all(dir);
                    }
                }
            }
            if !busy {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Whether a cgroup directory or one below it has a process (exited ones leave `cgroup.procs` at once).
fn has_processes(dir: &Path) -> bool {
    let own = crate::sys::safe_fs::read_system(dir.join("cgroup.procs"))
        .is_ok_and(|p| p.lines().any(|l| !l.trim().is_empty()));
    own || std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()) && has_processes(&e.path()))
    })
}

/// Removes a cgroup directory and the cgroups below it, deepest first; true once it is gone.
fn remove_cgroup_tree(dir: &Path) -> bool {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.is_dir()
}

/// SIGKILLs every process of a cgroup directory (and its children), best effort.
fn kill_all(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_all(&e.path());
            }
        }
    }
    if let Ok(procs) = crate::sys::safe_fs::read_system(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
