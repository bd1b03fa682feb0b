//! The workflow file as written: dstack's `docker` provider format plus Docker-run options (docker-py names).
//! Strict (unknown keys are errors) and span-aware, so every later check can point at `file:line:col`.
//!
//! Several keys accept more than one shape (`environment` as a map or a list, `artifacts` items as a path or a
//! map …). serde's `untagged` enums would lose both the location and the precise message, so those are read by
//! [`shapes`], which dispatches on the YAML node kind and names every accepted shape when none matches.

mod shapes;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowFile {
    pub workflows: Vec<Workflow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub name: Spanned<String>,
    #[serde(default)]
    pub provider: Option<Spanned<String>>,
    pub image: Spanned<String>,
    #[serde(default)]
    pub entrypoint: Option<Spanned<StringOrList>>,
    #[serde(default)]
    pub commands: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub command: Option<Spanned<StringOrList>>,
    #[serde(default)]
    pub before_run: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub requirements: Option<Spanned<String>>,
    // The setup, run once per image and content and kept as a layer (see `plan::setup`).
    /// Debian/Ubuntu packages installed with `apt-get install`.
    #[serde(default)]
    pub apt_packages: Vec<Spanned<String>>,
    /// Lines of an apt sources list (`deb [trusted=yes] http://… ./`) that `apt_packages` come from, instead of
    /// the image's sources.
    #[serde(default)]
    pub apt_sources: Vec<Spanned<String>>,
    /// Shell commands run after `apt_packages` and `requirements`.
    #[serde(default)]
    pub setup: Option<Vec<Spanned<String>>>,
    /// The setup's environment (ZenML's build-time `environment`); the run gets it too, below `environment`.
    #[serde(default)]
    pub build_environment: Option<Environment>,
    #[serde(default)]
    pub version: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub environment: Option<Environment>,
    #[serde(default)]
    pub working_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub artifacts: Vec<Spanned<Artifact>>,
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub deps: Vec<Spanned<String>>,
    // Docker-run options (docker-py's `containers.run` names).
    #[serde(default)]
    pub user: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub volumes: Option<Volumes>,
    #[serde(default)]
    pub hostname: Option<Spanned<String>>,
    #[serde(default)]
    pub cap_add: Vec<Spanned<String>>,
    #[serde(default)]
    pub cap_drop: Vec<Spanned<String>>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub network_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub tmpfs: Option<Tmpfs>,
    #[serde(default)]
    pub ulimits: Vec<Spanned<UlimitEntry>>,
    #[serde(default)]
    pub shm_size: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub mem_limit: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub labels: Option<Labels>,
    /// docker-py's `devices`: `/dev/HOST[:/dev/CONTAINER][:rwm]` items (or CDI names, as `--device` takes).
    #[serde(default)]
    pub devices: Vec<Spanned<String>>,
    // The rest of docker-py's `containers.run` arguments (docs/docker-py.md), read by `workflow::docker_options`;
    // refused ones are [`Refused`], with their reasons in `workflow::docker_py`.
    #[serde(default)]
    pub auto_remove: Option<Spanned<bool>>,
    /// docker-py's `detach`: the container runs in the background, as `drun run -d` (see `workflow::runner`).
    #[serde(default)]
    pub detach: Option<Spanned<bool>>,
    #[serde(default)]
    pub remove: Option<Spanned<bool>>,
    #[serde(default)]
    pub blkio_weight: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub blkio_weight_device: Vec<Spanned<BlkioEntry>>,
    #[serde(default)]
    pub device_read_bps: Vec<Spanned<BlkioEntry>>,
    #[serde(default)]
    pub device_write_bps: Vec<Spanned<BlkioEntry>>,
    #[serde(default)]
    pub device_read_iops: Vec<Spanned<BlkioEntry>>,
    #[serde(default)]
    pub device_write_iops: Vec<Spanned<BlkioEntry>>,
    #[serde(default)]
    pub cpu_shares: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub cpu_period: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub cpu_quota: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub cpuset_cpus: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub cpuset_mems: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub nano_cpus: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub mem_reservation: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub memswap_limit: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub mem_swappiness: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub kernel_memory: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub oom_kill_disable: Option<Spanned<bool>>,
    #[serde(default)]
    pub oom_score_adj: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub pids_limit: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub device_cgroup_rules: Vec<Spanned<String>>,
    #[serde(default)]
    pub device_requests: Vec<Spanned<DeviceRequestMap>>,
    #[serde(default)]
    pub dns: Vec<Spanned<String>>,
    #[serde(default)]
    pub dns_opt: Vec<Spanned<String>>,
    #[serde(default)]
    pub dns_search: Vec<Spanned<String>>,
    #[serde(default)]
    pub domainname: Option<Spanned<String>>,
    #[serde(default)]
    pub extra_hosts: Option<Spanned<ExtraHosts>>,
    #[serde(default)]
    pub group_add: Vec<Spanned<Scalar>>,
    #[serde(default)]
    pub init: Option<Spanned<bool>>,
    #[serde(default)]
    pub ipc_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub pid_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub uts_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub userns_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub network: Option<Spanned<String>>,
    #[serde(default)]
    pub network_disabled: Option<Spanned<bool>>,
    #[serde(default)]
    pub mounts: Vec<Spanned<MountEntry>>,
    #[serde(default)]
    pub platform: Option<Spanned<String>>,
    #[serde(default)]
    pub restart_policy: Option<Spanned<RestartEntry>>,
    #[serde(default)]
    pub security_opt: Vec<Spanned<String>>,
    #[serde(default)]
    pub stdin_open: Option<Spanned<bool>>,
    #[serde(default)]
    pub tty: Option<Spanned<bool>>,
    #[serde(default)]
    pub stdout: Option<Spanned<bool>>,
    #[serde(default)]
    pub stderr: Option<Spanned<bool>>,
    #[serde(default)]
    pub stream: Option<Spanned<bool>>,
    #[serde(default)]
    pub stop_signal: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub sysctls: Option<Spanned<KeyValues>>,
    /// docker-py's `healthcheck`: the container's health check (probed while it runs; see `run::health`).
    #[serde(default)]
    pub healthcheck: Option<Spanned<Healthcheck>>,
    /// Containers started in the background before the workflow's commands and removed after it.
    #[serde(default)]
    pub services: Vec<Spanned<Service>>,
    // Refused, each with its reason (`workflow::docker_py::REFUSED`).
    #[serde(default)]
    pub cgroup_parent: Option<Spanned<Refused>>,
    #[serde(default)]
    pub cpu_count: Option<Spanned<Refused>>,
    #[serde(default)]
    pub cpu_percent: Option<Spanned<Refused>>,
    #[serde(default)]
    pub cpu_rt_period: Option<Spanned<Refused>>,
    #[serde(default)]
    pub cpu_rt_runtime: Option<Spanned<Refused>>,
    #[serde(default)]
    pub init_path: Option<Spanned<Refused>>,
    #[serde(default)]
    pub isolation: Option<Spanned<Refused>>,
    #[serde(default)]
    pub links: Option<Spanned<Refused>>,
    #[serde(default)]
    pub log_config: Option<Spanned<Refused>>,
    #[serde(default)]
    pub lxc_conf: Option<Spanned<Refused>>,
    #[serde(default)]
    pub mac_address: Option<Spanned<Refused>>,
    #[serde(default)]
    pub ports: Option<Spanned<Refused>>,
    #[serde(default)]
    pub publish_all_ports: Option<Spanned<Refused>>,
    #[serde(default)]
    pub runtime: Option<Spanned<Refused>>,
    #[serde(default)]
    pub storage_opt: Option<Spanned<Refused>>,
    #[serde(default)]
    pub use_config_proxy: Option<Spanned<Refused>>,
    #[serde(default)]
    pub volume_driver: Option<Spanned<Refused>>,
    #[serde(default)]
    pub volumes_from: Option<Spanned<Refused>>,
}

