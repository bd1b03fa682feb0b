//! `drun run workflow.yaml`: real workflows against the local registry, checked through their artifacts, logs,
//! exit codes and messages.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// A sandbox with busybox pulled and a project directory (`project/`) for workflow files.
pub fn ready() -> (Sandbox, PathBuf) {
    assert!(is_root(), "container tests need root (make test runs them as root)");
    let sb = Sandbox::new();
    sb.drun(&["pull", "-q", &busybox()]).ok();
    let project = sb.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    (sb, project)
}

/// Writes `project/NAME` with `{busybox}` replaced by the test image.
pub fn write(project: &Path, name: &str, text: &str) -> PathBuf {
    let p = project.join(name);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(&p, text.replace("{busybox}", &busybox())).unwrap();
    p
}

pub fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Waits until `file` contains `needle`.
fn wait_for(file: &Path, needle: &str) {
    wait_until(&format!("{needle:?} in {}", file.display()), || {
        std::fs::read_to_string(file).is_ok_and(|t| t.contains(needle))
    });
}

#[test]
fn the_dstack_example_runs_and_saves_its_artifact() {
    let (sb, project) = ready();
    std::fs::write(project.join("input.txt"), "project file\n").unwrap();
    let wf = write(
        &project,
        "workflow.yaml",
        r#"workflows:
  - name: train
    provider: docker
    image: {busybox}
    commands:
      - mkdir -p output
      - echo 'Hello, world!' > output/hello.txt
      - cat input.txt
      - pwd
    artifacts:
      - path: ./output
"#,
    );
    let out = sb.drun(&["run", wf.to_str().unwrap()]).ok();
    assert_eq!(
        read(project.join("artifacts/train/output/hello.txt")),
        "Hello, world!\n"
    );
    assert_eq!(read(project.join("artifacts/train.log")), "project file\n/workflow\n");
    assert!(out.stdout.contains("project file\n/workflow\n"), "{}", out.stdout);
    assert!(out.stderr.contains("Workflow \"train\" is started."), "{}", out.stderr);
    assert!(
        out.stderr.contains("Workflow \"train\" is successful."),
        "{}",
        out.stderr
    );
    // The project directory itself was not written to.
    assert!(!project.join("output").exists());
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn the_project_directory_is_copy_on_write() {
    let (sb, project) = ready();
    std::fs::write(project.join("data.txt"), "original\n").unwrap();
    std::fs::write(project.join("doomed.txt"), "keep me\n").unwrap();
    write(&project, "src/tool.sh", "echo tool ran in $(pwd)\n");
    let wf = write(
        &project,
        "wf.yml",
        r#"workflows:
  - name: edit
    image: {busybox}
    commands:
      - echo changed > data.txt
      - rm doomed.txt
      - cat data.txt
      - test ! -e doomed.txt
      - mkdir -p out && cp data.txt out/
    artifacts: [out]
  - name: absolute
    image: {busybox}
    working_dir: /srv/job
    commands:
      - test "$(pwd)" = /srv/job
      - cat data.txt > copy.txt
    artifacts: [copy.txt]
  - name: relative
    image: {busybox}
    working_dir: src
    commands:
      - sh tool.sh > result.txt
    artifacts: [result.txt]
"#,
    );
    let out = sb.drun(&["run", "-q", wf.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("changed"), "{}", out.stdout);
    assert_eq!(read(project.join("data.txt")), "original\n");
    assert_eq!(read(project.join("doomed.txt")), "keep me\n");
    assert_eq!(read(project.join("artifacts/edit/out/data.txt")), "changed\n");
    // Each workflow starts from the project as it is on the host, not from another's writes.
    assert_eq!(read(project.join("artifacts/absolute/copy.txt")), "original\n");
    assert_eq!(
        read(project.join("artifacts/relative/result.txt")),
        "tool ran in /workflow/src\n"
    );
    assert!(!project.join("src/result.txt").exists());
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn environment_entrypoint_command_and_before_run() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: env
    image: {busybox}
    environment:
      PLAIN: value with spaces
      NUMBER: 42
      FROM_HOST: ${DRUN_WF_TEST_VAR}
      DEFAULTED: ${DRUN_WF_UNSET_VAR:-fallback}
      LITERAL: $$NOT_EXPANDED
    before_run:
      - echo before > order.txt
    commands:
      - echo commands >> order.txt
      - env | sort > env.txt
      - cat order.txt
    artifacts: [env.txt, order.txt]
  - name: listenv
    image: {busybox}
    environment:
      - A=1
      - B=${DRUN_WF_TEST_VAR}
    commands:
      - echo "A=$A B=$B" > out.txt
    artifacts: [out.txt]
  - name: entry
    image: {busybox}
    entrypoint: /bin/env DRUN_ENTRY=from-the-entrypoint /bin/sh -e -c
    commands:
      - 'echo "entrypoint ran: $DRUN_ENTRY" > out.txt'
    artifacts: [out.txt]
  - name: command
    image: {busybox}
    command: ["sh", "-c", "echo image cmd replaced > /workflow/out.txt"]
    artifacts: [out.txt]
"#,
    );
    let out = sb
        .drun_with(
            &["run", "-q", wf.to_str().unwrap()],
            &[("DRUN_WF_TEST_VAR", "host-value".as_ref())],
        )
        .ok();
    assert!(out.stdout.contains("before\ncommands\n"), "{}", out.stdout);
    let env = read(project.join("artifacts/env/env.txt"));
    for line in [
        "PLAIN=value with spaces",
        "NUMBER=42",
        "FROM_HOST=host-value",
        "DEFAULTED=fallback",
        "LITERAL=$NOT_EXPANDED",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    }
    assert_eq!(read(project.join("artifacts/listenv/out.txt")), "A=1 B=host-value\n");
    // The commands ran through the file's entrypoint, not the default `/bin/sh -c`.
    assert_eq!(
        read(project.join("artifacts/entry/out.txt")),
        "entrypoint ran: from-the-entrypoint\n"
    );
    assert_eq!(read(project.join("artifacts/command/out.txt")), "image cmd replaced\n");
}

#[test]
fn resources_and_docker_options() {
    let (sb, project) = ready();
    std::fs::create_dir_all(project.join("shared")).unwrap();
    std::fs::write(project.join("shared/in.txt"), "from a volume\n").unwrap();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: limits
    image: {busybox}
    version: "3.10"
    resources:
      cpu: 0.5
      memory: 64MiB
      shm_size: 16MB
      interruptible: true
      local: true
    commands:
      - (cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max) > mem.txt
      - (cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max) > cpu.txt
      - df -k /dev/shm | tail -1 | awk '{print $2}' > shm.txt
    artifacts: [mem.txt, cpu.txt, shm.txt]
  - name: options
    image: {busybox}
    user: "1000:1000"
    hostname: wf-host
    read_only: true
    network_mode: none
    cap_drop: [ALL]
    volumes:
      - ./shared:/data:ro
    tmpfs:
      /scratch: size=1m
    ulimits:
      - name: nofile
        soft: 512
        hard: 1024
    labels:
      team: hpc
    commands:
      - echo "$(id -u):$(id -g) $(hostname)" > /scratch/o
      - cat /data/in.txt >> /scratch/o
      - (touch /data/x 2>/dev/null && echo volume-writable || echo volume-ro) >> /scratch/o
      - (touch /rootfs-file 2>/dev/null && echo root-writable || echo root-ro) >> /scratch/o
      - ulimit -n >> /scratch/o
      - echo "net=$(ls /sys/class/net | tr '\n' ' ')" >> /scratch/o
      - grep CapEff /proc/self/status >> /scratch/o
      - cat /scratch/o
  - name: more
    image: {busybox}
    mem_limit: 32MiB
    shm_size: 8MB
    cap_add: [NET_RAW]
    working_dir: build/deep
    commands:
      - (cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max) > mem.txt
      - df -k /dev/shm | tail -1 | awk '{print $2}' > shm.txt
      - grep CapEff /proc/self/status | cut -f2 > caps.txt
      - pwd > pwd.txt
    artifacts: [mem.txt, shm.txt, caps.txt, pwd.txt]
  - name: shapes
    image: {busybox}
    entrypoint: ["/bin/sh", "-c"]
    volumes:
      ./shared: {bind: /data2, mode: ro}
    tmpfs: ["/scratch2:size=1m"]
    ulimits: ["nofile=256:512"]
    labels: ["team=hpc2"]
    commands:
      - cat /data2/in.txt > out.txt
      - df -k /scratch2 | tail -1 | awk '{print $2}' >> out.txt
      - ulimit -n >> out.txt
      - (touch /data2/x 2>/dev/null && echo rw || echo ro) >> out.txt
    artifacts: [out.txt]
  - name: privileged
    image: {busybox}
    privileged: true
    commands:
      - mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && echo privileged-mount-ok > ok.txt
    artifacts: [ok.txt]
"#,
    );
    let out = sb.drun(&["run", wf.to_str().unwrap()]).ok();
    assert_eq!(read(project.join("artifacts/limits/mem.txt")).trim(), "67108864");
    assert_eq!(read(project.join("artifacts/limits/cpu.txt")).trim(), "50000");
    assert_eq!(read(project.join("artifacts/limits/shm.txt")).trim(), "16384");
    // Keys a local run ignores are accepted with a note.
    for note in [
        "`version: 3.10` is ignored",
        "`resources.interruptible: true` is ignored",
        "`resources.local: true`",
    ] {
        assert!(out.stderr.contains(note), "{note}: {}", out.stderr);
    }
    let o = out.stdout;
    for want in [
        "1000:1000 wf-host",
        "from a volume",
        "volume-ro",
        "root-ro",
        "512",
        "CapEff:\t0000000000000000",
    ] {
        assert!(o.contains(want), "{want:?} not in\n{o}");
    }
    assert!(o.contains("net=lo \n"), "only loopback expected:\n{o}");
    assert_eq!(read(project.join("artifacts/more/mem.txt")).trim(), "33554432");
    assert_eq!(read(project.join("artifacts/more/shm.txt")).trim(), "8192");
    let caps = u64::from_str_radix(read(project.join("artifacts/more/caps.txt")).trim(), 16).unwrap();
    assert_ne!(caps & (1 << 13), 0, "cap_add NET_RAW missing: {caps:x}");
    // A relative working_dir is below the project mount, created when missing (and only in the container).
    assert_eq!(read(project.join("artifacts/more/pwd.txt")), "/workflow/build/deep\n");
    assert!(!project.join("build").exists());
    assert_eq!(
        read(project.join("artifacts/privileged/ok.txt")),
        "privileged-mount-ok\n"
    );
    // The other shapes of the same keys: docker-py's volume map, tmpfs and ulimit strings, an entrypoint list.
    assert_eq!(
        read(project.join("artifacts/shapes/out.txt")),
        "from a volume\n1024\n256\nro\n"
    );
    // Labels are part of the plan.
    let dry = sb.drun(&["run", "--dry-run", wf.to_str().unwrap(), "options"]).ok();
    assert!(dry.stdout.contains("label:       team=hpc"), "{}", dry.stdout);
}

