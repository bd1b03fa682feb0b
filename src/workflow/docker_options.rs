//! An entry's docker-py arguments beyond the classic Docker-run options of [`super::settings`]: cgroup tuning,
//! name resolution, namespaces, kernel parameters, signals, restarts, security options, GPUs as
//! `device_requests` — each read through the parser its `drun run` flag uses, each error at the key's place; and
//! the refused arguments ([`super::docker_py`]), refused by name with the reason.

use serde_saphyr::{Location, Spanned};

use super::docker_py::{refusal, KERNEL_MEMORY_NOTE};
use super::entry::EntryInputs;
use super::error::WorkflowError;
use super::schema::{self, BlkioEntry, ExtraHosts, KeyValues, MountEntry, RestartEntry, Scalar};
use crate::gpu::select::{GpuRequest, Selector};
use crate::image::platform::Platform;
use crate::plan::parse::{self, BlkioKind, BlkioRequest, MountRequest, ParseError, SecurityOpt};
use crate::plan::{CgroupTuning, NameResolution, NetworkMode, RestartPolicy, SeccompMode, Sharing};

/// What the docker-py arguments set; block devices and bind sources are not looked at yet.
#[derive(Default)]
pub(super) struct DockerSettings {
    pub tuning: CgroupTuning,
    pub blkio: Vec<(BlkioRequest, Location)>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub oom_score_adj: Option<i32>,
    pub dns: NameResolution,
    pub domainname: Option<String>,
    pub group_add: Vec<String>,
    pub sysctls: Vec<(String, String)>,
    pub stop_signal: Option<nix::sys::signal::Signal>,
    pub restart: RestartPolicy,
    pub ipc: Option<Sharing>,
    pub pid: Option<Sharing>,
    pub uts: Option<Sharing>,
    pub init: Option<bool>,
    pub interactive: bool,
    pub tty: bool,
    pub seccomp: Option<SeccompMode>,
    pub no_new_privileges: Option<bool>,
    pub platform: Option<Platform>,
    /// `network` or `network_disabled`, when given.
    pub network: Option<NetworkMode>,
    pub mounts: Vec<(MountRequest, Location)>,
    pub gpus: Option<GpuRequest>,
    pub notes: Vec<String>,
}

impl EntryInputs<'_> {
    fn bad(&self, loc: &Location, key: &str, e: ParseError) -> WorkflowError {
        self.locator.at(loc, e.named(key).to_string())
    }

    /// A scalar key through its parser.
    fn scalar<T>(
        &self,
        v: &Option<Spanned<Scalar>>,
        key: &str,
        parser: impl Fn(&str) -> Result<T, ParseError>,
    ) -> Result<Option<T>, WorkflowError> {
        v.as_ref()
            .map(|v| parser(&v.value.0).map_err(|e| self.bad(&v.referenced, key, e)))
            .transpose()
    }
}