/// A service of a workflow: a background container for as long as the workflow runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Spanned<String>,
    pub image: Spanned<String>,
    #[serde(default)]
    pub environment: Option<Environment>,
    #[serde(default)]
    pub entrypoint: Option<Spanned<StringOrList>>,
    #[serde(default)]
    pub command: Option<Spanned<StringOrList>>,
    #[serde(default)]
    pub healthcheck: Option<Spanned<Healthcheck>>,
}

/// docker-py's `healthcheck` (`docker.types.Healthcheck`, in its spelling or the API's): durations in
/// nanoseconds as docker-py has them, or with a unit (`1s`, `500ms`) as Compose has them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    #[serde(default, alias = "Test")]
    pub test: Option<StringOrList>,
    #[serde(default, alias = "Interval")]
    pub interval: Option<Scalar>,
    #[serde(default, alias = "Timeout")]
    pub timeout: Option<Scalar>,
    #[serde(default, alias = "StartPeriod")]
    pub start_period: Option<Scalar>,
    #[serde(default, alias = "Retries")]
    pub retries: Option<Scalar>,
}

/// A refused key's value, whatever its shape: only its place is kept, for the error.
#[derive(Debug)]
pub struct Refused;

impl<'de> Deserialize<'de> for Refused {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Refused)
    }
}

