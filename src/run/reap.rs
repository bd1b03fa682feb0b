//! Ending every process of a container before anything is copied out of it.
//!
//! With its own pid namespace, a container's processes die with its init. With `--pid host` (the default in a
//! Slurm job) they outlive it: a background process could still be swapping directories for symlinks while drun
//! copies artifacts. So drun kills its cgroup until it is empty, and, because a rootless run may have no cgroup
//! and `setsid` escapes a process group, it is also the child subreaper of the container: every orphaned
//! descendant becomes drun's child, and drun kills and reaps its children until none is left.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::run::cgroups::CgroupPlan;

/// How long drun keeps killing before it gives up (and copies nothing).
const DEADLINE: Duration = Duration::from_secs(10);

/// drun's children from before the container existed (a batch script's `monitor & exec drun run …` hands its
/// background processes to drun): never the container's, so never killed or reaped by the sweep.
pub struct Inherited(Vec<i32>);

/// Makes drun the reaper of the container's orphaned processes (they would go to the host's init otherwise), and
/// notes the children it already has.
pub fn become_subreaper() -> std::io::Result<Inherited> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only changes this process's own attribute.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Inherited(children_of(nix::unistd::getpid().as_raw())))
}

/// Kills the container's init if it still runs (`init`), empties its cgroup, then kills and reaps drun's
/// children (the container's orphans, drun being their subreaper) until there are none. True when nothing of the
/// container is left.
pub fn end_all(init: Option<Pid>, cgroup: &CgroupPlan, inherited: Option<&Inherited>) -> bool {
    let deadline = Instant::now() + DEADLINE;
    if let Some(pid) = init {
        let _ = kill(pid, Signal::SIGKILL);
    }
    let cgroup_empty = cgroup.kill_and_wait(deadline);
    let swept = inherited.is_none_or(|i| sweep_children(deadline, &i.0));
    cgroup_empty && swept
}

/// Kills and reaps every child of drun but the `inherited` ones until it has no other (new orphans keep arriving
/// while their parents die). Each is reaped by its pid, never with `waitpid(-1)`.
fn sweep_children(deadline: Instant, inherited: &[i32]) -> bool {
    let me = nix::unistd::getpid().as_raw();
    let ours = || -> Vec<i32> { children_of(me).into_iter().filter(|c| !inherited.contains(c)).collect() };
    loop {
        let children = ours();
        if children.is_empty() {
            return true;
        }
        for &c in &children {
            let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
        }
        for &c in &children {
            while let Err(nix::errno::Errno::EINTR) =
                waitpid(Pid::from_raw(c), Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL))
            {}
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                left = children.len(),
                "processes of the container are still alive after SIGKILL"
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Processes whose parent is `parent`, from /proc (`/proc/PID/task/TID/children` needs CONFIG_PROC_CHILDREN and
/// lists each thread's own children only).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| crate::run::state::parent_pid(pid) == Some(parent))
        .collect()
}