#[test]
fn artifacts_are_saved_when_the_workflow_fails() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: broken
    image: {busybox}
    commands:
      - mkdir -p out
      - echo partial > out/result.txt
      - echo about to fail
      - exit 3
      - echo never > out/never.txt
    artifacts: [out]
"#,
    );
    let out = sb.drun(&["run", wf.to_str().unwrap()]);
    out.fails_with(3, &["Workflow \"broken\" is failed (exit code 3)."]);
    assert_eq!(read(project.join("artifacts/broken/out/result.txt")), "partial\n");
    assert!(!project.join("artifacts/broken/out/never.txt").exists());
    assert_eq!(read(project.join("artifacts/broken.log")), "about to fail\n");
    // A command missing from the image: the shell's 127.
    let wf = write(
        &project,
        "missing.yaml",
        "workflows:\n  - name: m\n    image: {busybox}\n    commands: [no-such-program]\n",
    );
    sb.drun(&["run", wf.to_str().unwrap()])
        .fails_with(127, &["Workflow \"m\" is failed (exit code 127)."]);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn artifacts_are_saved_when_interrupted() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: long
    image: {busybox}
    commands:
      - mkdir -p out
      - echo checkpoint-1 > out/ckpt.txt
      - echo ready
      - sleep 120
      - echo never > out/never.txt
    artifacts: [out]
  - name: after
    image: {busybox}
    commands: [echo should not run]