/// A per-device block I/O item: the flags' `PATH:VALUE`, or docker-py's `{Path, Rate}` / `{Path, Weight}`.
#[derive(Debug)]
pub enum BlkioEntry {
    Text(String),
    Map(BlkioMap),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlkioMap {
    #[serde(rename = "Path", alias = "path")]
    pub path: String,
    #[serde(rename = "Rate", alias = "rate", alias = "Weight", alias = "weight")]
    pub value: Scalar,
}

/// docker-py's `DeviceRequest`, in its constructor's spelling or the API's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequestMap {
    #[serde(default, alias = "Driver")]
    pub driver: Option<String>,
    #[serde(default, alias = "Count")]
    pub count: Option<i64>,
    #[serde(default, alias = "DeviceIDs")]
    pub device_ids: Option<Vec<Scalar>>,
    #[serde(default, alias = "Capabilities")]
    pub capabilities: Option<Vec<Vec<String>>>,
    #[serde(default, alias = "Options")]
    pub options: Option<Labels>,
}

/// `extra_hosts`: docker-py's map of host name to address, or a list of `HOST:IP`.
#[derive(Debug)]
pub enum ExtraHosts {
    Map(Vec<(String, Scalar)>),
    List(Vec<String>),
}

/// A map of names to values, or a list of `NAME=VALUE` (`sysctls`).
#[derive(Debug)]
pub enum KeyValues {
    Map(Vec<(String, Scalar)>),
    List(Vec<String>),
}

