//! The size of the container's /dev/shm: the plan's `--shm-size`, else its memory limit, else half of RAM (what
//! a host's /dev/shm gets). Docker's 64 MiB default is the classic cause of PyTorch DataLoader bus errors.

use crate::plan::{RunPlan, Sharing};

/// `/dev/shm` size in bytes for a private IPC namespace.
pub fn shm_bytes(plan: &RunPlan) -> u64 {
    if let Some(s) = plan.shm_size {
        return s.0;
    }
    if let Some(m) = plan.memory {
        return m.0;
    }
    half_of_ram()
}

/// Half of the host's memory: what a tmpfs gets by default (`/dev/shm`, a writable layer kept in memory).
pub fn half_of_ram() -> u64 {
    let total_kib = crate::sys::safe_fs::read_system("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(2 << 20);
    total_kib * 1024 / 2
}

/// A size asked for that cannot be had: with the host's IPC namespace the container uses the host's /dev/shm.
pub fn warn_if_unsized(plan: &RunPlan) {
    if let (Some(size), Sharing::Host) = (plan.shm_size, plan.ipc_mode()) {
        tracing::warn!("--shm-size {size} is NOT applied: with --ipc host the container uses the host's /dev/shm");
    }
}