"#,
    );
    let child = sb
        .cmd(&["run", "-q", wf.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&project.join("artifacts/long.log"), "ready");
    let started = Instant::now();
    nix::sys::signal::kill(pid_of(&child), nix::sys::signal::SIGINT).unwrap();
    let out = wait(child, Duration::from_secs(60));
    // One Ctrl-C reaches the whole script (sleep included), not only PID 1.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(out.code(), Some(130), "{}", out.stderr);
    assert!(
        out.stderr.contains("Workflow \"long\" is interrupted"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("\"after\" is started"), "{}", out.stderr);
    assert_eq!(read(project.join("artifacts/long/out/ckpt.txt")), "checkpoint-1\n");
    assert!(!project.join("artifacts/long/out/never.txt").exists());
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn mounted_artifacts_survive_a_sigkill_of_drun() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: ckpt
    image: {busybox}
    commands:
      - echo epoch-1 > checkpoints/epoch-1.txt
      - echo ready
      - sleep 120
    artifacts:
      - path: checkpoints
        mount: true
"#,
    );
    let mut child = sb
        .cmd(&["run", "-q", wf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&project.join("artifacts/ckpt.log"), "ready");
    // Written straight to the host, before anything ended.
    assert_eq!(
        read(project.join("artifacts/ckpt/checkpoints/epoch-1.txt")),
        "epoch-1\n"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        read(project.join("artifacts/ckpt/checkpoints/epoch-1.txt")),
        "epoch-1\n"
    );
    // The container drun left is reaped by the next drun.
    sb.drun(&["ps", "-q"]).ok();
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn deps_run_first_and_hand_over_their_artifacts() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: evaluate
    image: {busybox}
    deps: [train]
    commands:
      - cat model/weights.txt
      - (echo tamper > model/weights.txt) 2>/dev/null && echo dep-writable || echo dep-readonly
      - cat model/weights.txt > score.txt
    artifacts: [score.txt]
  - name: prepare
    image: {busybox}
    commands:
      - mkdir -p data && echo dataset > data/set.txt
    artifacts: [data]
  - name: train
    image: {busybox}
    deps: [prepare]
    commands:
      - mkdir -p model
      - (cat data/set.txt; echo trained) > model/weights.txt
    artifacts: [model]
  - name: unrelated
    image: {busybox}
    commands: [echo unrelated]
"#,
    );
    let out = sb.drun(&["run", wf.to_str().unwrap(), "evaluate"]).ok();
    let starts: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.ends_with("is started."))
        .map(|l| l.split('"').nth(1).unwrap())
        .collect();
    assert_eq!(starts, ["prepare", "train", "evaluate"]);
    assert!(
        out.stdout.contains("dataset\ntrained\ndep-readonly\n"),
        "{}",
        out.stdout
    );
    assert_eq!(read(project.join("artifacts/evaluate/score.txt")), "dataset\ntrained\n");
    assert!(!project.join("artifacts/unrelated.log").exists());
}

