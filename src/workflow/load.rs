//! Loading a workflow file: read it (bounded), parse the YAML, check the names and dependencies across entries,
//! then turn every entry into a job ([`super::entry`]). Everything is checked before anything runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::entry::{self, EntryInputs};
use super::error::{whole_file, Locator, WorkflowError};
use super::order::find_cycle;
use super::suggest::did_you_mean;
use super::{schema, RunWideOptions, WorkflowSet};

/// Workflow files are hostile input too: larger ones are refused (a FIFO or /dev/zero named as one would hang drun
/// or fill its memory).
const MAX_FILE_SIZE: u64 = 16 << 20;

/// Reads and validates the workflow file `path`; `${VAR}` references take values from `lookup` (the host
/// environment); `options` are the command line's settings for every job.
pub fn load(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    options: &RunWideOptions,
) -> Result<WorkflowSet, WorkflowError> {
    let text = crate::sys::safe_fs::read_user_file(path, MAX_FILE_SIZE)
        .and_then(|b| String::from_utf8(b).map_err(|_| std::io::Error::other("it is not UTF-8 text")))
        .map_err(|e| whole_file(path, format!("cannot read the workflow file: {e}")))?;
    let absolute = std::path::absolute(path)
        .map_err(|e| whole_file(path, format!("cannot make the workflow file's path absolute: {e}")))?;
    let dir = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let locator = Locator {
        file: path,
        text: &text,
    };
    // `${var.NAME}` is filled in the parsed values, before anything else reads them.
    let file: schema::WorkflowFile =
        super::substitute::from_str(&text, &options.vars).map_err(|e| locator.yaml_error(&e))?;
    if file.workflows.is_empty() {
        return Err(locator.whole_file(
            "the file defines no workflows (expected a `workflows:` list with at least one entry)".into(),
        ));
    }
    check_names(&locator, &file.workflows)?;
    check_deps(&locator, &file.workflows)?;
    let inputs = EntryInputs {
        locator: &locator,
        dir: &dir,
        lookup,
        options,
    };
    let jobs = file
        .workflows
        .iter()
        .map(|w| entry::job(w, &inputs))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WorkflowSet {
        file: path.to_path_buf(),
        dir,
        jobs,
    })
}

/// Names: not empty, unique, and usable as a file name (a job's artifact directory and log).
fn check_names(locator: &Locator<'_>, workflows: &[schema::Workflow]) -> Result<(), WorkflowError> {
    let mut seen: HashMap<&str, &Spanned<String>> = HashMap::new();
    for w in workflows {
        if w.name.value.trim().is_empty() {
            return Err(locator.at(&w.name.referenced, "a workflow name must not be empty".into()));
        }
        // The name names the job's artifact directory and log: never a path out of `artifacts/`.
        if w.name.value.contains('/') || w.name.value == "." || w.name.value == ".." || w.name.value.contains('\0') {
            return Err(locator.at(
                &w.name.referenced,
                format!(
                    "a workflow name must not contain `/` or be `.` or `..` (got {:?})",
                    w.name.value
                ),
            ));
        }
        if let Some(first) = seen.insert(&w.name.value, &w.name) {
            return Err(locator.at(
                &w.name.referenced,
                format!(
                    "duplicate workflow name {:?} (first defined at line {})",
                    w.name.value,
                    first.referenced.line()
                ),
            ));
        }
    }
    Ok(())
}

