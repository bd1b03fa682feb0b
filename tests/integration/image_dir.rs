//! The shared image directory (`--image-dir DIR`): one conversion for many cold runs, warm runs without a lock,
//! producers killed mid-conversion recovered from (flock, and the lease fallback through a fail point), readers
//! that check what they mount. Each sandbox plays a node with a store of its own.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use crate::common::*;

fn run_in(node: &Sandbox, dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = node.cmd(&["--image-dir", &dir.display().to_string(), "run", "-q", &busybox()]);
    c.args(["cat", "/etc/drun-arch"]);
    for (k, v) in env {
        c.env(k, v);
    }
    run(c, Duration::from_secs(300))
}

fn files(dir: &Path, ext: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(ext))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn concurrent_cold_runs_convert_once_and_warm_runs_take_no_lock() {
    let shared = Sandbox::new();
    let dir = shared.path().join("images");
    let nodes: Vec<Sandbox> = (0..4).map(|_| Sandbox::new()).collect();
    let children: Vec<_> = nodes
        .iter()
        .map(|n| {
            let mut c = n.cmd(&["--image-dir", &dir.display().to_string(), "run", &busybox()]);
            c.args(["cat", "/etc/drun-arch"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| wait(c, Duration::from_secs(300)).ok())
        .collect();
    for o in &outs {
        assert_eq!(o.stdout, "amd64");
    }
    let converted = outs
        .iter()
        .filter(|o| o.stderr.contains("converted into the image directory"))
        .count();
    assert_eq!(converted, 1, "{:?}", outs.iter().map(|o| &o.stderr).collect::<Vec<_>>());
    assert_eq!(files(&dir, ".sqsh").len(), 1, "{:?}", files(&dir, ""));
    assert_eq!(files(&dir.join("images"), ".json").len(), 1);
    for n in &nodes {
        assert!(n.entries("layers/host").is_empty(), "{:?}", n.entries("layers/host"));
    }
    // Warm: a producer's lock held by someone else does not delay a run of a published image.
    let lock = dir.join("locks").join(&files(&dir.join("locks"), ".lock")[0]);
    let held = std::fs::File::open(&lock).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let warm = Sandbox::new();
    assert_eq!(run_in(&warm, &dir, &[]).ok().stdout, "amd64");
    let pulled = warm
        .drun(&[
            "--image-dir",
            &dir.display().to_string(),
            "pull",
            "--squash",
            &busybox(),
        ])
        .ok();
    assert!(pulled.stderr.contains("in the image directory"), "{}", pulled.stderr);
    drop(held);
}

#[test]
fn a_producer_killed_mid_conversion_does_not_hold_the_image_dir() {
    let shared = Sandbox::new();
    // flock: released by the kernel with the producer.
    let dir = shared.path().join("flock");
    let killed = run_in(&Sandbox::new(), &dir, &[("DRUN_FAILPOINT", "image-dir-before-publish")]);
    assert_eq!(killed.code(), None, "killed by SIGKILL: {}", killed.stderr);
    let next = run_in(&Sandbox::new(), &dir, &[]).ok();
    assert_eq!(next.stdout, "amd64");
    // A file system without flock (the fail point refuses it): the lease file, taken over once it is not renewed.
    let dir = shared.path().join("lease");
    let no_flock = ("DRUN_FAILPOINT_ERROR", "image-dir-flock");
    let killed = run_in(
        &Sandbox::new(),
        &dir,
        &[no_flock, ("DRUN_FAILPOINT", "image-dir-before-publish")],
    );
    assert_eq!(killed.code(), None, "{}", killed.stderr);
    assert_eq!(
        files(&dir.join("locks"), ".lease").len(),
        1,
        "the dead producer's lease"
    );
    let next = run_in(&Sandbox::new(), &dir, &[no_flock, ("DRUN_IMAGE_DIR_LEASE", "2")]).ok();
    assert_eq!(next.stdout, "amd64");
    assert!(next.stderr.contains("took over the lease"), "{}", next.stderr);
    assert!(files(&dir.join("locks"), ".lease").is_empty(), "the lease is released");
}

#[test]
fn a_live_producers_lease_is_renewed_and_not_taken_over() {
    // The producer holds the lease for several lease times (paused at a pause point): the waiting node neither
    // takes it over nor converts, and runs from what the producer publishes.
    let shared = Sandbox::new();
    let dir = shared.path().join("images");
    let pause = shared.path().join("pause");
    std::fs::write(&pause, b"").unwrap();
    let env = [
        ("DRUN_FAILPOINT_ERROR", "image-dir-flock"),
        ("DRUN_IMAGE_DIR_LEASE", "2"),
    ];
    let producer_node = Sandbox::new();
    let mut producer = producer_node.cmd(&["--image-dir", &dir.display().to_string(), "run", &busybox()]);
    producer
        .args(["cat", "/etc/drun-arch"])
        .envs(env)
        .env("DRUN_PAUSEPOINT", format!("image-dir-producing:{}", pause.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let producer = producer.spawn().unwrap();
    wait_until("the producer holds the lease", || {
        shared.path().join("pause.reached").exists()
    });
    let waiter_node = Sandbox::new();
    let mut waiter = waiter_node.cmd(&["--image-dir", &dir.display().to_string(), "run", &busybox()]);
    waiter
        .args(["cat", "/etc/drun-arch"])
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let waiter = waiter.spawn().unwrap();
    // Three lease times with the lease renewed all along.
    std::thread::sleep(Duration::from_secs(6));
    std::fs::remove_file(&pause).unwrap();
    let p = wait(producer, Duration::from_secs(300)).ok();
    let w = wait(waiter, Duration::from_secs(300)).ok();
    assert_eq!((p.stdout.as_str(), w.stdout.as_str()), ("amd64", "amd64"));
    assert!(p.stderr.contains("converted into the image directory"), "{}", p.stderr);
    assert!(!w.stderr.contains("converted"), "{}", w.stderr);
    assert!(!w.stderr.contains("took over the lease"), "{}", w.stderr);
}

#[test]
fn a_reader_refuses_a_file_that_is_not_what_was_published() {
    let shared = Sandbox::new();
    let dir = shared.path().join("images");
    run_in(&Sandbox::new(), &dir, &[]).ok();
    let file = dir.join(&files(&dir, ".sqsh")[0]);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[300] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    run_in(&Sandbox::new(), &dir, &[]).fails_with(125, &["is not what was published", "hashes to"]);
    // Shorter than published.
    std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
    run_in(&Sandbox::new(), &dir, &[]).fails_with(125, &["is not what was published", "bytes"]);
}

/// Root's kernel mounts a file from an image directory only when no one but root could have published it: in a
/// directory others may write (1777, as users share one), a second node (whose store never converted it) mounts it
/// with squashfuse; in root's own 0755 directory, with the kernel. (Counted as published whatever its directory,
/// a user's bytes there reached root's kernel.)
#[test]
fn root_kernel_mounts_only_image_dir_files_no_one_else_could_publish() {
    use std::os::unix::fs::PermissionsExt;
    let shared = Sandbox::new();
    for (mode, how) in [(0o1777, "mounted with squashfuse"), (0o755, "mounted by the kernel")] {
        let dir = shared.path().join(format!("images-{mode:o}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let producer = Sandbox::new();
        assert_eq!(run_in(&producer, &dir, &[]).ok().stdout, "amd64");
        let reader = Sandbox::new();
        let out = run_in(&reader, &dir, &[("DRUN_LOG", "drun=debug")]).ok();
        assert_eq!(out.stdout, "amd64");
        assert!(out.stderr.contains(how), "{mode:o}: {}", out.stderr);
    }
}
