//! Workflow setups kept as layers (`apt_packages`, `requirements`, `setup`): built once per image and content from
//! the loopback package index and Debian repository, reused (the servers' logs see no request), rebuilt when their
//! inputs change, never kept when they fail, built once by concurrent runs, shown by `drun images`, pruned.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::workflow::{read, ready, write};

/// A fixture server (pyindex.py, aptrepo.py) with an access log; killed on drop.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    fn start(fixture_name: &str, dir: &Path) -> Server {
        let log = dir.join(format!("{fixture_name}.log"));
        std::fs::write(&log, "").unwrap();
        let mut child = Command::new("python3")
            .arg(fixture(fixture_name))
            .arg(dir.join(fixture_name.trim_end_matches(".py")))
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut url = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut url).unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{fixture_name} printed {url:?}");
        Server {
            child,
            url: url.trim().to_string(),
            log,
        }
    }

    /// Requests served so far.
    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap().lines().count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The setup layers in the sandbox's store (`all`: also those a rebuild replaced, kept until no run uses them).
fn setup_dirs(sb: &Sandbox, all: bool) -> Vec<PathBuf> {
    let dir = sb.store().join("setup/host");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| all || !p.to_string_lossy().contains(".old."))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn setup_layers(sb: &Sandbox) -> Vec<PathBuf> {
    setup_dirs(sb, false)
}

fn python_workflow(project: &Path, index: &str, extra_build_env: &str, runtime_env: &str) -> PathBuf {
    let python = test_image("python:bookworm");
    write(
        project,
        "wf.yaml",
        &format!(
            r#"workflows:
  - name: py
    image: {python}
    requirements: requirements.txt
    build_environment:
      PIP_INDEX_URL: {index}
      PIP_TRUSTED_HOST: 127.0.0.1
      PIP_DISABLE_PIP_VERSION_CHECK: 1
      PIP_ROOT_USER_ACTION: ignore{extra_build_env}
    environment:
      GREETING_SUFFIX: "{runtime_env}"
    commands:
      - python3 -c 'import drun_hello; print(drun_hello.GREETING)' > greeting.txt
      - echo "$PIP_TRUSTED_HOST$GREETING_SUFFIX" > env.txt
    artifacts: [greeting.txt, env.txt]
"#
        ),
    )
}