pub(super) fn docker_options(w: &schema::Workflow, inputs: &EntryInputs<'_>) -> Result<DockerSettings, WorkflowError> {
    refuse(w, inputs)?;
    let mut s = DockerSettings::default();
    let t = &mut s.tuning;
    t.cpu_shares = inputs.scalar(&w.cpu_shares, "cpu_shares", parse::cpu_shares)?;
    t.cpu_period = inputs.scalar(&w.cpu_period, "cpu_period", parse::cpu_period)?;
    t.cpu_quota = inputs.scalar(&w.cpu_quota, "cpu_quota", parse::cpu_quota)?;
    t.cpuset_cpus = inputs.scalar(&w.cpuset_cpus, "cpuset_cpus", parse::cpuset)?;
    t.cpuset_mems = inputs.scalar(&w.cpuset_mems, "cpuset_mems", parse::cpuset)?;
    t.mem_reservation = inputs.scalar(&w.mem_reservation, "mem_reservation", parse::size)?;
    t.memswap_limit = inputs.scalar(&w.memswap_limit, "memswap_limit", parse::memswap)?;
    t.mem_swappiness = inputs.scalar(&w.mem_swappiness, "mem_swappiness", parse::swappiness)?;
    t.oom_kill_disable = w.oom_kill_disable.as_ref().is_some_and(|v| v.value);
    t.blkio_weight = inputs.scalar(&w.blkio_weight, "blkio_weight", parse::blkio_weight)?;
    for r in &w.device_cgroup_rules {
        t.device_cgroup_rules
            .push(parse::device_cgroup_rule(&r.value).map_err(|e| inputs.bad(&r.referenced, "device cgroup rule", e))?);
    }
    for (key, kind, items) in [
        ("blkio_weight_device", BlkioKind::Weight, &w.blkio_weight_device),
        ("device_read_bps", BlkioKind::ReadBps, &w.device_read_bps),
        ("device_write_bps", BlkioKind::WriteBps, &w.device_write_bps),
        ("device_read_iops", BlkioKind::ReadIops, &w.device_read_iops),
        ("device_write_iops", BlkioKind::WriteIops, &w.device_write_iops),
    ] {
        for item in items {
            let request = match &item.value {
                BlkioEntry::Text(t) => parse::blkio_text(kind, t),
                BlkioEntry::Map(m) => parse::blkio_device(kind, &m.path, &m.value.0),
            }
            .map_err(|e| inputs.bad(&item.referenced, key, e))?;
            s.blkio.push((request, item.referenced));
        }
    }
    if let Some(k) = &w.kernel_memory {
        parse::size(&k.value.0).map_err(|e| inputs.bad(&k.referenced, "kernel_memory", e))?;
        s.notes
            .push(format!("`kernel_memory` is ignored: {KERNEL_MEMORY_NOTE}"));
    }
    s.cpus = inputs.scalar(&w.nano_cpus, "nano_cpus", parse::nano_cpus)?;
    s.pids_limit = inputs.scalar(&w.pids_limit, "pids_limit", |v| {
        v.trim().parse::<i64>().map_err(|_| ParseError {
            value: v.to_string(),
            problem: parse::Problem::UlimitNumber(v.to_string()),
        })
    })?;
    s.oom_score_adj = inputs.scalar(&w.oom_score_adj, "oom_score_adj", parse::oom_score_adj)?;
    name_resolution(w, inputs, &mut s)?;
    for g in &w.group_add {
        s.group_add.push(g.value.0.clone());
    }
    match &w.sysctls {
        None => {}
        Some(v) => {
            let pairs: Vec<(String, String)> = match &v.value {
                KeyValues::Map(m) => m.iter().map(|(k, x)| (k.clone(), x.0.clone())).collect(),
                KeyValues::List(l) => l
                    .iter()
                    .map(|kv| {
                        let (k, x) = kv.split_once('=').unwrap_or((kv, ""));
                        (k.to_string(), x.to_string())
                    })
                    .collect(),
            };
            for (name, value) in pairs {
                let (name, value, _) =
                    parse::sysctl(&name, &value).map_err(|e| inputs.bad(&v.referenced, "sysctl", e))?;
                s.sysctls.push((name, value));
            }
        }
    }
    s.stop_signal = inputs.scalar(&w.stop_signal, "stop_signal", parse::signal)?;
    if let Some(r) = &w.restart_policy {
        s.restart = match &r.value {
            RestartEntry::Text(t) => parse::restart(t),
            RestartEntry::Map(m) => {
                parse::restart_policy(&m.name, m.maximum_retry_count.as_ref().map(|c| c.0.as_str()))
            }
        }
        .map_err(|e| inputs.bad(&r.referenced, "restart_policy", e))?;
    }
    let mode = |v: &Option<Spanned<String>>, key: &str| -> Result<Option<Sharing>, WorkflowError> {
        v.as_ref()
            .map(|v| parse::sharing(&v.value).map_err(|e| inputs.bad(&v.referenced, key, e)))
            .transpose()
    };
    s.ipc = mode(&w.ipc_mode, "ipc_mode")?;
    s.pid = mode(&w.pid_mode, "pid_mode")?;
    s.uts = mode(&w.uts_mode, "uts_mode")?;
    if let Some(u) = &w.userns_mode {
        if !matches!(u.value.as_str(), "" | "host") {
            return Err(inputs.locator.at(
                &u.referenced,
                format!(
                    "invalid userns_mode {:?}: expected host (containers of a root drun share the host's user \
                     namespace; a rootless drun's mode is --userns on the command line)",
                    u.value
                ),
            ));
        }
    }
    s.init = w.init.as_ref().map(|i| i.value);
    s.interactive = w.stdin_open.as_ref().is_some_and(|v| v.value);
    s.tty = w.tty.as_ref().is_some_and(|v| v.value);
    for o in &w.security_opt {
        match parse::security_opt(&o.value).map_err(|e| inputs.bad(&o.referenced, "security_opt", e))? {
            SecurityOpt::Seccomp(mode) => s.seccomp = Some(mode),
            SecurityOpt::NoNewPrivileges(on) => s.no_new_privileges = Some(on),
        }
    }
    if let Some(p) = &w.platform {
        s.platform = Some(
            p.value
                .parse()
                .map_err(|e: crate::image::platform::PlatformError| inputs.locator.at(&p.referenced, e.to_string()))?,
        );
    }
    network(w, inputs, &mut s)?;
    mounts(w, inputs, &mut s)?;
    s.gpus = device_requests(w, inputs)?;
    for (key, v) in [
        ("auto_remove", &w.auto_remove),
        ("remove", &w.remove),
        ("stdout", &w.stdout),
        ("stderr", &w.stderr),
        ("stream", &w.stream),
    ] {
        // With `detach`, `auto_remove` removes the detached container's record and log once it ended (`--rm`).
        let detached = w.detach.as_ref().is_some_and(|d| d.value);
        if matches!(key, "auto_remove" | "remove") && detached {
            continue;
        }
        if let Some(v) = v {
            let why = match key {
                "auto_remove" | "remove" => "drun removes every container when it exits",
                _ => "a workflow's stdout and stderr both go to the terminal and to its log",
            };
            s.notes.push(format!("`{key}: {}` is ignored: {why}", v.value));
        }
    }
    Ok(s)
}