#[test]
fn a_failure_stops_dependents_and_keep_going_runs_the_rest() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: first
    image: {busybox}
    commands: [exit 4]
  - name: dependent
    image: {busybox}
    deps: [first]
    commands: [echo dependent ran]
  - name: independent
    image: {busybox}
    commands: [echo independent ran]
"#,
    );
    let out = sb
        .drun(&["run", wf.to_str().unwrap()])
        .fails_with(4, &["\"first\" is failed (exit code 4)"]);
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
    let out = sb
        .drun(&["run", "--keep-going", wf.to_str().unwrap()])
        .fails_with(4, &["\"dependent\" is skipped: its dependency \"first\" failed"]);
    assert!(out.stdout.contains("independent ran"), "{}", out.stdout);
    assert!(!out.stdout.lines().any(|l| l == "dependent ran"), "{}", out.stdout);
}

/// Every message and location is checked by the unit tests of `workflow::load` (src/workflow/load.rs) and of the
/// flag checks (src/commands/run/workflow.rs); here only what the binary adds: drun's exit status, and nothing run.
/// Needs neither an image nor the registry.
#[test]
fn malformed_files_are_reported_with_their_location() {
    let sb = Sandbox::new();
    let project = sb.path().join("project");
    let wf = write(
        &project,
        "misspelt.yaml",
        "workflows:\n  - name: a\n    image: x\n    comands:\n      - echo hi\n",
    );
    let out = sb.drun(&["run", wf.to_str().unwrap()]).fails_with(
        125,
        &["misspelt.yaml:4:5: unknown key `comands` (did you mean `commands`?)"],
    );
    assert!(!out.stderr.contains("is started"), "{}", out.stderr);
    // Nothing ran, so nothing was written.
    assert!(!project.join("artifacts").exists());
    // A missing workflow file is an error, never an image pull.
    let missing = project.join("nope.yaml");
    sb.drun(&["run", missing.to_str().unwrap()])
        .fails_with(125, &["nope.yaml: cannot read the workflow file"]);
    // Flags that belong in the file are refused.
    let wf = write(&project, "ok.yaml", "workflows:\n  - name: train\n    image: x\n");
    sb.drun(&["run", "--memory", "1g", wf.to_str().unwrap()])
        .fails_with(125, &["-m/--memory cannot be used with a workflow file"]);
    sb.drun(&["run", wf.to_str().unwrap(), "trian"])
        .fails_with(125, &["no workflow named \"trian\" (did you mean `train`?)"]);
}

#[test]
fn an_unknown_image_fails_before_anything_runs() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        &format!(
            "workflows:\n  - name: ok\n    image: {{busybox}}\n    commands: [echo ran]\n  - name: bad\n    image: {}/drun-test/does-not-exist:1\n",
            registry()
        ),
    );
    let out = sb
        .drun(&["run", wf.to_str().unwrap()])
        .fails_with(125, &["drun-test/does-not-exist:1"]);
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
    assert!(!out.stderr.contains("is started"), "{}", out.stderr);
}

#[test]
fn requirements_need_pip_in_the_image_and_the_file_on_the_host() {
    // (Installing them, once, is tests/integration/setup.rs.)
    let (sb, project) = ready();
    std::fs::write(project.join("requirements.txt"), "drun-hello\n").unwrap();
    let wf = write(
        &project,
        "wf.yaml",
        "workflows:\n  - name: nopip\n    image: {busybox}\n    requirements: requirements.txt\n    commands: [echo never]\n",
    );
    let nopip = sb.drun(&["run", "-q", wf.to_str().unwrap(), "nopip"]);
    assert!(!nopip.stdout.contains("never"), "{}", nopip.stdout);
    nopip.fails_with(
        127,
        &["pip: not found in the image (looked for pip and pip3 in its PATH)"],
    );
    // A requirements file that does not exist is a validation error.
    let wf = write(
        &project,
        "missing.yaml",
        "workflows:\n  - name: a\n    image: x\n    requirements: nope.txt\n",
    );
    sb.drun(&["run", wf.to_str().unwrap()]).fails_with(
        125,
        &["missing.yaml:4:19: requirements file", "nope.txt does not exist"],
    );
}

#[test]
fn dry_run_prints_the_plan_and_runs_nothing() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: plan
    image: {busybox}
    environment:
      MODE: fast
    resources:
      cpu: 2
      memory: 1GB
      shm_size: 2GB
    commands: [echo hi]
    artifacts:
      - out
      - path: live
        mount: true