/// `mounts` items: `--mount`'s `type=bind,source=…,target=…` or a map with docker-py's `Mount` fields.
#[derive(Debug)]
pub enum MountEntry {
    Text(String),
    Map(MountMap),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountMap {
    #[serde(alias = "Target")]
    pub target: String,
    #[serde(default, alias = "Source")]
    pub source: Option<String>,
    #[serde(default, rename = "type", alias = "Type")]
    pub kind: Option<String>,
    #[serde(default, alias = "ReadOnly")]
    pub read_only: bool,
}

/// `restart_policy`: docker-py's `{Name, MaximumRetryCount}`, or `--restart`'s text.
#[derive(Debug)]
pub enum RestartEntry {
    Text(String),
    Map(RestartMap),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartMap {
    #[serde(rename = "Name", alias = "name")]
    pub name: String,
    #[serde(default, rename = "MaximumRetryCount", alias = "maximum_retry_count")]
    pub maximum_retry_count: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub memory: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub shm_size: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub gpu: Option<Spanned<Gpu>>,
    #[serde(default)]
    pub interruptible: Option<Spanned<bool>>,
    #[serde(default)]
    pub local: Option<Spanned<bool>>,
    /// `--rdma`.
    #[serde(default)]
    pub rdma: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuMap {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub memory: Option<Spanned<Scalar>>,
}

/// `gpu: 2` or `gpu: {name, count, memory}`.
#[derive(Debug)]
pub enum Gpu {
    Count(u32),
    Spec(GpuMap),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactMap {
    pub path: String,
    #[serde(default)]
    pub mount: bool,
}

/// `- ./output` or `- {path: ./output, mount: true}`.
#[derive(Debug)]
pub struct Artifact {
    pub path: String,
    pub mount: bool,
}

/// A string, or a list of strings (`entrypoint`, `command`).
#[derive(Debug, Clone)]
pub enum StringOrList {
    String(String),
    List(Vec<String>),
}

/// Any YAML scalar, kept as the text it was written as (`1`, `"16GB"`, `3.10`, `true`).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

/// `environment`: a map, or a list of `KEY=VALUE`; values may use `${VAR}` (resolved later, with locations).
#[derive(Debug)]
pub enum Environment {
    Map(Vec<(String, Spanned<Scalar>)>),
    List(Vec<Spanned<String>>),
}

/// `volumes`: `["SRC:DST[:ro]", …]` or docker-py's `{SRC: {bind: DST, mode: ro}}`.
#[derive(Debug)]
pub enum Volumes {
    List(Vec<Spanned<String>>),
    Map(Vec<(String, Spanned<VolumeBind>)>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeBind {
    pub bind: String,
    #[serde(default)]
    pub mode: Option<String>,
}

/// `tmpfs`: `["/path[:options]", …]` or `{/path: options}`.
#[derive(Debug)]
pub enum Tmpfs {
    List(Vec<Spanned<String>>),
    Map(Vec<(String, Spanned<Scalar>)>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UlimitMap {
    pub name: String,
    pub soft: i64,
    #[serde(default)]
    pub hard: Option<i64>,
}

/// `ulimits` items: docker-py's `{name, soft, hard}` or the CLI's `NAME=SOFT[:HARD]`.
#[derive(Debug)]
pub enum UlimitEntry {
    Text(String),
    Map(UlimitMap),
}

/// `labels`: a map or a list of `KEY=VALUE`.
#[derive(Debug)]
pub enum Labels {
    Map(Vec<(String, Scalar)>),
    List(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(yaml: &str) -> Workflow {
        let file: WorkflowFile =
            serde_saphyr::from_str(&format!("workflows:\n  - name: a\n    image: x\n{yaml}")).unwrap();
        file.workflows.into_iter().next().unwrap()
    }

    fn error(yaml: &str) -> String {
        serde_saphyr::from_str::<WorkflowFile>(&format!("workflows:\n  - name: a\n    image: x\n{yaml}"))
            .unwrap_err()
            .without_snippet()
            .to_string()
    }

    #[test]
    fn scalars_keep_the_text_they_were_written_as() {
        let w = entry("    version: \"3.10\"\n    user: 1000\n    resources:\n      cpu: 0.5\n      memory: 16GB\n");
        assert_eq!(w.version.unwrap().value, Scalar("3.10".into()));
        assert_eq!(w.user.unwrap().value, Scalar("1000".into()));
        let res = w.resources.unwrap();
        assert_eq!(res.cpu.unwrap().value, Scalar("0.5".into()));
        assert_eq!(res.memory.unwrap().value, Scalar("16GB".into()));
    }

    #[test]
    fn each_key_takes_each_of_its_shapes() {
        let w = entry(concat!(
            "    entrypoint: /bin/sh -c\n",
            "    command: [echo, hi]\n",
            "    environment:\n      A: 1\n      B: two\n",
            "    volumes: [\"./a:/a:ro\"]\n",
            "    tmpfs:\n      /t: size=1m\n",
            "    ulimits: [\"nofile=1:2\", {name: core, soft: -1}]\n",
            "    labels: [team=hpc]\n",
            "    artifacts: [out, {path: live, mount: true}]\n",
            "    resources:\n      gpu: 2\n",
        ));
        assert!(matches!(w.entrypoint.unwrap().value, StringOrList::String(s) if s == "/bin/sh -c"));
        assert!(matches!(w.command.unwrap().value, StringOrList::List(l) if l == ["echo", "hi"]));
        match w.environment.unwrap() {
            Environment::Map(m) => {
                let pairs: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_str(), v.value.0.as_str())).collect();
                assert_eq!(pairs, [("A", "1"), ("B", "two")]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(w.volumes.unwrap(), Volumes::List(l) if l[0].value == "./a:/a:ro"));
        match w.tmpfs.unwrap() {
            Tmpfs::Map(m) => {
                assert_eq!((m[0].0.as_str(), m[0].1.value.0.as_str()), ("/t", "size=1m"));
                assert_eq!(m[0].1.referenced.line(), 11);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&w.ulimits[0].value, UlimitEntry::Text(t) if t == "nofile=1:2"));
        assert!(
            matches!(&w.ulimits[1].value, UlimitEntry::Map(m) if m.name == "core" && m.soft == -1 && m.hard.is_none())
        );
        assert!(matches!(w.labels.unwrap(), Labels::List(l) if l == ["team=hpc"]));
        let artifacts: Vec<(&str, bool)> = w
            .artifacts
            .iter()
            .map(|a| (a.value.path.as_str(), a.value.mount))
            .collect();
        assert_eq!(artifacts, [("out", false), ("live", true)]);
        assert!(matches!(w.resources.unwrap().gpu.unwrap().value, Gpu::Count(2)));

        let w = entry(concat!(
            "    environment: [A=1, HOME]\n",
            "    volumes:\n      ./shared: {bind: /data, mode: ro}\n",
            "    tmpfs: [\"/t:size=1m\"]\n",
            "    labels:\n      team: hpc\n",
            "    resources:\n      gpu: {name: A100, count: 2, memory: 40GB}\n",
        ));
        assert!(matches!(w.environment.unwrap(), Environment::List(l) if l.len() == 2 && l[1].value == "HOME"));
        match w.volumes.unwrap() {
            Volumes::Map(m) => {
                assert_eq!(m[0].0, "./shared");
                assert_eq!(
                    (m[0].1.value.bind.as_str(), m[0].1.value.mode.as_deref()),
                    ("/data", Some("ro"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(w.tmpfs.unwrap(), Tmpfs::List(l) if l[0].value == "/t:size=1m"));
        assert!(matches!(w.labels.unwrap(), Labels::Map(m) if m[0].0 == "team" && m[0].1 .0 == "hpc"));
        match w.resources.unwrap().gpu.unwrap().value {
            Gpu::Spec(g) => {
                assert_eq!((g.name.as_deref(), g.count), (Some("A100"), Some(2)));
                assert_eq!(g.memory.unwrap().value.0, "40GB");
            }
            other => panic!("{other:?}"),
        }
        // A GPU name alone is kept for the validator.
        assert!(
            matches!(entry("    resources:\n      gpu: K80\n").resources.unwrap().gpu.unwrap().value,
            Gpu::Spec(g) if g.name.as_deref() == Some("K80") && g.count.is_none())
        );
    }

    #[test]
    fn devices_and_rdma() {
        let w = entry("    devices: [\"/dev/zero:/dev/z:r\", nvidia.com/gpu=0]\n    resources:\n      rdma: true\n");
        let devices: Vec<&str> = w.devices.iter().map(|d| d.value.as_str()).collect();
        assert_eq!(devices, ["/dev/zero:/dev/z:r", "nvidia.com/gpu=0"]);
        assert_eq!(w.devices[0].referenced.line(), 4);
        assert!(w.resources.unwrap().rdma);
        assert!(!entry("").resources.is_some_and(|r| r.rdma));
    }

    #[test]
    fn docker_py_arguments_take_their_shapes() {
        let w = entry(concat!(
            "    device_read_bps: [{Path: /dev/sda, Rate: 1048576}, \"/dev/sdb:1mb\"]\n",
            "    device_requests: [{Driver: nvidia, Count: -1, Capabilities: [[gpu]]}]\n",
            "    extra_hosts: {db: 10.0.0.5}\n",
            "    sysctls: [kernel.shmmax=1000]\n",
            "    restart_policy: {Name: on-failure, MaximumRetryCount: 2}\n",
            "    mounts: [\"type=tmpfs,target=/t\", {type: bind, source: ./d, target: /d, read_only: true}]\n",
            "    cpuset_cpus: 0\n",
            "    ports: {\"80/tcp\": 8080}\n",
        ));
        assert!(
            matches!(&w.device_read_bps[0].value, BlkioEntry::Map(m) if m.path == "/dev/sda" && m.value.0 == "1048576")
        );
        assert!(matches!(&w.device_read_bps[1].value, BlkioEntry::Text(t) if t == "/dev/sdb:1mb"));
        assert_eq!(w.device_requests[0].value.count, Some(-1));
        assert!(matches!(w.extra_hosts.unwrap().value, ExtraHosts::Map(m) if m[0].0 == "db"));
        assert!(matches!(w.sysctls.unwrap().value, KeyValues::List(l) if l == ["kernel.shmmax=1000"]));
        assert!(
            matches!(w.restart_policy.unwrap().value, RestartEntry::Map(m) if m.name == "on-failure" && m.maximum_retry_count == Some(Scalar("2".into())))
        );
        assert!(matches!(&w.mounts[1].value, MountEntry::Map(m) if m.read_only && m.target == "/d"));
        assert_eq!(w.cpuset_cpus.unwrap().value, Scalar("0".into()));
        assert_eq!(w.ports.unwrap().referenced.line(), 11);
    }

    #[test]
    fn a_wrong_shape_names_the_shapes_accepted() {
        assert!(error("    environment: 3\n").contains("expected a map of variables or a list of KEY=VALUE"));
        assert!(error("    volumes: ./a:/a\n").contains("a list of SRC:DST[:ro] or a map of SRC: {bind, mode}"));
        assert!(error("    artifacts: [[out]]\n").contains("a path or a map with path and mount"));
        assert!(error("    command: {a: b}\n").contains("a string or a list of strings"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(error("    comands: [true]\n").contains("unknown field `comands`"));
        assert!(error("    artifacts:\n      - path: out\n        mout: true\n").contains("unknown field `mout`"));
        assert!(error("    resources:\n      gpus: 1\n").contains("unknown field `gpus`"));
    }
}