/// Dependencies: known, not the workflow itself, and no cycles.
fn check_deps(locator: &Locator<'_>, workflows: &[schema::Workflow]) -> Result<(), WorkflowError> {
    let names: Vec<&str> = workflows.iter().map(|w| w.name.value.as_str()).collect();
    for w in workflows {
        for d in &w.deps {
            if !names.contains(&d.value.as_str()) {
                return Err(locator.at(
                    &d.referenced,
                    format!("unknown dependency {:?}{}", d.value, did_you_mean(&d.value, &names)),
                ));
            }
            if d.value == w.name.value {
                return Err(locator.at(&d.referenced, format!("workflow {:?} depends on itself", d.value)));
            }
        }
    }
    match find_cycle(workflows) {
        Some((cycle, loc)) => Err(locator.at(&loc, format!("dependency cycle: {}", cycle.join(" -> ")))),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;
    use crate::plan::{MountSpec, NetworkMode, PullPolicy, Ulimit};

    fn host(name: &str) -> Option<String> {
        match name {
            "FROM_HOST" => Some("host-value".into()),
            _ => None,
        }
    }

    /// Writes `name` with `text` into a fresh project directory and loads it.
    fn load_text(
        name: &str,
        text: &str,
        options: &RunWideOptions,
    ) -> (tempfile::TempDir, Result<WorkflowSet, WorkflowError>) {
        let project = tempfile::tempdir().unwrap();
        let path = project.path().join(name);
        std::fs::write(&path, text).unwrap();
        let loaded = load(&path, &host, options);
        (project, loaded)
    }

    fn error(name: &str, text: &str) -> String {
        let (_project, loaded) = load_text(name, text, &RunWideOptions::default());
        loaded.unwrap_err().to_string()
    }

    #[test]
    fn malformed_files_are_reported_with_their_location() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "misspelt.yaml",
                "workflows:\n  - name: a\n    image: x\n    comands:\n      - echo hi\n",
                &[
                    "misspelt.yaml:4:5: unknown key `comands` (did you mean `commands`?)",
                    "expected one of: name,",
                ],
            ),
            (
                "syntax.yaml",
                "workflows:\n  - name: a\n    image: x\n    commands: [echo hi\n",
                &["syntax.yaml:4:15: ", "   4 |     commands: [echo hi"],
            ),
            (
                "notalist.yaml",
                "workflows:\n  name: a\n",
                &["notalist.yaml:2:3: expected a list here"],
            ),
            (
                "noimage.yaml",
                "workflows:\n  - name: a\n    commands: [true]\n",
                &["noimage.yaml:3:5: missing key `image`"],
            ),
            (
                "cycle.yaml",
                "workflows:\n  - name: a\n    image: x\n    deps: [b]\n  - name: b\n    image: x\n    deps: [a]\n",
                &["cycle.yaml:7:12: dependency cycle: a -> b -> a"],
            ),
            (
                "unknowndep.yaml",
                "workflows:\n  - name: train\n    image: x\n  - name: eval\n    image: x\n    deps: [trian]\n",
                &["unknowndep.yaml:6:12: unknown dependency \"trian\" (did you mean `train`?)"],
            ),
            (
                "selfdep.yaml",
                "workflows:\n  - name: a\n    image: x\n    deps: [a]\n",
                &["selfdep.yaml:4:12: workflow \"a\" depends on itself"],
            ),
            (
                "dup.yaml",
                "workflows:\n  - name: a\n    image: x\n  - name: a\n    image: x\n",
                &["dup.yaml:4:11: duplicate workflow name \"a\" (first defined at line 2)"],
            ),
            (
                "slash.yaml",
                "workflows:\n  - name: ../../escape\n    image: x\n",
                &["slash.yaml:2:11: a workflow name must not contain `/`"],
            ),
            (
                "provider.yaml",
                "workflows:\n  - name: a\n    provider: bash\n    image: x\n",
                &[
                    "provider.yaml:3:15: provider \"bash\" is not supported",
                    "provider: docker",
                ],
            ),
            (
                "escape.yaml",
                "workflows:\n  - name: a\n    image: x\n    artifacts:\n      - ../../etc\n",
                &["escape.yaml:5:9: artifact path \"../../etc\" must be a relative path inside the working directory"],
            ),
            (
                "size.yaml",
                "workflows:\n  - name: a\n    image: x\n    resources:\n      memory: 16XB\n",
                &["size.yaml:5:15: invalid memory \"16XB\": expected a size"],
            ),
            (
                "cpu.yaml",
                "workflows:\n  - name: a\n    image: x\n    resources:\n      cpu: lots\n",
                &["cpu.yaml:5:12: invalid cpu \"lots\""],
            ),
            (
                "unset.yaml",
                "workflows:\n  - name: a\n    image: x\n    environment:\n      TOKEN: ${DRUN_SURELY_UNSET}\n",
                &["unset.yaml:5:14: environment variable DRUN_SURELY_UNSET is not set on the host"],
            ),
            (
                "gpu.yaml",
                "workflows:\n  - name: a\n    image: x\n    resources:\n      gpu:\n        memory: lots\n",
                &["gpu.yaml:6:17: invalid gpu memory \"lots\": expected a size"],
            ),
            (
                "shape.yaml",
                "workflows:\n  - name: a\n    image: x\n    environment: 3\n",
                &["shape.yaml:4:5: invalid type: integer `3`, expected a map of variables or a list of KEY=VALUE"],
            ),
            (
                "artifactkey.yaml",
                "workflows:\n  - name: a\n    image: x\n    artifacts:\n      - path: out\n        mout: true\n",
                &["artifactkey.yaml:6:9: unknown key `mout` (did you mean `mount`?)"],
            ),
            (
                "empty.yaml",
                "workflows: []\n",
                &["empty.yaml: the file defines no workflows"],
            ),
            (
                "requirements.yaml",
                "workflows:\n  - name: a\n    image: x\n    requirements: nope.txt\n",
                &["requirements.yaml:4:19: requirements file", "nope.txt does not exist"],
            ),
            (
                "buildenv.yaml",
                "workflows:\n  - name: a\n    image: x\n    build_environment: {A: b}\n",
                &["buildenv.yaml:4:28: build_environment is the setup's environment, and this workflow has no setup"],
            ),
            (
                "aptsources.yaml",
                "workflows:\n  - name: a\n    image: x\n    apt_sources: [\"deb http://h/ ./\"]\n    setup: [true]\n",
                &["aptsources.yaml:4:19: apt_sources are where apt_packages come from"],
            ),
            (
                "aptname.yaml",
                "workflows:\n  - name: a\n    image: x\n    apt_packages: [curl, \"Bad Name\"]\n",
                &["aptname.yaml:4:26: \"Bad Name\" is not a Debian package name"],
            ),
            (
                "volume.yaml",
                "workflows:\n  - name: a\n    image: x\n    volumes: [\"./nope:/data\"]\n",
                &["volume.yaml:4:15: cannot find the bind source \"./nope\" (relative to the workflow file): "],
            ),
            (
                "network.yaml",
                "workflows:\n  - name: a\n    image: x\n    network_mode: bridge\n",
                &["network.yaml:4:19: invalid network_mode \"bridge\": expected host (the default) or none"],
            ),
            (
                "ulimit.yaml",
                "workflows:\n  - name: a\n    image: x\n    ulimits: [{name: nofile, soft: 2, hard: 1}]\n",
                &["ulimit.yaml:4:15: invalid ulimit \"nofile\": soft limit above hard limit"],
            ),
        ];
        for (name, text, needles) in cases {
            let e = error(name, text);
            for needle in *needles {
                assert!(e.contains(needle), "{name}: {needle:?} not in\n{e}");
            }
        }
        let missing = load(Path::new("/no/such/dir/nope.yaml"), &host, &RunWideOptions::default()).unwrap_err();
        assert!(
            missing.to_string().contains("nope.yaml: cannot read the workflow file"),
            "{missing}"
        );
    }

    #[test]
    fn tmpfs_paths_are_absolute_in_both_forms() {
        for (form, text, place) in [
            ("list", "    tmpfs: [\"scratch:size=1m\"]\n", "4:13"),
            ("map", "    tmpfs:\n      scratch: size=1m\n", "5:16"),
        ] {
            let e = error("t.yaml", &format!("workflows:\n  - name: a\n    image: x\n{text}"));
            assert!(
                e.contains(&format!("t.yaml:{place}: invalid tmpfs")) && e.contains("must be absolute"),
                "{form}: {e}"
            );
        }
    }

    #[test]
    fn names_on_the_command_line_must_exist() {
        let (_project, set) = load_text(
            "ok.yaml",
            "workflows:\n  - name: train\n    image: x\n  - name: eval\n    image: x\n    deps: [train]\n",
            &RunWideOptions::default(),
        );
        let set = set.unwrap();
        let e = set.order(&["trian".into()]).unwrap_err().to_string();
        assert!(
            e.contains("ok.yaml: no workflow named \"trian\" (did you mean `train`?) (workflows: train, eval)"),
            "{e}"
        );
        let names = |jobs: Vec<&super::super::WorkflowJob>| jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(set.order(&["eval".into()]).unwrap()), ["train", "eval"]);
        assert_eq!(names(set.order(&[]).unwrap()), ["train", "eval"]);
    }

    #[test]
    fn an_entry_and_the_run_wide_options_make_one_plan() {
        let options = RunWideOptions {
            pull: PullPolicy::Always,
            env: vec![("CLI".into(), "1".into())],
            require_limits: true,
            ..RunWideOptions::default()
        };
        let (project, set) = load_text(
            "wf.yaml",
            r#"workflows:
  - name: a
    image: " busybox "
    working_dir: build
    environment: [PLAIN=x, FROM_HOST, "DEFAULTED=${NOPE:-fallback}"]
    resources: {cpu: 2, memory: 1GB, shm_size: 64MB, gpu: {name: A100, count: 2, memory: 40GB}}
    volumes:
      .: {bind: /data, mode: ro}
    tmpfs:
      /scratch: size=1m
    ulimits: ["nofile=256:512"]
    network_mode: none
    privileged: true
    labels: [team=hpc]
    commands: [echo hi]
    artifacts: [out, {path: live, mount: true}]
"#,
            &options,
        );
        let set = set.unwrap();
        let job = &set.jobs[0];
        assert_eq!(
            (job.working_dir.as_str(), job.project_mount.as_str()),
            ("/workflow/build", "/workflow")
        );
        let plan = &job.entry_plan;
        assert_eq!(plan.image, "busybox");
        assert_eq!(plan.entrypoint, Some(vec!["/bin/sh".to_string(), "-c".to_string()]));
        assert_eq!(plan.command, Some(vec!["set -e\necho hi\n".to_string()]));
        assert_eq!(
            plan.env,
            [
                ("PLAIN", "x"),
                ("FROM_HOST", "host-value"),
                ("DEFAULTED", "fallback"),
                ("CLI", "1")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(
            plan.mounts,
            vec![
                MountSpec::Bind {
                    source: project.path().canonicalize().unwrap(),
                    destination: "/data".into(),
                    read_only: true
                },
                MountSpec::Tmpfs {
                    destination: "/scratch".into(),
                    options: vec!["size=1m".into()]
                },
            ]
        );
        assert_eq!(
            plan.ulimits,
            vec![Ulimit {
                name: "nofile".into(),
                soft: 256,
                hard: 512
            }]
        );
        assert_eq!(
            (plan.cpus, plan.network, plan.pull),
            (Some(2.0), NetworkMode::None, PullPolicy::Always)
        );
        assert_eq!(plan.memory.map(|m| m.0), Some(1 << 30));
        assert_eq!(plan.gpus.as_ref().and_then(|g| g.memory_mib), Some(40 << 10));
        assert!(plan.privileged && plan.no_new_privileges && plan.require_limits);
        assert_eq!(plan.workdir.as_deref(), Some("/workflow/build"));
        assert_eq!(plan.labels, vec![("team".to_string(), "hpc".to_string())]);
        assert_eq!(plan.init, plan.init_signals_group);
    }
}