"#,
    );
    let out = sb.drun(&["run", "--dry-run", wf.to_str().unwrap()]).ok();
    let o = &out.stdout;
    let inspect: serde_json::Value = serde_json::from_str(&sb.drun(&["inspect", &busybox()]).ok().stdout).unwrap();
    let digest = inspect["Digest"].as_str().expect("a manifest digest in inspect");
    assert!(o.contains(&format!("@{digest})")), "{digest} not in\n{o}");
    for want in [
        "workflow plan",
        "sha256:",
        r#"argv:        ["/bin/sh","-c","set -e\necho hi\n"]"#,
        "init:        catatonit",
        "env:         MODE=fast",
        "-> /workflow (copy-on-write)",
        "cpus:        2",
        "memory:      1.0 GiB (1073741824 bytes)",
        "shm_size:    2.0 GiB",
        "artifact:    /workflow/out ->",
        "artifact:    /workflow/live ->",
        "(mounted)",
        "log:         ",
    ] {
        assert!(o.contains(want), "{want:?} not in\n{o}");
    }
    assert!(!project.join("artifacts").exists(), "a dry run wrote artifacts");
}

#[test]
fn artifacts_under_sudo_belong_to_the_invoking_user() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: owned
    image: {busybox}
    commands:
      - mkdir -p out/sub && echo x > out/sub/file && echo y > live/file
    artifacts:
      - out
      - path: live
        mount: true
"#,
    );
    let dest = sb.path().join("elsewhere");
    sb.drun_with(
        &["run", "-q", "--artifacts", dest.to_str().unwrap(), wf.to_str().unwrap()],
        &[("SUDO_UID", "4321".as_ref()), ("SUDO_GID", "8765".as_ref())],
    )
    .ok();
    for p in [
        "",
        "owned",
        "owned.log",
        "owned/out",
        "owned/out/sub",
        "owned/out/sub/file",
        "owned/live",
        "owned/live/file",
    ] {
        let m = std::fs::symlink_metadata(dest.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!((m.uid(), m.gid()), (4321, 8765), "{p}");
    }
    assert!(!project.join("artifacts").exists());
}

/// The files in examples/ (also what `make demo` runs) work as documented.
#[test]
fn the_examples_run() {
    let (sb, _) = ready();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let out_dir = sb.path().join("artifacts");
    let dest = out_dir.to_str().unwrap();
    sb.drun(&[
        "run",
        "-q",
        "--artifacts",
        dest,
        examples.join("hello/workflow.yaml").to_str().unwrap(),
    ])
    .ok();
    assert_eq!(read(out_dir.join("train/output/hello.txt")), "Hello, world!\n");
    let pipeline = examples.join("pipeline/workflow.yaml");
    let out = sb
        .drun(&["run", "-q", "--artifacts", dest, pipeline.to_str().unwrap(), "report"])
        .ok();
    assert!(out.stdout.contains("epoch 3/3: total=1501500"), "{}", out.stdout);
    assert!(out.stdout.contains("memory limit 268435456"), "{}", out.stdout);
    assert_eq!(
        read(out_dir.join("report/report/summary.txt")),
        "model weights 1501500\n"
    );
    assert_eq!(
        read(out_dir.join("train/checkpoints/epoch-2.txt")),
        "epoch 2/3: total=1001000\n"
    );
    assert_eq!(read(out_dir.join("prepare/data/numbers.txt")).lines().count(), 1000);
    // Nothing was written into the repository.
    assert!(!examples.join("pipeline/artifacts").exists());
    assert!(!examples.join("hello/artifacts").exists());
}

/// Issue 18: stdout and stderr have a pipe each (stdout alone is the workflow's output); drun passes each to its
/// own stream of the same name, and the log keeps them in the order they arrived.
#[test]
fn stdout_and_stderr_are_split_and_the_log_keeps_their_order() {
    let (sb, project) = ready();
    // Writes half a second apart: far more than drun needs to wake up, even on a loaded machine.
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: talk
    image: {busybox}
    commands:
      - echo out1
      - sleep 0.5
      - echo err1 >&2
      - sleep 0.5
      - echo out2
      - sleep 0.5
      - echo err2 >&2
"#,
    );
    let out = sb.drun(&["run", wf.to_str().unwrap()]).ok();
    assert_eq!(out.stdout, "out1\nout2\n");
    assert!(
        out.stderr.contains("err1\n") && out.stderr.contains("err2\n"),
        "{}",
        out.stderr
    );
    assert_eq!(read(project.join("artifacts/talk.log")), "out1\nerr1\nout2\nerr2\n");
    assert_eq!(read(project.join("artifacts/talk.stdout")), "out1\nout2\n");
}

/// Issue 18: a workflow's stdout is its output, used by declared dependents in their commands and environment
/// (trailing newlines trimmed), never its stderr; one larger than 1 MiB is refused with a clear error.
#[test]
fn dependents_use_a_workflows_stdout_in_commands_and_environment() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: produce
    image: {busybox}
    commands:
      - printf 'two words\nsecond line\n\n'
      - echo noise >&2
  - name: consume
    image: {busybox}
    deps: [produce]
    environment:
      FROM_DEP: "<${deps.produce.stdout}>"
    command: [sh, -c, 'printf "env=%s\n" "$FROM_DEP"; printf "arg=%s\n" "$0"', "${deps.produce.stdout}"]
  - name: script
    image: {busybox}
    deps: [produce]
    commands:
      - echo "script=${deps.produce.stdout}" > script.txt
    artifacts: [script.txt]
  - name: big
    image: {busybox}
    commands:
      - head -c 1100000 /dev/zero | tr '\0' x
  - name: too-big
    image: {busybox}
    deps: [big]
    commands:
      - echo "${deps.big.stdout}" | wc -c
