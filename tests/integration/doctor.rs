//! `drun doctor`: the report as root and as the test users, with and without subordinate ids, the JSON form,
//! and the exit status when something a run needs is missing.

use std::path::Path;
use std::time::Duration;

use crate::common::{self, Output, Sandbox};

fn ids(user: &str) -> (u32, u32) {
    let u = nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap_or_else(|| panic!("test user {user} is missing: run `bash tests/fixtures/test-users.sh up`"));
    (u.uid.as_raw(), u.gid.as_raw())
}

/// `drun doctor ARGS` as `user`, in a home of its own under `dir`.
fn doctor_as(user: &str, dir: &Path, args: &[&str]) -> Output {
    let (uid, gid) = ids(user);
    let home = dir.join(user);
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    let mut c = common::as_user(uid, gid, &home, env!("CARGO_BIN_EXE_drun"));
    c.arg("doctor").args(args).env("XDG_DATA_HOME", home.join("data"));
    common::run(c, Duration::from_secs(60))
}

/// The report's line for check `name`: (status, value).
fn line<'a>(out: &'a Output, name: &str) -> (&'a str, &'a str) {
    out.stdout
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let status = f.next()?;
            let rest = l.trim_start().strip_prefix(status)?.trim_start().strip_prefix(name)?;
            rest.starts_with("  ").then(|| (status, rest.trim()))
        })
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{}", out.stdout))
}

#[test]
fn doctor_reports_the_host_as_root() {
    assert!(common::is_root(), "run as root");
    let sb = Sandbox::new();
    let out = sb.drun(&["doctor"]).ok();
    for heading in ["Kernel", "Identity", "GPUs, RDMA, Slurm", "Storage"] {
        assert!(out.stdout.lines().any(|l| l == heading), "{heading}:\n{}", out.stdout);
    }
    assert!(line(&out, "kernel").1.starts_with("Linux "));
    assert_eq!(line(&out, "user namespaces").0, "ok");
    assert!(line(&out, "cgroup").1.starts_with('v'));
    assert_eq!(line(&out, "caller"), ("ok", "root (uid 0)"));
    assert_eq!(line(&out, "subuid").0, "note", "not needed as root");
    assert!(line(&out, "newuidmap").1.contains("(setuid root)"));
    assert_eq!(line(&out, "GPUs"), ("note", "none (no NVIDIA driver with GPUs)"));
    assert_eq!(
        line(&out, "Slurm"),
        ("note", "not in a Slurm job"),
        "the harness clears SLURM_*"
    );
    let store = line(&out, "store");
    assert!(store.1.starts_with(&format!("{:?} on ", sb.store())), "{store:?}");
    assert!(out.stdout.ends_with("drun has what it needs here.\n"));

    // The simulated driver's GPUs, from the same discovery drun run uses.
    let driver = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("bash")
        .arg(common::fixture("fake-driver.sh"))
        .arg(driver.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let out = common::run(
        {
            let mut c = sb.cmd(&["doctor", "--json"]);
            c.env("DRUN_DRIVER_ROOT", driver.path());
            c
        },
        Duration::from_secs(60),
    )
    .ok();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["ok"], true);
    let gpus = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "GPUs")
        .unwrap();
    assert_eq!(gpus["status"], "ok");
    assert!(gpus["value"].as_str().unwrap().contains("NVIDIA driver"), "{gpus}");
}

#[test]
fn doctor_as_users_says_what_to_fix() {
    assert!(common::is_root(), "switches to the test users");
    let dir = tempfile::Builder::new().prefix("drun-doctor-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let out = doctor_as("drun-sub", dir.path(), &[]).ok();
    assert!(line(&out, "caller").1.starts_with("drun-sub (uid "), "{}", out.stdout);
    assert!(line(&out, "caller")
        .1
        .ends_with("rootless, in a user namespace of its own"));
    assert_eq!(line(&out, "subuid").0, "ok");
    assert!(line(&out, "subuid").1.starts_with("/etc/subuid: "));

    let out = doctor_as("drun-nosub", dir.path(), &[]).ok();
    assert_eq!(line(&out, "subuid").0, "warn");
    assert!(
        out.stdout
            .contains("fix: an administrator adds a range: `usermod --add-subuids 100000-165535 drun-nosub`"),
        "{}",
        out.stdout
    );
    let store = line(&out, "store");
    assert!(
        store.1.contains("/drun-nosub/data/drun\" on "),
        "XDG_DATA_HOME: {store:?}"
    );

    // A store where the user cannot write: missing, with the fix, and exit status 1.
    let out = doctor_as("drun-nosub", dir.path(), &["--root", "/root/drun-doctor-store"]);
    assert_eq!(out.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(line(&out, "store").0, "MISSING");
    assert!(out
        .stdout
        .contains("fix: choose a directory of yours with --root or DRUN_ROOT"));
    assert!(out
        .stdout
        .ends_with("1 missing: drun run cannot work for you here until fixed.\n"));
    let out = doctor_as(
        "drun-nosub",
        dir.path(),
        &["--json", "--root", "/root/drun-doctor-store"],
    );
    assert_eq!(out.code(), Some(1));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
}
