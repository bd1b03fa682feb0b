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
    if let Some(setup) = &plan.setup {
        // Whether it is kept already depends on the image's ID and the requirements' bytes: known at run time.
        writeln!(
            out,
            "  setup:       {} (run once, kept as a layer{})",
            serde_json::to_string(&setup.script).unwrap_or_default(),
            if setup.no_cache {
                "; built again: --no-cache"
            } else {
                ""
            }
        )?;
        if !setup.env.is_empty() {
            let env: Vec<String> = setup.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(out, "  setup env:   {}", env.join(" "))?;
        }
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
    for line in docker_lines(plan) {
        writeln!(out, "  {line}")?;
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
    if let Some(h) = crate::run::health::effective(&plan.health, None) {
        writeln!(out, "  health:      {}", health_line(&h))?;
    }
    for svc in &job.services {
        let mut argv = svc.entrypoint.clone().unwrap_or_default();
        argv.extend(svc.command.iter().flatten().cloned());
        writeln!(
            out,
            "  service:     {} ({}){}",
            svc.name,
            svc.image,
            if argv.is_empty() {
                String::new()
            } else {
                format!(
                    " {}",
                    shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default()
                )
            }
        )?;
        for (k, v) in &svc.env {
            writeln!(out, "    env:       {k}={v}")?;
        }
        if let Some(h) = crate::run::health::effective(&svc.health, None) {
            writeln!(out, "    health:    {}", health_line(&h))?;
        }
        writeln!(
            out,
            "    log:       {}",
            super::services::log_path(artifacts_root, &job.name, &svc.name).display()
        )?;
    }
    writeln!(
        out,
        "  log:         {}",
        artifacts_root.join(format!("{}.log", job.name)).display()
    )
}

/// A health check in one line: its test, then its timing.
fn health_line(h: &crate::run::health::HealthConfig) -> String {
    use crate::run::health::{human_duration, HealthTest};
    let test = match &h.test {
        HealthTest::Cmd(argv) => shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default(),
        HealthTest::Shell(c) => format!("/bin/sh -c {c:?}"),
        HealthTest::None => "none".into(),
    };
    format!(
        "{test} every {}, timeout {}, {} retries, start period {}",
        human_duration(h.interval),
        human_duration(h.timeout),
        h.retries,
        human_duration(h.start_period)
    )
}

/// The docker-py settings of a plan that are set, one `key: value` line each (docker-py's names).
fn docker_lines(plan: &crate::plan::RunPlan) -> Vec<String> {
    let t = &plan.tuning;
    let mut lines = Vec::new();
    let mut add = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            let key = format!("{key}:");
            lines.push(format!("{key:<12} {v}"));
        }
    };
    add("cpu_shares", t.cpu_shares.map(|v| v.to_string()));
    add("cpu_period", t.cpu_period.map(|v| v.to_string()));
    add("cpu_quota", t.cpu_quota.map(|v| v.to_string()));
    add("cpuset_cpus", t.cpuset_cpus.clone());
    add("cpuset_mems", t.cpuset_mems.clone());
    add("mem_reservation", t.mem_reservation.map(|v| v.0.to_string()));
    add("memswap_limit", t.memswap_limit.map(|v| v.to_string()));
    add("mem_swappiness", t.mem_swappiness.map(|v| v.to_string()));
    add("oom_kill_disable", t.oom_kill_disable.then(|| "true".into()));
    add("blkio_weight", t.blkio_weight.map(|v| v.to_string()));
    for (key, list) in [
        ("blkio_weight_device", &t.blkio_weight_device),
        ("device_read_bps", &t.device_read_bps),
        ("device_write_bps", &t.device_write_bps),
        ("device_read_iops", &t.device_read_iops),
        ("device_write_iops", &t.device_write_iops),
    ] {
        for d in list {
            add(key, Some(format!("{}:{} {}", d.device.major, d.device.minor, d.value)));
        }
    }
    for r in &t.device_cgroup_rules {
        let n = |v: Option<u64>| v.map_or("*".to_string(), |v| v.to_string());
        let kind = r.kind.map_or("a", |k| k.letter());
        add(
            "device_cgroup_rule",
            Some(format!("{kind} {}:{} {}", n(r.major), n(r.minor), r.access.letters())),
        );
    }
    add("pids_limit", plan.pids_limit.map(|v| v.to_string()));
    add("oom_score_adj", plan.oom_score_adj.map(|v| v.to_string()));
    add("domainname", plan.domainname.clone());
    for d in &plan.dns.servers {
        add("dns", Some(d.to_string()));
    }
    for d in &plan.dns.search {
        add("dns_search", Some(d.clone()));
    }
    for d in &plan.dns.options {
        add("dns_opt", Some(d.clone()));
    }
    for (name, ip) in &plan.dns.extra_hosts {
        add("extra_host", Some(format!("{name} {ip}")));
    }
    for g in &plan.group_add {
        add("group_add", Some(g.clone()));
    }
    for (k, v) in &plan.sysctls {
        add("sysctl", Some(format!("{k}={v}")));
    }
    add("stop_signal", plan.stop_signal.map(|s| s.as_str().to_string()));
    if let crate::plan::RestartPolicy::OnFailure(n) = plan.restart {
        add("restart", Some(format!("on-failure:{n}")));
    }
    lines
}
