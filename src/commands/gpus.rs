//! `drun gpus`: the NVIDIA GPUs drun finds, from the driver (under DRUN_DRIVER_ROOT) and from CDI specs.

use anyhow::Result;

use crate::cli::GpusArgs;
use crate::gpu::{self, cdi};

pub fn execute(a: GpusArgs) -> Result<i32> {
    let root = gpu::driver_root();
    let mut driver = gpu::discover(&root)?;
    if let Some(d) = driver.as_mut() {
        gpu::query_memory(d);
    }
    let dirs = cdi::spec_dirs(&a.cdi_spec_dir);
    let mut specs = cdi::Specs::load(&dirs);
    let cdi_devices: Vec<String> = specs
        .devices()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}=", cdi::NVIDIA_KIND)))
        .collect();
    let gpus = driver.as_ref().map(|d| d.gpus.clone()).unwrap_or_default();
    let version = driver.as_ref().map(|d| d.version.clone()).unwrap_or_default();
    let sources: Vec<&str> = gpus
        .iter()
        .map(|g| {
            if specs.gpu_name(g).is_some() {
                "CDI"
            } else {
                "discovery"
            }
        })
        .collect();
    let source = |g: &gpu::Gpu| sources[g.index];
    if a.json {
        let list: Vec<serde_json::Value> = gpus
            .iter()
            .map(|g| {
                let mut v = serde_json::to_value(g).expect("serialises");
                v["driver_version"] = version.clone().into();
                v["source"] = source(g).into();
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"gpus": list, "cdi_devices": cdi_devices}))?
        );
        return Ok(0);
    }
    if gpus.is_empty() && cdi_devices.is_empty() {
        eprintln!(
            "no NVIDIA GPU found (no driver under {}, no {} device in {})",
            gpu::host_path(&root, "/proc/driver/nvidia/gpus").display(),
            cdi::NVIDIA_KIND,
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(0);
    }
    println!(
        "{:<6} {:<28} {:<42} {:>10} {:>6} {:<12} SOURCE",
        "INDEX", "NAME", "UUID", "MEMORY", "MINOR", "DRIVER"
    );
    for g in &gpus {
        println!(
            "{:<6} {:<28} {:<42} {:>10} {:>6} {:<12} {}",
            g.index,
            g.model,
            g.uuid,
            g.memory_mib.map(|m| format!("{m} MiB")).unwrap_or_else(|| "-".into()),
            g.minor,
            if version.is_empty() { "-" } else { &version },
            source(g)
        );
    }
    if gpus.is_empty() {
        for d in &cdi_devices {
            println!("{d} (CDI; no driver information under {})", root.display());
        }
    }
    Ok(0)
}