/// The first refused key of the entry, as an error at its place.
fn refuse(w: &schema::Workflow, inputs: &EntryInputs<'_>) -> Result<(), WorkflowError> {
    let given = [
        ("cgroup_parent", &w.cgroup_parent),
        ("cpu_count", &w.cpu_count),
        ("cpu_percent", &w.cpu_percent),
        ("cpu_rt_period", &w.cpu_rt_period),
        ("cpu_rt_runtime", &w.cpu_rt_runtime),
        ("init_path", &w.init_path),
        ("isolation", &w.isolation),
        ("links", &w.links),
        ("log_config", &w.log_config),
        ("lxc_conf", &w.lxc_conf),
        ("mac_address", &w.mac_address),
        ("ports", &w.ports),
        ("publish_all_ports", &w.publish_all_ports),
        ("runtime", &w.runtime),
        ("storage_opt", &w.storage_opt),
        ("use_config_proxy", &w.use_config_proxy),
        ("volume_driver", &w.volume_driver),
        ("volumes_from", &w.volumes_from),
    ];
    for (key, v) in given {
        if let Some(v) = v {
            let reason = refusal(key).expect("every refused key has a reason");
            return Err(inputs
                .locator
                .at(&v.referenced, format!("`{key}` is not supported: {reason}")));
        }
    }
    Ok(())
}

/// `dns`, `dns_search`, `dns_opt`, `extra_hosts`, `domainname`.
fn name_resolution(
    w: &schema::Workflow,
    inputs: &EntryInputs<'_>,
    s: &mut DockerSettings,
) -> Result<(), WorkflowError> {
    for d in &w.dns {
        s.dns
            .servers
            .push(parse::dns_server(&d.value).map_err(|e| inputs.bad(&d.referenced, "dns", e))?);
    }
    for d in &w.dns_search {
        s.dns
            .search
            .push(parse::dns_search(&d.value).map_err(|e| inputs.bad(&d.referenced, "dns_search", e))?);
    }
    for d in &w.dns_opt {
        s.dns
            .options
            .push(parse::dns_option(&d.value).map_err(|e| inputs.bad(&d.referenced, "dns_opt", e))?);
    }
    if let Some(h) = &w.extra_hosts {
        let bad = |e| inputs.bad(&h.referenced, "extra_hosts", e);
        match &h.value {
            ExtraHosts::Map(m) => {
                for (name, ip) in m {
                    s.dns
                        .extra_hosts
                        .push(parse::extra_host_pair(name, &ip.0).map_err(bad)?);
                }
            }
            ExtraHosts::List(l) => {
                for item in l {
                    s.dns.extra_hosts.push(parse::extra_host(item).map_err(bad)?);
                }
            }
        }
    }
    if let Some(d) = &w.domainname {
        s.domainname = Some(parse::domainname(&d.value).map_err(|e| inputs.bad(&d.referenced, "domainname", e))?);
    }
    Ok(())
}

