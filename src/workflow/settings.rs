//! An entry's container settings — environment, resources and Docker-run options — read through the parsers
//! `drun run`'s flags use ([`crate::plan::parse`]), each error at the key's place in the file.

use serde_saphyr::{Location, Spanned};

use super::entry::EntryInputs;
use super::error::WorkflowError;
use super::interpolate::interpolate;
use super::outputs::Template;
use super::schema::{self, Environment, Gpu, Labels, Scalar, Tmpfs, UlimitEntry, Volumes};
use crate::gpu::select::{GpuRequest, Selector};
use crate::plan::parse::{self, DeviceRequest, HostDeviceRequest, MountRequest, ParseError};
use crate::plan::{NetworkMode, Ulimit};
use crate::units::ByteSize;

/// What an entry sets for its container, parsed; bind sources are not looked up yet.
pub(super) struct ContainerSettings {
    /// Values may use dependencies' outputs, each with its place.
    pub env: Vec<(String, Template, Location)>,
    pub cpus: Option<f64>,
    pub memory: Option<ByteSize>,
    pub shm_size: Option<ByteSize>,
    pub gpus: Option<GpuRequest>,
    /// Volumes and tmpfs mounts in file order, each with its place (for a bind source that does not exist).
    pub mounts: Vec<(MountRequest, Location)>,
    pub ulimits: Vec<Ulimit>,
    pub network: NetworkMode,
    pub labels: Vec<(String, String)>,
    /// CDI device names from `devices`.
    pub cdi_devices: Vec<String>,
    /// Host devices from `devices`, each with its place (for a node that is missing or not a device).
    pub host_devices: Vec<(HostDeviceRequest, Location)>,
    /// Keys a local run accepts but ignores.
    pub notes: Vec<String>,
}

impl EntryInputs<'_> {
    /// A parser's refusal of the value of `key`, at its place.
    fn invalid(&self, loc: &Location, key: &str, e: ParseError) -> WorkflowError {
        self.locator.at(loc, e.named(key).to_string())
    }

    fn size(&self, v: &Spanned<Scalar>, key: &str) -> Result<ByteSize, WorkflowError> {
        parse::size(&v.value.0).map_err(|e| self.invalid(&v.referenced, key, e))
    }
}

pub(super) fn container_settings(
    w: &schema::Workflow,
    inputs: &EntryInputs<'_>,
) -> Result<ContainerSettings, WorkflowError> {
    let mut notes = Vec::new();
    let res = w.resources.as_ref();
    let cpus = match res.and_then(|r| r.cpu.as_ref()) {
        None => None,
        Some(c) => Some(parse::cpus(&c.value.0).map_err(|e| inputs.invalid(&c.referenced, "cpu", e))?),
    };
    let memory = match (res.and_then(|r| r.memory.as_ref()), &w.mem_limit) {
        (Some(_), Some(m)) => {
            return Err(inputs.locator.at(
                &m.referenced,
                "mem_limit and resources.memory are both set: use one".into(),
            ))
        }
        (Some(m), None) => Some(inputs.size(m, "memory")?),
        (None, Some(m)) => Some(inputs.size(m, "mem_limit")?),
        (None, None) => None,
    };
    let shm_size = match (res.and_then(|r| r.shm_size.as_ref()), &w.shm_size) {
        (Some(_), Some(s)) => {
            return Err(inputs.locator.at(
                &s.referenced,
                "shm_size and resources.shm_size are both set: use one".into(),
            ))
        }
        (Some(s), None) | (None, Some(s)) => Some(inputs.size(s, "shm_size")?),
        (None, None) => None,
    };
    let gpus = match res.and_then(|r| r.gpu.as_ref()) {
        None => None,
        Some(g) => Some(match &g.value {
            Gpu::Count(n) => GpuRequest {
                selector: Selector::Count(*n),
                name: None,
                memory_mib: None,
            },
            Gpu::Spec(s) => GpuRequest {
                selector: Selector::Count(s.count.unwrap_or(1)),
                name: s.name.clone(),
                memory_mib: match &s.memory {
                    None => None,
                    Some(m) => Some(inputs.size(m, "gpu memory")?.0 >> 20),
                },
            },
        }),
    };
    for (key, v) in [
        ("interruptible", res.and_then(|r| r.interruptible.as_ref())),
        ("local", res.and_then(|r| r.local.as_ref())),
    ] {
        if let Some(v) = v {
            notes.push(format!(
                "`resources.{key}: {}` is ignored: it is a cloud setting and drun always runs locally",
                v.value
            ));
        }
    }
    let network = match &w.network_mode {
        None => NetworkMode::Host,
        Some(n) => parse::network(&n.value).map_err(|e| inputs.invalid(&n.referenced, "network_mode", e))?,
    };
    let (mut cdi_devices, mut host_devices) = (Vec::new(), Vec::new());
    for d in &w.devices {
        match parse::device(&d.value).map_err(|e| inputs.invalid(&d.referenced, "device", e))? {
            DeviceRequest::Cdi(name) => cdi_devices.push(name),
            DeviceRequest::Host(request) => host_devices.push((request, d.referenced)),
        }
    }
    Ok(ContainerSettings {
        env: environment(w.environment.as_ref(), inputs)?,
        cpus,
        memory,
        shm_size,
        gpus,
        mounts: mounts(w, inputs)?,
        ulimits: ulimits(w, inputs)?,
        network,
        labels: labels(w),
        cdi_devices,
        host_devices,
        notes,
    })
}

