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
