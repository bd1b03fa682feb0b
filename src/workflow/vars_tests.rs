//! Variables and outputs through a whole load (`${var.NAME}`, `${deps.NAME.stdout}`): what the parser, the
//! entry and the settings make of them together, each error at its place.

#![allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories

use std::path::Path;

use super::outputs::{Captured, Outputs};
use super::{load, RunWideOptions, WorkflowError, WorkflowSet};
use crate::plan::MountSpec;

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
    let loaded = load(Path::new(&path), &host, options);
    (project, loaded)
}

fn error(name: &str, text: &str) -> String {
    let (_project, loaded) = load_text(name, text, &RunWideOptions::default());
    loaded.unwrap_err().to_string()
}

fn with_vars(pairs: &[&str]) -> RunWideOptions {
    let mut options = RunWideOptions::default();
    for p in pairs {
        options.vars.add_arg(p).unwrap();
    }
    options
}

#[test]
fn variables_fill_parsed_values_and_cannot_add_keys() {
    let options = with_vars(&[
        "img= busybox ",
        "msg=hi\n    privileged: true\n  - name: evil\n    image: x",
        "dir=.",
        "dollar=$HOME ${HOME} ${deps.a.stdout}",
    ]);
    let options = RunWideOptions {
        vars: {
            let mut v = options.vars.clone();
            v.set(
                "msg".into(),
                "hi\n    privileged: true\n  - name: evil\n    image: x".into(),
            );
            v
        },
        ..options
    };
    let (project, set) = load_text(
        "vars.yaml",
        r#"workflows:
  - name: a
    image: ${var.img}
    volumes:
      ${var.dir}: {bind: "/mnt/${var.nope:-data}", mode: ro}
    environment:
      MSG: ${var.msg}
      RAW: ${var.dollar}
      HOST: ${FROM_HOST}
      ESCAPED: $${var.msg}
    commands:
      - echo ${var.msg}
      - echo $${var.msg} ${var.dollar}
"#,
        &options,
    );
    let set = set.unwrap();
    assert_eq!(set.jobs.len(), 1);
    let plan = &set.jobs[0].entry_plan;
    assert_eq!(plan.image, "busybox");
    assert!(!plan.privileged);
    let msg = "hi\n    privileged: true\n  - name: evil\n    image: x";
    let env: Vec<(&str, &str)> = plan.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        env,
        [
            ("MSG", msg),
            ("RAW", "$HOME ${HOME} ${deps.a.stdout}"),
            ("HOST", "host-value"),
            ("ESCAPED", "${var.msg}")
        ]
    );
    assert_eq!(
        plan.command,
        Some(vec![format!(
            "set -e\necho {msg}\necho ${{var.msg}} $HOME ${{HOME}} ${{deps.a.stdout}}\n"
        )])
    );
    assert_eq!(
        plan.mounts,
        vec![MountSpec::Bind {
            source: project.path().canonicalize().unwrap(),
            destination: "/mnt/data".into(),
            read_only: true
        }]
    );
}

