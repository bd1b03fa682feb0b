//! `--dry-run`: what each job would run, as text for the command to print (image and digest from the store,
//! argv, environment, mounts, limits, artifacts, log). Runs nothing and writes nothing.

use std::fmt::Write;
use std::path::Path;

use super::WorkflowJob;
use crate::gpu::select::Selector;
use crate::image::store::Store;
use crate::plan::{MountSpec, RunPlan};

/// The plan of `job` as lines of `key: value` under `workflow NAME`.
pub fn describe(store: &Store, job: &WorkflowJob, plan: &RunPlan, artifacts_root: &Path) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_plan(&mut out, store, job, plan, artifacts_root);
    out
}

fn write_plan(
    out: &mut String,
    store: &Store,
    job: &WorkflowJob,
    plan: &RunPlan,
    artifacts_root: &Path,
) -> std::fmt::Result {
    writeln!(out, "workflow {}", job.name)?;
    let record = store.image_by_alias(&plan.image).ok().flatten().or_else(|| {
        let names = crate::image::source::lookup_names(&plan.image);
        store.find_image(&plan.image, &names).ok()
    });
    match &record {
        Some(r) => writeln!(out, "  image:       {} ({}@{})", plan.image, r.name, r.manifest_digest)?,
        None => writeln!(
            out,
            "  image:       {} (not in the store: pulled when the workflow runs)",
            plan.image
        )?,
    }
    if plan.entrypoint.is_none() && plan.command.is_none() {
        writeln!(out, "  argv:        (the image's Entrypoint and Cmd)")?;
    } else {
        let argv: Vec<&String> = plan
            .entrypoint
            .iter()
            .flatten()
            .chain(plan.command.iter().flatten())
            .collect();
        writeln!(
            out,
            "  argv:        {}",
            serde_json::to_string(&argv).unwrap_or_default()
        )?;
    }
    if plan.init {
        writeln!(
            out,
            "  init:        catatonit (Ctrl-C reaches the whole command's process group)"
        )?;
    }
    writeln!(out, "  working_dir: {}", job.working_dir)?;
    if !job.deps.is_empty() {
        writeln!(out, "  deps:        {}", job.deps.join(", "))?;
    }
    for (k, v) in &plan.env {
        writeln!(out, "  env:         {k}={v}")?;
    }
    for m in &plan.mounts {
        match m {
            MountSpec::Bind {
                source,
                destination,
                read_only,
            } => writeln!(
                out,
                "  mount:       {} -> {destination}{}",
                source.display(),
                if *read_only { " (ro)" } else { "" }
            )?,
            MountSpec::Tmpfs { destination, options } => {
                writeln!(out, "  mount:       tmpfs -> {destination} {}", options.join(","))?
            }
            MountSpec::Overlay { source, destination } => writeln!(
                out,
                "  mount:       {} -> {destination} (copy-on-write)",
                source.display()
            )?,
        }
    }
    for (k, v) in &plan.labels {
        writeln!(out, "  label:       {k}={v}")?;
    }
    if let Some(c) = plan.cpus {
        writeln!(out, "  cpus:        {c}")?;
    }
    if let Some(m) = plan.memory {
        writeln!(out, "  memory:      {} ({} bytes)", m, m.0)?;
    }
    if let Some(s) = plan.shm_size {
        writeln!(out, "  shm_size:    {} ({} bytes)", s, s.0)?;
    }
    if let Some(g) = &plan.gpus {
        writeln!(
            out,
            "  gpus:        {}{}{}",
            match &g.selector {
                Selector::All => "all".to_string(),
                Selector::Count(n) => n.to_string(),
                Selector::Ids(ids) => ids.join(","),
            },
            g.name.as_ref().map(|n| format!(" name~{n:?}")).unwrap_or_default(),
            g.memory_mib.map(|m| format!(" memory>={m}MiB")).unwrap_or_default()
        )?;
    }
    for d in &plan.host_devices {
        writeln!(
            out,
            "  device:      {} -> {} ({})",
            d.host.display(),
            d.container,
            d.access.letters()
        )?;
    }
    for d in &plan.devices {
        writeln!(out, "  device:      {d} (CDI)")?;
    }
    if plan.rdma {
        writeln!(
            out,
            "  rdma:        the host's /dev/infiniband devices, RLIMIT_MEMLOCK raised"
        )?;
    }
    for a in &job.artifacts {
        writeln!(
            out,
            "  artifact:    {}/{} -> {}{}",
            job.working_dir,
            a.path,
            artifacts_root.join(&job.name).join(&a.path).display(),
            if a.mount { " (mounted)" } else { "" }
        )?;
    }
    writeln!(
        out,
        "  log:         {}",
        artifacts_root.join(format!("{}.log", job.name)).display()
    )
}
