//! The HPC side: GPUs (the same discovery `drun run --gpus` uses), RDMA devices, and the Slurm context drun would
//! pass into a container here: the job and step, the PMI-2/PMIx rendezvous, the training variables.

use std::path::Path;

use super::{Check, Status};
use crate::plan::host_env::{self, HostEnvOptions};

const SECTION: &str = "hpc";

pub(super) fn checks() -> Vec<Check> {
    let host = host_env::process_env();
    let mut out = vec![gpus(), rdma()];
    out.extend(slurm(&host));
    out
}

fn gpus() -> Check {
    let root = crate::gpu::driver_root();
    match crate::gpu::discover(&root) {
        Ok(Some(d)) if !d.gpus.is_empty() => {
            let mut models: Vec<&str> = d.gpus.iter().map(|g| g.model.as_str()).collect();
            models.dedup();
            Check::new(
                SECTION,
                "GPUs",
                Status::Ok,
                format!("{} ({}), NVIDIA driver {}", d.gpus.len(), models.join(", "), d.version),
            )
        }
        Ok(_) => Check::new(SECTION, "GPUs", Status::Note, "none (no NVIDIA driver with GPUs)"),
        Err(e) => Check::new(
            SECTION,
            "GPUs",
            Status::Warn,
            format!("cannot read the NVIDIA driver: {e}"),
        )
        .fix("check the driver's installation (`nvidia-smi`)"),
    }
}

fn rdma() -> Check {
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let nodes = names("/dev/infiniband");
    let devices = names("/sys/class/infiniband");
    match (devices.is_empty(), nodes.is_empty()) {
        (true, true) => Check::new(SECTION, "RDMA", Status::Note, "none (no /dev/infiniband)"),
        (false, false) => Check::new(
            SECTION,
            "RDMA",
            Status::Ok,
            format!("{} (/dev/infiniband: {})", devices.join(", "), nodes.join(", ")),
        ),
        (false, true) => Check::new(
            SECTION,
            "RDMA",
            Status::Warn,
            format!(
                "{} in /sys/class/infiniband, but no /dev/infiniband nodes",
                devices.join(", ")
            ),
        )
        .fix("load the user-space access modules: `modprobe ib_uverbs rdma_ucm`"),
        (true, false) => Check::new(
            SECTION,
            "RDMA",
            Status::Warn,
            format!(
                "/dev/infiniband ({}) without devices in /sys/class/infiniband",
                nodes.join(", ")
            ),
        )
        .fix("check the RDMA driver (`ibv_devices`, `rdma link`)"),
    }
}

fn slurm(host: &[(String, String)]) -> Vec<Check> {
    let get = |name: &str| host.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let Some(job) = get("SLURM_JOB_ID") else {
        return vec![Check::new(SECTION, "Slurm", Status::Note, "not in a Slurm job")];
    };
    let mut job_text = format!("job {job}");
    match (get("SLURM_STEP_ID"), get("SLURM_PROCID")) {
        (Some(step), Some(rank)) => job_text += &format!(", step {step}, task {rank}"),
        _ => job_text += ", outside a step (batch script or salloc shell)",
    }
    if let Some(nodes) = get("SLURM_STEP_NODELIST").or(get("SLURM_JOB_NODELIST")) {
        job_text += &format!(", nodes {nodes}");
    }
    let passed = host.iter().filter(|(k, _)| host_env::is_slurm_variable(k)).count();
    job_text += &format!("; {passed} SLURM_*/PMI_*/PMIX_* variables pass into containers");
    let mut out = vec![Check::new(SECTION, "Slurm", Status::Ok, job_text)];
    out.push(mpi(host));

    let (env, warnings) = host_env::host_env(host, &[], HostEnvOptions::default(), &crate::plan::slurm_env::node_addr);
    let training: Vec<String> = env
        .job
        .iter()
        .filter(|(k, _)| crate::plan::slurm_env::TRAINING_VARS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push(if !warnings.is_empty() {
        Check::new(SECTION, "training env", Status::Warn, warnings.join("; "))
            .fix("make `scontrol show node` work on this node, or pass -e MASTER_ADDR=… to drun run")
    } else if training.is_empty() {
        Check::new(
            SECTION,
            "training env",
            Status::Note,
            "none outside a step (run drun under srun)",
        )
    } else {
        Check::new(SECTION, "training env", Status::Ok, training.join(" "))
    });
    out
}

/// Which MPI rendezvous Slurm offers this task: PMI-2's inherited descriptor, a PMIx server.
fn mpi(host: &[(String, String)]) -> Check {
    let get = |name: &str| host.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut found = Vec::new();
    if let Some(t) = get("SLURM_MPI_TYPE") {
        found.push(format!("SLURM_MPI_TYPE={t}"));
    }
    if let Some(fd) = get("PMI_FD") {
        found.push(format!("PMI-2 (PMI_FD={fd})"));
    }
    let uris: Vec<&str> = host
        .iter()
        .filter(|(k, _)| k.starts_with("PMIX_SERVER_URI"))
        .map(|(k, _)| k.as_str())
        .collect();
    if !uris.is_empty() {
        found.push(format!("PMIx ({})", uris.join(", ")));
    }
    if let Some(dir) = get("PMIX_SERVER_TMPDIR") {
        let there = if Path::new(dir).is_dir() { "present" } else { "missing" };
        found.push(format!("PMIX_SERVER_TMPDIR={dir:?} ({there})"));
    }
    if found.is_empty() {
        Check::new(SECTION, "MPI", Status::Note, "no PMI-2 or PMIx server in this step")
            .fix("for MPI programs launch with `srun --mpi=pmix` or `srun --mpi=pmi2`")
    } else {
        Check::new(SECTION, "MPI", Status::Ok, found.join(", "))
    }
}