#[test]
fn requirements_are_installed_once_and_rebuilt_when_their_inputs_change() {
    let (sb, project) = ready();
    sb.drun(&["pull", "-q", &test_image("python:bookworm")]).ok();
    let index = Server::start("pyindex.py", sb.path());
    std::fs::write(project.join("requirements.txt"), "drun-hello\n").unwrap();
    let wf = python_workflow(&project, &index.url, "", "");
    let wf_arg = wf.to_str().unwrap();
    let greeting = || read(project.join("artifacts/py/greeting.txt"));

    // First run: pip fetches from the index; the setup is kept.
    let out = sb.drun(&["run", wf_arg]).ok();
    assert!(
        out.stdout.contains("Successfully installed drun-hello-1.0"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("running the setup of workflow \"py\""),
        "{}",
        out.stderr
    );
    let first = index.requests();
    assert!(first > 0, "pip fetched nothing");
    assert_eq!(greeting(), "hello from drun_hello\n");
    // The build-time environment reaches the run too, below its own.
    assert_eq!(read(project.join("artifacts/py/env.txt")), "127.0.0.1\n");
    assert_eq!(setup_layers(&sb).len(), 1);

    // Second run: no pip, no request, the package is there.
    let out = sb.drun(&["run", wf_arg]).ok();
    assert!(!out.stdout.contains("Successfully installed"), "{}", out.stdout);
    assert!(!out.stderr.contains("running the setup"), "{}", out.stderr);
    assert_eq!(index.requests(), first, "the second run asked the index");
    assert_eq!(greeting(), "hello from drun_hello\n");

    // The runtime environment is not part of the key.
    python_workflow(&project, &index.url, "", "-changed");
    let out = sb.drun(&["run", wf_arg]).ok();
    assert!(!out.stderr.contains("running the setup"), "{}", out.stderr);
    assert_eq!(read(project.join("artifacts/py/env.txt")), "127.0.0.1-changed\n");
    assert_eq!(index.requests(), first);

    // A changed requirements file is built again.
    std::fs::write(project.join("requirements.txt"), "drun-hello==1.0\n").unwrap();
    let out = sb.drun(&["run", wf_arg]).ok();
    assert!(
        out.stdout.contains("Successfully installed drun-hello-1.0"),
        "{}",
        out.stdout
    );
    let second = index.requests();
    assert!(second > first, "a changed requirements file did not rebuild");
    assert_eq!(setup_layers(&sb).len(), 2);

    // So is a changed build-time environment.
    python_workflow(&project, &index.url, "\n      PIP_NO_COLOR: 1", "");
    let out = sb.drun(&["run", wf_arg]).ok();
    assert!(
        out.stdout.contains("Successfully installed drun-hello-1.0"),
        "{}",
        out.stdout
    );
    let third = index.requests();
    assert!(third > second, "a changed build_environment did not rebuild");

    // --no-cache builds it again, replacing the layer of the same key.
    let out = sb.drun(&["run", "--no-cache", wf_arg]).ok();
    assert!(
        out.stdout.contains("Successfully installed drun-hello-1.0"),
        "{}",
        out.stdout
    );
    assert!(index.requests() > third);
    assert_eq!(setup_layers(&sb).len(), 3);
    // The layer it replaced is kept beside it until garbage collection sees no run of that key.
    assert_eq!(setup_dirs(&sb, true).len(), 4);

    // `drun images` lists them; `prune` keeps the newest of the workflow only.
    let images = sb.drun(&["images"]).ok();
    assert!(images.stdout.contains("SETUP LAYER"), "{}", images.stdout);
    assert!(images.stdout.contains("workflow \"py\" in "), "{}", images.stdout);
    sb.drun(&["prune"]).ok();
    let left = setup_dirs(&sb, true);
    assert_eq!(left.len(), 1, "{left:?}");
    let out = sb.drun(&["run", wf_arg]).ok();
    assert!(
        !out.stderr.contains("running the setup"),
        "prune removed the layer in use: {}",
        out.stderr
    );
    // Once its image is removed, its setup layer goes too.
    sb.drun(&["rmi", &test_image("python:bookworm")]).ok();
    sb.drun(&["prune"]).ok();
    assert!(setup_layers(&sb).is_empty(), "{:?}", setup_layers(&sb));
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn apt_packages_from_a_local_repository_install_once() {
    let (sb, project) = ready();
    sb.drun(&["pull", "-q", &test_image("python:bookworm")]).ok();
    let repo = Server::start("aptrepo.py", sb.path());
    let wf = write(
        &project,
        "apt.yaml",
        &format!(
            r#"workflows:
  - name: deb
    image: {}
    apt_sources: ["deb [trusted=yes] {} ./"]
    apt_packages: [drun-hello-deb]
    commands:
      - cat /usr/share/drun-hello/greeting
      - test ! -e /etc/apt/sources.list.d/drun-setup.list && test ! -e /run/drun/apt-sources.list
      - ls /var/lib/apt/lists | grep -c 127.0.0.1 || true
"#,
            test_image("python:bookworm"),
            repo.url
        ),
    );
    let out = sb.drun(&["run", wf.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("hello from a deb"), "{}", out.stdout);
    assert!(out.stdout.contains("Setting up drun-hello-deb (1.0)"), "{}", out.stdout);
    let fetched = std::fs::read_to_string(&repo.log).unwrap();
    assert!(fetched.contains("drun-hello-deb_1.0_all.deb"), "{fetched}");
    // The package lists are not kept in the layer.
    assert!(out.stdout.trim_end().ends_with('0'), "{}", out.stdout);
    let requests = repo.requests();
    let out = sb.drun(&["run", wf.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("hello from a deb"), "{}", out.stdout);
    assert!(!out.stdout.contains("Setting up"), "{}", out.stdout);
    assert_eq!(repo.requests(), requests, "the second run asked the repository");
    // A name that is not a package's is refused where it is written.
    let bad = write(
        &project,
        "bad.yaml",
        "workflows:\n  - name: a\n    image: x\n    apt_packages: [\"vim; rm -rf /\"]\n",
    );
    sb.drun(&["run", bad.to_str().unwrap()])
        .fails_with(125, &["bad.yaml:4:20:", "is not a Debian package name"]);
}

#[test]
fn a_failing_setup_keeps_nothing_and_concurrent_runs_build_once() {
    let (sb, project) = ready();
    let wf = write(
        &project,
        "fail.yaml",
        "workflows:\n  - name: f\n    image: {busybox}\n    setup:\n      - echo partial > /partial\n      - exit 3\n    commands: [echo never]\n",
    );
    let out = sb
        .drun(&["run", wf.to_str().unwrap()])
        .fails_with(3, &["the setup failed (exit code 3)"]);
    assert!(!out.stdout.contains("never"), "{}", out.stdout);
    assert!(setup_layers(&sb).is_empty(), "{:?}", setup_layers(&sb));
    let staged: Vec<String> = sb.entries("tmp").into_iter().filter(|e| e.contains("setup")).collect();
    assert!(staged.is_empty(), "{staged:?}");
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));

    // Two runs of one setup at once: one builds, the other waits and uses it.
    let wf = write(
        &project,
        "slow.yaml",
        "workflows:\n  - name: s\n    image: {busybox}\n    setup:\n      - sleep 1\n      - echo built > /built\n    commands: [cat /built]\n",
    );
    // (Each with its own artifacts directory: one workflow's log is written by one run at a time.)
    let spawn = |artifacts: &str| {
        let dir = sb.path().join(artifacts);
        let mut c = sb.cmd(&["run", "--artifacts", dir.to_str().unwrap(), wf.to_str().unwrap()]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let (a, b) = (spawn("art-a"), spawn("art-b"));
    let (a, b) = (
        wait(a, Duration::from_secs(120)).ok(),
        wait(b, Duration::from_secs(120)).ok(),
    );
    for o in [&a, &b] {
        assert!(o.stdout.contains("built"), "{}", o.stdout);
    }
    let builds = [&a, &b]
        .iter()
        .filter(|o| o.stderr.contains("running the setup"))
        .count();
    assert_eq!(builds, 1, "{}\n{}", a.stderr, b.stderr);
    assert_eq!(setup_layers(&sb).len(), 1);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));

    // Where no overlay can keep it (here: overlays refused), the container does the setup itself.
    let wf = write(
        &project,
        "inline.yaml",
        "workflows:\n  - name: i\n    image: {busybox}\n    setup: [echo inline > /made]\n    commands: [cat /made]\n",
    );
    let flatten: &std::ffi::OsStr = "flatten".as_ref();
    for _ in 0..2 {
        let out = sb
            .drun_with(&["run", wf.to_str().unwrap()], &[("DRUN_ROOTFS", flatten)])
            .ok();
        assert!(out.stdout.contains("inline"), "{}", out.stdout);
        assert!(
            out.stderr.contains("the setup cannot be kept as a layer"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(setup_layers(&sb).len(), 1);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}
