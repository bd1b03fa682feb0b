//! drun in a CI runner: inside a privileged podman job container (podman with its own root, run root and temp
//! directory under the test's), built from the Debian test image's layout, with this drun bind-mounted in and its
//! store and state on the job container's overlay root. `tests/nested/ci-job.sh` checks from inside; this test
//! checks that nothing is left on the host: the job container, its mounts, its cgroup, podman's storage; and that
//! in a job container that is not privileged drun names the runner setting to change.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn podman(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    for (flag, sub) in [("--root", "root"), ("--runroot", "runroot"), ("--tmpdir", "tmp")] {
        c.arg(flag).arg(dir.join(sub));
    }
    c.args([
        "--storage-driver",
        "overlay",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "none",
        // runc, not podman's default crun: crun refuses a hybrid cgroup host whose cgroup2 hierarchy has any
        // controller (hugetlb, on kernels where no v1 hierarchy takes it), where runc leaves v2 alone.
        "--runtime",
        "runc",
    ]);
    c
}

/// The caller's hard limit of `resource` (`n`: open files): the job container gets it, since without
/// CAP_SYS_RESOURCE (as in this sandbox) podman's default above it fails.
fn hard_limit(resource: &str) -> String {
    let out = run(
        {
            let mut c = Command::new("bash");
            c.args(["-c", &format!("ulimit -H{resource}")]);
            c
        },
        Duration::from_secs(10),
    )
    .ok();
    out.stdout.trim().to_string()
}

fn mounts_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    info.lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&dir)))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_privileged_ci_job_container_runs_drun_through_overlay_and_leaves_nothing() {
    assert!(
        is_root(),
        "podman with its own root needs root (make test runs it as root)"
    );
    let t = tempfile::Builder::new().prefix("drun-nested-").tempdir().unwrap();
    let dir = t.path();
    let layout = cache().join("layouts/debian-base");
    let pulled = run(
        {
            let mut c = podman(dir);
            c.args(["pull", "-q", &format!("oci:{}:base", layout.display())]);
            c
        },
        Duration::from_secs(300),
    )
    .ok();
    let image = pulled.stdout.lines().last().expect("an image id").trim().to_string();
    // Root ignores RLIMIT_NPROC; any value podman can set will do.
    let (nofile, nproc) = (hard_limit("n"), 4096);
    let cidfile = dir.join("cid");
    let job = run(
        {
            let mut c = podman(dir);
            c.args(["run", "--rm", "--privileged", "--network", "host"])
                .arg(format!("--cidfile={}", cidfile.display()))
                .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
                .arg(format!("--ulimit=nproc={nproc}:{nproc}"))
                .arg(format!("--env=REGISTRY={}", registry()))
                .arg(format!(
                    "--volume={}:/usr/local/bin/drun:ro",
                    env!("CARGO_BIN_EXE_drun")
                ))
                .arg(format!(
                    "--volume={}/tests/nested/ci-job.sh:/ci-job.sh:ro",
                    env!("CARGO_MANIFEST_DIR")
                ))
                .args([&image, "bash", "/ci-job.sh"]);
            c
        },
        Duration::from_secs(300),
    );
    assert!(
        job.status.success() && job.stdout.contains(" 0 failed"),
        "the CI job failed ({}):\n{}\n{}",
        job.status,
        job.stdout,
        job.stderr
    );

    // The job container is gone with everything it had on the host.
    let cid = std::fs::read_to_string(&cidfile).unwrap().trim().to_string();
    let left = run(
        {
            let mut c = podman(dir);
            c.args(["ps", "-aq"]);
            c
        },
        Duration::from_secs(60),
    )
    .ok();
    assert_eq!(left.stdout.trim(), "", "containers left");
    for controller in ["memory", "pids", "cpu"] {
        let cg = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("libpod_parent")
            .join(format!("libpod-{cid}"));
        assert!(!cg.exists(), "{} left", cg.display());
    }

    // A job container that is not privileged: drun names the runner setting to change, whether it lacks
    // CAP_SYS_ADMIN or only a writable /sys/fs/cgroup.
    for caps in [&[][..], &["--cap-add=SYS_ADMIN"][..]] {
        let out = run(
            {
                let mut c = podman(dir);
                c.args(["run", "--rm", "--network", "host"])
                    .args(caps)
                    .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
                    .arg(format!("--ulimit=nproc={nproc}:{nproc}"))
                    .arg(format!(
                        "--volume={}:/usr/local/bin/drun:ro",
                        env!("CARGO_BIN_EXE_drun")
                    ))
                    .args([&image, "drun", "run", "-q", &busybox(), "true"]);
                c
            },
            Duration::from_secs(120),
        );
        assert_eq!(out.code(), Some(125), "{caps:?}: {}", out.stderr);
        assert!(out.stderr.contains("privileged = true"), "{caps:?}: {}", out.stderr);
    }
    run(
        {
            let mut c = podman(dir);
            c.args(["system", "reset", "--force"]);
            c
        },
        Duration::from_secs(120),
    )
    .ok();
    assert_eq!(mounts_below(dir), Vec::<String>::new(), "mounts left");
    t.close().expect("the podman root is removed");
}
