//! The security model, tried as the people it protects against would: another local user looking at a running
//! container's state, and a hostile workflow trying to get host files out through its artifacts.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// An ordinary user of the host (made by `tests/fixtures/test-users.sh`).
fn other_user() -> (u32, u32) {
    let u = nix::unistd::User::from_name("drun-nosub")
        .unwrap()
        .expect("test user drun-nosub is missing: run `bash tests/fixtures/test-users.sh up` (make test does)");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// Runs a shell command as the other user; returns its exit code.
fn as_other(home: &Path, script: &str) -> i32 {
    let (uid, gid) = other_user();
    let mut c = as_user(uid, gid, home, "sh");
    c.args(["-c", script]);
    run(c, Duration::from_secs(30)).code().unwrap_or(-1)
}

#[test]
fn a_running_containers_state_is_useless_to_another_user() {
    assert!(is_root(), "container tests need root (make test runs them as root)");
    let sb = Sandbox::new();
    // As /run is: only drun's own permissions stand between the other user and the state directory.
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    sb.drun(&["pull", "-q", &busybox()]).ok();
    let mut child = sb
        .cmd(&[
            "run",
            "-e",
            "SECRET=hunter2",
            &busybox(),
            "sh",
            "-c",
            "trap 'exit 0' TERM; touch /ready; sleep 60 & wait",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let containers = sb.state().join("containers");
    let run_dir = || -> Option<PathBuf> {
        std::fs::read_dir(&containers)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("upper/ready").exists())
    };
    wait_until("the container to start", || run_dir().is_some());
    let dir = run_dir().unwrap();
    let id = dir.file_name().unwrap().to_str().unwrap().to_string();
    let home = sb.path().join("home");
    let st = sb.state();
    let tries = [
        format!("ls {}", st.display()),
        format!("ls {}", containers.display()),
        format!("ls {}", dir.display()),
        format!("cat {}/bundle/config.json", dir.display()),
        format!("cat {}/info.json", dir.display()),
        format!("ls {}/rootfs/", dir.display()),
        format!("{}/rootfs/bin/busybox true", dir.display()),
        format!("cat {}/rootfs/etc/passwd", dir.display()),
        format!("cat {}/upper/ready", dir.display()),
        format!("flock -n {}/lock true", dir.display()),
        format!("ls {}/libcontainer/{id}", st.display()),
        format!("cat {}/libcontainer/{id}/state.json", st.display()),
    ];
    let usable: Vec<&String> = tries.iter().filter(|t| as_other(&home, t) == 0).collect();
    // What drun keeps is private whatever the path: directories 0700, files 0600.
    let mut open = vec![];
    for (p, want) in [
        (st.clone(), 0o700),
        (containers.clone(), 0o700),
        (dir.clone(), 0o700),
        (dir.join("bundle"), 0o700),
        (dir.join("bundle/config.json"), 0o600),
        (dir.join("info.json"), 0o600),
        (dir.join("lock"), 0o600),
        (st.join("libcontainer"), 0o700),
    ] {
        let mode = std::fs::symlink_metadata(&p).unwrap().mode() & 0o777;
        if mode != want {
            open.push(format!("{} is {mode:o}", p.display()));
        }
    }
    let config = std::fs::read_to_string(dir.join("bundle/config.json")).unwrap();
    let _ = nix::sys::signal::kill(pid_of(&child), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    assert!(config.contains("SECRET=hunter2"), "the test looked at the wrong file");
    assert!(usable.is_empty(), "another user could: {usable:#?}");
    assert!(open.is_empty(), "not private: {open:?}");
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn setuid_binaries_work_in_the_container_when_no_new_privileges_is_off() {
    assert!(is_root(), "container tests need root (make test runs them as root)");
    let sb = Sandbox::new();
    sb.drun(&["pull", "-q", &debian()]).ok();
    // A setuid-root copy of `id` made in the container's own layer, run as nobody: the root file system is not
    // mounted nosuid (its host path is protected by permissions instead), so it works as in Docker.
    let script = "cp /usr/bin/id /usr/local/bin/suid-id && chmod 4755 /usr/local/bin/suid-id && \
                  setpriv --reuid 65534 --regid 65534 --clear-groups /usr/local/bin/suid-id -u";
    let off = sb
        .drun(&[
            "run",
            "--security-opt",
            "no-new-privileges=false",
            &debian(),
            "sh",
            "-c",
            script,
        ])
        .ok();
    assert_eq!(off.stdout.trim(), "0", "{}", off.stderr);
    // drun's default keeps no_new_privs: the bit is ignored.
    let on = sb.drun(&["run", &debian(), "sh", "-c", script]).ok();
    assert_eq!(on.stdout.trim(), "65534", "{}", on.stderr);
}

use crate::workflow::ready as project;

fn write_workflow(project: &Path, text: &str) -> PathBuf {
    crate::workflow::write(project, "workflow.yaml", text)
}

#[test]
fn artifacts_are_never_copied_through_a_symlinked_working_directory() {
    let (sb, project) = project();
    let secret = sb.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "root's secret\n").unwrap();
    std::fs::set_permissions(secret.join("key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let wf = write_workflow(
        &project,
        &format!(
            r#"workflows:
  - name: steal
    image: {{busybox}}
    working_dir: src
    commands:
      - cd /workflow && rm -rf src && ln -s {} src
    artifacts:
      - path: key
"#,
            secret.display()
        ),
    );
    let out = sb.drun(&["run", wf.to_str().unwrap()]);
    let stolen = project.join("artifacts/steal/key");
    assert!(
        !stolen.exists(),
        "a host file was copied out: {:?}",
        std::fs::read_to_string(&stolen)
    );
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn nothing_is_copied_while_a_process_of_the_container_lives() {
    let (sb, project) = project();
    // Inside a Slurm job the container shares the host's pid namespace: its background processes outlive its
    // main one. This one watches the host's artifact directory (mounted read-only) and says so if it ever sees
    // its artifact arrive while it is alive.
    let seen = project.join("artifacts");
    let vol = sb.path().join("vol");
    std::fs::create_dir_all(&seen).unwrap();
    std::fs::create_dir_all(&vol).unwrap();
    let wf = write_workflow(
        &project,
        &format!(
            r#"workflows:
  - name: job
    image: {{busybox}}
    volumes:
      - {}:/seen:ro
      - {}:/vol
    commands:
      - mkdir -p out && echo data > out/file
      - (trap '' TERM HUP INT; while :; do [ -e /seen/job/out/file ] && echo saw > /vol/flag; done) </dev/null >/dev/null 2>&1 &
      - sleep 0.5
    artifacts:
      - path: out
"#,
            seen.display(),
            vol.display()
        ),
    );
    let out = sb
        .drun_with(&["run", wf.to_str().unwrap()], &[("SLURM_JOB_ID", "4242".as_ref())])
        .ok();
    assert_eq!(
        std::fs::read_to_string(project.join("artifacts/job/out/file")).unwrap(),
        "data\n",
        "{}",
        out.stderr
    );
    assert!(
        !vol.join("flag").exists(),
        "a process of the container was alive while its artifacts were copied"
    );
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn artifacts_are_data_and_the_log_is_never_written_through_a_link() {
    let (sb, project) = project();
    // A log name planted as a symlink to a file root owns.
    let victim = sb.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::create_dir_all(project.join("artifacts")).unwrap();
    std::os::unix::fs::symlink(&victim, project.join("artifacts/job.log")).unwrap();
    // And the output's (issue 18).
    std::os::unix::fs::symlink(&victim, project.join("artifacts/job.stdout")).unwrap();
    let wf = write_workflow(
        &project,
        r#"workflows:
  - name: job
    image: {busybox}
    commands:
      - mkdir -p out && echo tool > out/tool && chmod 6755 out/tool
      - truncate -s 2G out/sparse
      - echo logged
    artifacts:
      - path: out
"#,
    );
    let out = sb.drun(&["run", wf.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "{}",
        out.stderr
    );
    let log = project.join("artifacts/job.log");
    assert!(std::fs::symlink_metadata(&log).unwrap().is_file());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "logged\n");
    let stdout = project.join("artifacts/job.stdout");
    assert!(std::fs::symlink_metadata(&stdout).unwrap().is_file());
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), "logged\n");
    // Setuid and setgid bits are dropped (artifacts are data), the rest of the mode kept.
    let tool = std::fs::metadata(project.join("artifacts/job/out/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755);
    // Holes stay holes: 2 GiB apparent, next to nothing on disk.
    let sparse = std::fs::metadata(project.join("artifacts/job/out/sparse")).unwrap();
    assert_eq!(sparse.len(), 2 << 30);
    assert!(
        sparse.blocks() < 64,
        "the sparse file was expanded: {} blocks",
        sparse.blocks()
    );
}

#[test]
fn files_drun_makes_for_the_container_keep_dockers_modes() {
    assert!(is_root(), "container tests need root (make test runs them as root)");
    let sb = Sandbox::new();
    sb.drun(&["pull", "-q", &busybox()]).ok();
    // drun's own umask is private; what the container sees is as Docker makes it: `/` 0755, /etc/hosts readable
    // by every user, a new working directory and mount points 0755, the process's umask 0022.
    let vol = sb.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let out = sb
        .drun(&[
            "run",
            "-u",
            "65534",
            "-w",
            "/new/work",
            "-v",
            &format!("{}:/deep/mount/point", vol.display()),
            &busybox(),
            "sh",
            "-c",
            "stat -c %a / /new /new/work /deep /deep/mount; cat /etc/hosts /etc/hostname >/dev/null && echo readable; umask",
        ])
        .ok();
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["755", "755", "755", "755", "755", "readable", "0022"],
        "{}",
        out.stderr
    );
}

#[test]
fn the_store_and_the_blob_caches_temporary_files_stay_private() {
    assert!(is_root(), "container tests need root (make test runs them as root)");
    let sb = Sandbox::new();
    let cache = sb.path().join("blob-cache");
    // Killed in the middle of a download: the blob cache keeps the temporary copy, which must be drun's alone
    // (the cache is shared; a reader must never see an unverified blob).
    let out = sb.drun_with(
        &["--blob-cache", cache.to_str().unwrap(), "pull", "-q", &debian()],
        &[("DRUN_FAILPOINT", "blob-cache-copying".as_ref())],
    );
    assert_eq!(out.status.signal(), Some(9), "{}", out.stderr);
    let tmps: Vec<PathBuf> = std::fs::read_dir(cache.join("sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(!tmps.is_empty(), "the kill left no temporary file to look at");
    for t in &tmps {
        assert_eq!(std::fs::metadata(t).unwrap().mode() & 0o777, 0o600, "{}", t.display());
    }
    sb.drun(&["--blob-cache", cache.to_str().unwrap(), "pull", "-q", &debian()])
        .ok();
    assert_eq!(std::fs::metadata(sb.store()).unwrap().mode() & 0o777, 0o700);
    for e in std::fs::read_dir(sb.store().join("locks")).unwrap().flatten() {
        assert_eq!(e.metadata().unwrap().mode() & 0o077, 0, "{}", e.path().display());
    }
    // Published blobs are for every user of the cache.
    for e in std::fs::read_dir(cache.join("sha256")).unwrap().flatten() {
        if !e.file_name().to_string_lossy().starts_with('.') {
            assert_eq!(e.metadata().unwrap().mode() & 0o777, 0o644, "{}", e.path().display());
        }
    }
}

#[test]
fn a_mounted_artifact_hands_back_data_only() {
    let (sb, project) = project();
    // The container writes straight into the host directory as root: a setuid-root binary and a device node
    // there would be a way to root for any user who can reach it.
    let wf = write_workflow(
        &project,
        r#"workflows:
  - name: job
    image: {busybox}
    commands:
      - cp /bin/busybox out/tool && chmod 4755 out/tool && chmod 2775 out
      - mknod out/mem c 1 1 && mkfifo out/fifo
      - mkdir -p out/sub && echo kept > out/sub/data && chmod 0777 out/sub/data
    artifacts:
      - path: out
        mount: true
"#,
    );
    sb.drun(&["run", wf.to_str().unwrap()]).ok();
    let out = project.join("artifacts/job/out");
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&out.join("tool")), 0o755);
    assert!(!out.join("mem").exists() && std::fs::symlink_metadata(out.join("fifo")).is_err());
    assert_eq!(std::fs::read_to_string(out.join("sub/data")).unwrap(), "kept\n");
    // Limited by the caller's umask (the test runs under 0022): nothing world-writable comes back.
    assert_eq!(mode(&out.join("sub/data")), 0o755);
    assert_eq!(mode(&out) & 0o7000, 0);
}

#[test]
fn a_state_directory_others_could_replace_is_refused() {
    assert!(is_root(), "container tests need root (make test runs them as root)");
    let sb = Sandbox::new();
    // A group- or world-writable directory above the state directory (a shared project space): another user could
    // rename the state directory away and put records of theirs in its place, which root's drun would believe.
    let shared = sb.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let state = shared.join("state");
    let out = sb.drun(&["--state", state.to_str().unwrap(), "ps"]);
    out.fails_with(125, &["others may write to"]);
    // Sticky, as /tmp is: only an entry's owner may rename it, so that is fine.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    sb.drun(&["--state", state.to_str().unwrap(), "ps"]).ok();
}

#[test]
fn workflow_names_never_lead_out_of_the_artifacts_directory() {
    let (sb, project) = project();
    let wf = write_workflow(
        &project,
        r#"workflows:
  - name: ../../escape
    image: {busybox}
    commands:
      - echo hi
"#,
    );
    sb.drun(&["run", wf.to_str().unwrap()])
        .fails_with(125, &["workflow name", "`/`"]);
    assert!(!sb.path().join("escape.log").exists());
}

#[test]
fn processes_drun_inherited_are_not_the_containers() {
    let (sb, _project) = project();
    // A batch script's `monitor & exec drun run …`: the monitor becomes drun's child, and the sweep that ends the
    // container's processes (with the host's pid namespace) must leave it alone.
    let marker = sb.path().join("monitor-alive");
    let drun = env!("CARGO_BIN_EXE_drun");
    let script = format!(
        "sh -c 'sleep 3; touch {}' & exec {drun} run --pid host {} sh -c 'sleep 0.2 & true'",
        marker.display(),
        busybox()
    );
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", &script]);
    copy_env(&sb.cmd(&[]), &mut sh);
    let out = run(sh, Duration::from_secs(120));
    assert!(out.status.success(), "{}", out.stderr);
    wait_until("the inherited process to finish its work", || marker.exists());
}