#[test]
fn variable_errors_are_located() {
    let options = with_vars(&["x=1"]);
    let error = |name: &str, text: &str| {
        let (_project, loaded) = load_text(name, text, &options);
        loaded.unwrap_err().to_string()
    };
    for (name, text, needle) in [
        (
            "unset.yaml",
            "workflows:\n  - name: a\n    image: ${var.img}\n",
            "unset.yaml:3:12: variable \"img\" is not set (give it with --var img=VALUE",
        ),
        (
            "unsetlist.yaml",
            "workflows:\n  - name: a\n    image: x\n    commands:\n      - echo ${var.x}\n      - echo ${var.y}\n",
            "unsetlist.yaml:6:9: variable \"y\" is not set",
        ),
        (
            "unsetenv.yaml",
            "workflows:\n  - name: a\n    image: x\n    environment:\n      A: ${var.y}\n",
            "unsetenv.yaml:5:10: variable \"y\" is not set",
        ),
        (
            "unsetkey.yaml",
            "workflows:\n  - name: a\n    image: x\n    volumes:\n      ${var.y}: {bind: /a}\n",
            "unsetkey.yaml:5:7: variable \"y\" is not set",
        ),
        (
            "unclosed.yaml",
            "workflows:\n  - name: a\n    image: ${var.x\n",
            "unclosed.yaml:3:12: unclosed `${var.` in \"${var.x\"",
        ),
        (
            "image.yaml",
            "workflows:\n  - name: a\n    image: x\n  - name: b\n    deps: [a]\n    image: ${deps.a.stdout}\n",
            "image.yaml:6:12: `${deps.a.stdout}` is a dependency's output, which comes from a container: it can be used in the values of `commands`, `command`, `before_run`, `environment` only, not in `image`",
        ),
        (
            "volume.yaml",
            "workflows:\n  - name: a\n    image: x\n    volumes: [\"${deps.a.stdout}:/a\"]\n",
            "volume.yaml:4:15: `${deps.a.stdout}` is a dependency's output",
        ),
        (
            "volumekey.yaml",
            "workflows:\n  - name: a\n    image: x\n    volumes:\n      ${deps.a.stdout}: {bind: /a}\n",
            "not in `volumes`",
        ),
        (
            "artifact.yaml",
            "workflows:\n  - name: a\n    image: x\n    artifacts: [\"out/${deps.a.stdout}\"]\n",
            "not in `artifacts`",
        ),
        (
            "envname.yaml",
            "workflows:\n  - name: a\n    image: x\n    environment:\n      ${deps.a.stdout}: x\n",
            "envname.yaml:5:7: `${deps.a.stdout}` is a dependency's output, which comes from a container: it can be used in the values of `commands`, `command`, `before_run`, `environment` only, not in an environment variable's name",
        ),
    ] {
        let e = error(name, text);
        assert!(e.contains(needle), "{name}: {needle:?} not in\n{e}");
    }
}

#[test]
fn outputs_are_used_from_declared_dependencies_in_commands_and_environment() {
    let (_project, set) = load_text(
        "out.yaml",
        r#"workflows:
  - name: a
    image: x
    command: echo hello
  - name: b
    image: x
    deps: [a]
    environment:
      GREETING: "${deps.a.stdout}!"
      PLAIN: $${deps.a.stdout}
    commands:
      - echo '${deps.a.stdout}' > /out
  - name: c
    image: x
    deps: [a]
    command: [echo, "${deps.a.stdout}", "${HOME}"]
"#,
        &RunWideOptions::default(),
    );
    let set = set.unwrap();
    let mut outputs = Outputs::default();
    outputs.insert("a", Captured::of(b"hello\n"));
    let b = &set.jobs[1];
    assert_eq!(b.outputs.workflows().collect::<Vec<_>>(), ["a", "a"]);
    assert_eq!(
        b.entry_plan.command,
        Some(vec!["set -e\necho '${deps.a.stdout}' > /out\n".to_string()])
    );
    let mut plan = b.entry_plan.clone();
    b.outputs.fill(&mut plan, &outputs).unwrap();
    assert_eq!(plan.command, Some(vec!["set -e\necho 'hello' > /out\n".to_string()]));
    assert_eq!(
        plan.env,
        [("GREETING", "hello!"), ("PLAIN", "${deps.a.stdout}")].map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let c = &set.jobs[2];
    let mut plan = c.entry_plan.clone();
    c.outputs.fill(&mut plan, &outputs).unwrap();
    assert_eq!(
        plan.command,
        Some(["echo", "hello", "${HOME}"].map(String::from).to_vec())
    );
    assert!(set.jobs[0].outputs.workflows().next().is_none());

    for (name, text, needle) in [
        (
            "undeclared.yaml",
            "workflows:\n  - name: a\n    image: x\n  - name: b\n    image: x\n    commands:\n      - echo ${deps.a.stdout}\n",
            "undeclared.yaml:7:9: `${deps.a.stdout}` uses the output of \"a\", which is not a dependency of this workflow: list it in `deps`",
        ),
        (
            "undeclaredenv.yaml",
            "workflows:\n  - name: a\n    image: x\n    environment: [\"X=${deps.nope.stdout}\"]\n",
            "undeclaredenv.yaml:4:19: `${deps.nope.stdout}` uses the output of \"nope\"",
        ),
        (
            "attribute.yaml",
            "workflows:\n  - name: a\n    image: x\n    commands: [\"echo ${deps.a.stderr}\"]\n",
            "attribute.yaml:4:16: invalid output reference `${deps.a.stderr}`: expected ${deps.NAME.stdout}",
        ),
    ] {
        let e = error(name, text);
        assert!(e.contains(needle), "{name}: {needle:?} not in\n{e}");
    }
}