"#,
    );
    let path = wf.to_str().unwrap();
    let out = sb.drun(&["run", path, "consume", "script"]).ok();
    let value = "two words\nsecond line";
    assert!(out.stdout.contains(&format!("env=<{value}>\n")), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("arg={value}\n")), "{}", out.stdout);
    assert_eq!(
        read(project.join("artifacts/script/script.txt")),
        format!("script={value}\n")
    );
    assert_eq!(
        read(project.join("artifacts/produce.stdout")),
        "two words\nsecond line\n\n"
    );
    assert!(read(project.join("artifacts/produce.log")).contains("noise"));

    let out = sb.drun(&["run", path, "too-big"]).fails_with(
        125,
        &[
            "cannot use the output of workflow \"big\": its stdout is larger than 1 MiB",
            "Workflow \"too-big\" is failed (exit code 125).",
        ],
    );
    assert!(out.stderr.contains("Workflow \"big\" is successful."), "{}", out.stderr);
    assert_eq!(
        std::fs::metadata(project.join("artifacts/big.stdout")).unwrap().len(),
        1_100_000
    );
    assert!(!out.stdout.contains("1100001"), "{}", out.stdout);
}

/// Issue 18: `--log-format json` gives one JSON object per event; the text status lines keep their format.
#[test]
fn status_lines_as_text_or_json() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: ok
    image: {busybox}
    commands: [sleep 0.2]
  - name: fails
    image: {busybox}
    deps: [ok]
    commands: [exit 3]
  - name: after
    image: {busybox}
    deps: [fails]
    commands: [true]
"#,
    );
    let path = wf.to_str().unwrap();
    let out = sb.drun(&["run", "--keep-going", path]).fails_with(3, &[]);
    let status: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with('[')).collect();
    let expected = [
        "Workflow \"ok\" is started.",
        "Workflow \"ok\" is successful.",
        "Workflow \"fails\" is started.",
        "Workflow \"fails\" is failed (exit code 3).",
        "Workflow \"after\" is skipped: its dependency \"fails\" failed.",
    ];
    assert_eq!(status.len(), expected.len(), "{}", out.stderr);
    for (line, message) in status.iter().zip(expected) {
        // `[YYYY-MM-DD HH:MM:SS] message`
        let (stamp, rest) = line.split_at(22);
        assert_eq!(rest, format!("{message}"), "{line}");
        let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
        assert_eq!((digits.len(), &stamp[..1], &stamp[20..]), (14, "[", "] "), "{line}");
    }

    let out = sb
        .drun(&["run", "--keep-going", "--log-format", "json", path])
        .fails_with(3, &[]);
    let events: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let brief: Vec<(String, String, Option<i64>)> = events
        .iter()
        .map(|e| {
            (
                e["workflow"].as_str().unwrap().to_string(),
                e["event"].as_str().unwrap().to_string(),
                e["exit_code"].as_i64(),
            )
        })
        .collect();
    let expected = [
        ("ok", "started", None),
        ("ok", "successful", Some(0)),
        ("fails", "started", None),
        ("fails", "failed", Some(3)),
        ("after", "skipped", None),
    ]
    .map(|(w, e, c)| (w.to_string(), e.to_string(), c));
    assert_eq!(brief, expected, "{}", out.stderr);
    for e in &events {
        let time = e["time"].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).is_ok(),
            "{time}"
        );
    }
    let duration = events[1]["duration"].as_f64().unwrap();
    assert!((0.2..120.0).contains(&duration), "{duration}");
    assert_eq!(events[4]["dependency"], "fails");
}

