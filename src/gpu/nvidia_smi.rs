//! Asking the driver's `nvidia-smi` (run as a separate process) what `/proc` does not say: each GPU's memory.
//! Best effort: a host without a working nvidia-smi leaves the sizes unknown.

use super::driver::{host_path, Driver};

/// Fills in memory sizes from `nvidia-smi`. Returns false when it could not answer.
pub fn query_memory(driver: &mut Driver) -> bool {
    let Some((smi, _)) = driver.binaries.iter().find(|(b, _)| b.ends_with("/nvidia-smi")) else {
        return false;
    };
    let out = std::process::Command::new(host_path(&driver.root, smi))
        .args([
            "--query-gpu=index,uuid,name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else { return false };
    if !out.status.success() {
        return false;
    };
    let mut any = false;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if let [_, uuid, _, mem, ..] = f.as_slice() {
            if let (Some(g), Ok(m)) = (driver.gpus.iter_mut().find(|g| g.uuid == *uuid), mem.parse::<u64>()) {
                g.memory_mib = Some(m);
                any = true;
            }
        }
    }
    any
}