/// `environment`, values expanded from the host's environment (dependencies' outputs kept for later).
pub(super) type EnvSetting = (String, Template, Location);

/// Also `build_environment`, the setup's (see `entry`).
pub(super) fn environment(
    given: Option<&Environment>,
    inputs: &EntryInputs<'_>,
) -> Result<Vec<EnvSetting>, WorkflowError> {
    let setting = |name: &str, raw: &str, loc: &Location| -> Result<EnvSetting, WorkflowError> {
        parse::env_name(name).map_err(|e| inputs.invalid(loc, "environment variable name", e))?;
        if name.contains(super::vars::DEPS_PREFIX) {
            return Err(inputs.locator.at(
                loc,
                format!("a dependency's output cannot name an environment variable (got {name:?})"),
            ));
        }
        let value = interpolate(raw, inputs.lookup).map_err(|e| inputs.locator.at(loc, e.to_string()))?;
        Ok((name.to_string(), value, *loc))
    };
    let mut env = Vec::new();
    match given {
        None => {}
        Some(Environment::Map(m)) => {
            for (name, v) in m {
                env.push(setting(name, &v.value.0, &v.referenced)?);
            }
        }
        Some(Environment::List(l)) => {
            for item in l {
                match item.value.split_once('=') {
                    Some((name, raw)) => env.push(setting(name, raw, &item.referenced)?),
                    // `- KEY` passes the host's value, as `docker run -e KEY` does.
                    None => {
                        if let Some(v) = (inputs.lookup)(&item.value) {
                            env.push((item.value.clone(), Template::text(&v), item.referenced));
                        }
                    }
                }
            }
        }
    }
    Ok(env)
}

/// `volumes` then `tmpfs`, in both their shapes.
fn mounts(w: &schema::Workflow, inputs: &EntryInputs<'_>) -> Result<Vec<(MountRequest, Location)>, WorkflowError> {
    let mut mounts = Vec::new();
    match &w.volumes {
        None => {}
        Some(Volumes::List(l)) => {
            for v in l {
                let m = parse::volume(&v.value).map_err(|e| inputs.invalid(&v.referenced, "volume", e))?;
                mounts.push((m, v.referenced));
            }
        }
        Some(Volumes::Map(m)) => {
            for (source, b) in m {
                let m = parse::bind(source, &b.value.bind, b.value.mode.as_deref())
                    .map_err(|e| inputs.invalid(&b.referenced, "volume", e))?;
                mounts.push((m, b.referenced));
            }
        }
    }
    match &w.tmpfs {
        None => {}
        Some(Tmpfs::List(l)) => {
            for t in l {
                let m = parse::tmpfs(&t.value).map_err(|e| inputs.invalid(&t.referenced, "tmpfs", e))?;
                mounts.push((m, t.referenced));
            }
        }
        Some(Tmpfs::Map(m)) => {
            for (destination, options) in m {
                let m = parse::tmpfs_at(destination, &options.value.0)
                    .map_err(|e| inputs.invalid(&options.referenced, "tmpfs", e))?;
                mounts.push((m, options.referenced));
            }
        }
    }
    Ok(mounts)
}

/// `ulimits`, as `NAME=SOFT[:HARD]` or `{name, soft, hard}`.
fn ulimits(w: &schema::Workflow, inputs: &EntryInputs<'_>) -> Result<Vec<Ulimit>, WorkflowError> {
    w.ulimits
        .iter()
        .map(|u| {
            match &u.value {
                UlimitEntry::Text(t) => parse::ulimit(t),
                UlimitEntry::Map(m) => parse::ulimit_values(&m.name, m.soft, m.hard),
            }
            .map_err(|e| inputs.invalid(&u.referenced, "ulimit", e))
        })
        .collect()
}

/// `labels`, as a map or `KEY=VALUE` items (a key alone has an empty value).
fn labels(w: &schema::Workflow) -> Vec<(String, String)> {
    match &w.labels {
        None => vec![],
        Some(Labels::Map(m)) => m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
        Some(Labels::List(l)) => l
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
    }
}