/// Issue 18: runflow's "hello world" (its docker_run documentation's first example) as examples/runflow: one
/// workflow echoes, the next writes that output to the host file `--var out=…` names, through a volume.
#[test]
fn the_runflow_example_writes_hello_world_to_the_host() {
    let (sb, _) = ready();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/runflow/workflow.yaml");
    let artifacts = sb.path().join("artifacts");
    let out_file = sb.path().join("out.txt");
    std::fs::write(&out_file, "").unwrap();
    let var = format!("out={}", out_file.display());
    // As runflow takes it: the flag after the file.
    let out = sb
        .drun(&[
            "run",
            "--artifacts",
            artifacts.to_str().unwrap(),
            example.to_str().unwrap(),
            "--var",
            &var,
        ])
        .ok();
    assert_eq!(read(&out_file), "hello world\n");
    assert_eq!(read(artifacts.join("echo.stdout")), "hello world\n");
    assert!(
        out.stderr.contains("Workflow \"save\" is successful."),
        "{}",
        out.stderr
    );
    // The same from a var-file, which --var overrides.
    let other = sb.path().join("other.txt");
    std::fs::write(&other, "").unwrap();
    let vars = sb.path().join("vars.yaml");
    std::fs::write(&vars, format!("out: {}\n", other.display())).unwrap();
    std::fs::write(&out_file, "").unwrap();
    sb.drun(&[
        "run",
        "--artifacts",
        artifacts.to_str().unwrap(),
        "--var-file",
        vars.to_str().unwrap(),
        example.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(read(&other), "hello world\n");
    assert_eq!(read(&out_file), "");
    sb.drun(&[
        "run",
        "--artifacts",
        artifacts.to_str().unwrap(),
        "--var-file",
        vars.to_str().unwrap(),
        "--var",
        &var,
        example.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(read(&out_file), "hello world\n");
    // Without the variable: a located error, and nothing runs.
    let out = sb
        .drun(&[
            "run",
            "--artifacts",
            artifacts.to_str().unwrap(),
            example.to_str().unwrap(),
        ])
        .fails_with(125, &["runflow/workflow.yaml:16:7: variable \"out\" is not set"]);
    assert!(!out.stderr.contains("is started"), "{}", out.stderr);
}

/// Every run directory, mount and libcontainer state of the sandbox, and processes naming its state directory.
fn service_leftovers(sb: &Sandbox) -> Vec<String> {
    let mut left = leftovers(sb);
    let state = sb.state().display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(&state) {
                left.push(c);
            }
        }
    }
    left
}

#[test]
fn a_workflow_talks_to_its_service_which_is_gone_afterwards() {
    let (sb, project) = ready();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The service listens after a second (the job waits for its health check); its SIGTERM handler lets it
    // stop at once.
    let wf = write(
        &project,
        "workflow.yaml",
        &r#"workflows:
  - name: client
    image: {busybox}
    services:
      - name: web
        image: {busybox}
        environment:
          GREETING: hello-from-the-service
          # For the container only: never in the environment of the drun that starts it.
          LD_PRELOAD: /nonexistent/drun-test-preload.so
        command: ["sh", "-c", "mkdir -p /www && echo $GREETING > /www/index.html && echo serving; sleep 1; trap 'echo stopping; exit 0' TERM; httpd -f -p 127.0.0.1:PORT -h /www & wait"]
        healthcheck:
          test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:PORT/"]
          interval: 200ms
          retries: 100
    commands:
      - wget -q -O- http://127.0.0.1:PORT/
  - name: broken
    image: {busybox}
    services:
      - name: db
        image: {busybox}
        command: ["sh", "-c", "trap 'exit 0' TERM; echo db-starting; while :; do sleep 0.1; done"]
        healthcheck:
          test: echo not-ready; exit 1
          interval: 100000000
          retries: 2
    commands:
      - echo must-not-run
  - name: after
    image: {busybox}
    deps: [broken]
    commands:
      - echo must-not-run
"#
        .replace("PORT", &port.to_string()),
    );
    let started = Instant::now();
    let out = sb.drun(&["run", "--keep-going", wf.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(out.code(), Some(125), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "hello-from-the-service\n", "{}", out.stderr);
    assert!(!out.stderr.contains("cannot be preloaded"), "{}", out.stderr);
    let env_files: Vec<_> = std::fs::read_dir(sb.state())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".env-"))
        .collect();
    assert!(env_files.is_empty(), "{env_files:?}");
    assert!(read(project.join("artifacts/client.log")).ends_with("hello-from-the-service\n"));
    assert!(
        out.stderr.contains("Workflow \"client\" is successful."),
        "{}",
        out.stderr
    );
    // Its log beside the workflow's: everything it wrote, up to its stop.
    let artifacts = project.join("artifacts");
    assert_eq!(read(artifacts.join("client.services/web.log")), "serving\nstopping\n");
    // A service that turns unhealthy fails its workflow, by name, before the commands; its dependents are skipped.
    assert!(
        out.stderr
            .contains("workflow \"broken\": service \"db\" is not ready: container"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("is unhealthy: the last probe exited with 1: \"not-ready\""),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("must-not-run") && !out.stderr.contains("must-not-run"));
    assert!(read(artifacts.join("broken.log")).contains("service \"db\" is not ready"));
    assert_eq!(read(artifacts.join("broken.services/db.log")), "db-starting\n");
    // Nothing of either is left: no container listed, no run directory, mount, cgroup or process.
    assert_eq!(sb.drun(&["ps", "-a", "-q"]).ok().stdout, "");
    assert!(service_leftovers(&sb).is_empty(), "{:?}", service_leftovers(&sb));
    for log in ["client.log", "broken.log"] {
        let text = read(artifacts.join(log));
        let id = text
            .split("runs as container ")
            .nth(1)
            .and_then(|t| t.get(..12))
            .unwrap_or_else(|| panic!("{log}: {text}"));
        assert!(
            crate::run::cgroup_dirs(id).is_empty(),
            "{:?}",
            crate::run::cgroup_dirs(id)
        );
    }
    assert!(took < Duration::from_secs(120), "{took:?}");
}

#[test]
fn a_ctrl_c_while_services_start_or_the_workflow_runs_still_removes_them() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "wf.yaml",
        r#"workflows:
  - name: waiting
    image: {busybox}
    services:
      - name: slow
        image: {busybox}
        command: ["sh", "-c", "trap 'echo slow-stopping; exit 0' TERM; echo slow-up; while :; do sleep 0.1; done"]
        healthcheck: {test: exit 1, interval: 100ms, retries: 100000}
    commands: [echo must-not-run]
  - name: running
    image: {busybox}
    services:
      - name: quick
        image: {busybox}
        command: ["sh", "-c", "trap 'echo quick-stopping; exit 0' TERM; echo quick-up; while :; do sleep 0.1; done"]
        healthcheck: {test: "true", interval: 100ms}
    commands:
      - echo ready
      - sleep 120
"#,
    );
    // While the workflow waits for its service to turn healthy.
    let child = sb
        .cmd(&["run", "-q", wf.to_str().unwrap(), "waiting"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its handler for SIGTERM is set once it has written its first line.
    wait_until("the service to run", || {
        let ids = sb.drun(&["ps", "-q"]).ok().stdout;
        ids.lines()
            .next()
            .is_some_and(|id| sb.drun(&["logs", id]).stdout.contains("slow-up"))
    });
    nix::sys::signal::kill(pid_of(&child), nix::sys::signal::SIGINT).unwrap();
    let out = wait(child, Duration::from_secs(120));
    assert_eq!(out.code(), Some(130), "{}", out.stderr);
    assert!(
        out.stderr.contains("interrupted while its services started"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("must-not-run"));
    let log = project.join("artifacts/waiting.services/slow.log");
    assert_eq!(read(&log), "slow-up\nslow-stopping\n");
    assert_eq!(sb.drun(&["ps", "-a", "-q"]).ok().stdout, "");
    assert!(service_leftovers(&sb).is_empty(), "{:?}", service_leftovers(&sb));

    // While the workflow's own container runs.
    let child = sb
        .cmd(&["run", "-q", wf.to_str().unwrap(), "running"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&project.join("artifacts/running.log"), "ready");
    nix::sys::signal::kill(pid_of(&child), nix::sys::signal::SIGINT).unwrap();
    let out = wait(child, Duration::from_secs(120));
    assert_eq!(out.code(), Some(130), "{}", out.stderr);
    assert!(
        out.stderr.contains("Workflow \"running\" is interrupted"),
        "{}",
        out.stderr
    );
    assert_eq!(
        read(project.join("artifacts/running.services/quick.log")),
        "quick-up\nquick-stopping\n"
    );
    assert_eq!(sb.drun(&["ps", "-a", "-q"]).ok().stdout, "");
    assert!(service_leftovers(&sb).is_empty(), "{:?}", service_leftovers(&sb));
}

/// A project whose `link` (below it) is a symlink to a directory elsewhere, and a workflow that writes an artifact:
/// its run fails before it runs, naming `shown`, and nothing is written where the link points. Returns the
/// sandbox, the elsewhere directory and the workflow file.
fn symlinked_artifacts_are_refused(dirs: &[&str], link: &str, shown: &str) -> (Sandbox, PathBuf, PathBuf) {
    let (sb, project) = ready();
    let elsewhere = sb.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for d in dirs {
        std::fs::create_dir_all(project.join(d)).unwrap();
    }
    std::os::unix::fs::symlink(&elsewhere, project.join(link)).unwrap();
    let wf = write(
        &project,
        "wf.yaml",
        "workflows:\n  - name: job\n    image: {busybox}\n    commands: [mkdir -p out, echo x > out/f]\n    artifacts: [out]\n",
    );
    sb.drun(&["run", wf.to_str().unwrap()]).fails_with(
        125,
        &[
            shown,
            "is a symbolic link, which is not followed in the artifacts directory",
        ],
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    (sb, elsewhere, wf)
}

/// A symlink planted in the artifacts directory (by someone else who can write the project) is not followed: the
/// workflow fails before it runs, and nothing is written where the link points.
#[test]
fn a_symlink_planted_in_the_artifacts_directory_is_not_followed() {
    symlinked_artifacts_are_refused(&["artifacts"], "artifacts/job", "artifacts/job");
}

/// Nor is `artifacts/` itself, beside the workflow file: whoever wrote the file could have linked it to /root, and
/// root's logs and artifacts would land there. A directory the caller names with `--artifacts` is the caller's.
#[test]
fn a_symlinked_default_artifacts_directory_is_not_followed() {
    let (sb, elsewhere, wf) = symlinked_artifacts_are_refused(&[], "artifacts", "artifacts");
    let given = sb.path().join("given");
    std::os::unix::fs::symlink(&elsewhere, &given).unwrap();
    sb.drun(&["run", "--artifacts", given.to_str().unwrap(), wf.to_str().unwrap()])
        .ok();
    assert_eq!(std::fs::read(elsewhere.join("job/out/f")).unwrap(), b"x\n");
}