/// docker-py's `network` (a network's name: only host and none exist without a daemon) and `network_disabled`.
fn network(w: &schema::Workflow, inputs: &EntryInputs<'_>, s: &mut DockerSettings) -> Result<(), WorkflowError> {
    if let Some(n) = &w.network {
        s.network = Some(parse::network(&n.value).map_err(|_| {
            inputs.locator.at(
                &n.referenced,
                format!(
                    "network {:?} is not supported: networks other than host and none (bridges, user-defined \
                     networks) need a daemon; use network_mode: host (the default) or none",
                    n.value
                ),
            )
        })?);
    }
    if w.network_disabled.as_ref().is_some_and(|d| d.value) {
        s.network = Some(NetworkMode::None);
    }
    Ok(())
}

/// docker-py's `mounts`: `--mount` text or `{type, source, target, read_only}` (bind sources relative to the
/// workflow file, as `volumes`).
fn mounts(w: &schema::Workflow, inputs: &EntryInputs<'_>, s: &mut DockerSettings) -> Result<(), WorkflowError> {
    for m in &w.mounts {
        let request = match &m.value {
            MountEntry::Text(t) => parse::mount(t),
            MountEntry::Map(map) => match (map.kind.as_deref().unwrap_or("bind"), &map.source) {
                ("bind", Some(source)) => {
                    parse::bind(source, &map.target, Some(if map.read_only { "ro" } else { "rw" }))
                }
                ("tmpfs", _) => parse::tmpfs_at(&map.target, ""),
                (kind, _) => parse::mount(&format!("type={kind},target={}", map.target)),
            },
        }
        .map_err(|e| inputs.bad(&m.referenced, "mount", e))?;
        s.mounts.push((request, m.referenced));
    }
    Ok(())
}

/// docker-py's `device_requests`: GPUs (the `--gpus` of the API). One request, for NVIDIA GPUs.
fn device_requests(w: &schema::Workflow, inputs: &EntryInputs<'_>) -> Result<Option<GpuRequest>, WorkflowError> {
    let Some(first) = w.device_requests.first() else {
        return Ok(None);
    };
    let at = |message: String| inputs.locator.at(&first.referenced, message);
    if w.device_requests.len() > 1 {
        return Err(at("device_requests: only one request (for GPUs) is supported".into()));
    }
    let r = &first.value;
    if r.driver.as_deref().is_some_and(|d| !d.is_empty() && d != "nvidia") {
        return Err(at(format!(
            "device_requests: driver {:?} is not supported: drun injects NVIDIA GPUs (driver nvidia, or none)",
            r.driver.as_deref().unwrap_or_default()
        )));
    }
    if let Some(caps) = &r.capabilities {
        if !caps.iter().any(|set| set.iter().any(|c| c == "gpu")) {
            return Err(at(
                "device_requests: capabilities must include \"gpu\": drun's device requests are GPUs".into(),
            ));
        }
    }
    if r.options.is_some() {
        return Err(at("device_requests: options are not supported".into()));
    }
    let selector = match (&r.device_ids, r.count) {
        (Some(ids), None | Some(0)) if !ids.is_empty() => Selector::Ids(ids.iter().map(|i| i.0.clone()).collect()),
        (None, Some(-1)) => Selector::All,
        (None, Some(n)) if n > 0 => {
            Selector::Count(u32::try_from(n).map_err(|_| at(format!("device_requests: count {n} is too large")))?)
        }
        _ => {
            return Err(at(
                "device_requests: expected count (-1 for all GPUs, or a number) or device_ids, not both".into(),
            ))
        }
    };
    Ok(Some(GpuRequest {
        selector,
        name: None,
        memory_mib: None,
    }))
}
