//! Single-file images: `drun export IMAGE -o FILE.sqsh` and `drun run FILE.sqsh`, kernel-mounted for files drun
//! published itself and through squashfuse otherwise (rootless: tests/integration/rootless.rs).

use std::path::Path;

use crate::common::*;

/// Every path of the root (but the run's own /etc files and the kernel's file systems) with owner, group, mode,
/// and for all but directories link count, type, size and symlink target (overlayfs counts a merged directory's
/// links as 1, and sizes directories as its upper file system does).
const TREE: &str = "find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o \
    -type d -printf '%p %U %G %m d\\n' -o -printf '%p %U %G %m %n %y %s %l\\n' | grep -v -e '^/etc/hosts ' -e '^/etc/hostname ' -e '^/etc/resolv.conf ' \
    | sort";

fn export(sb: &Sandbox, image: &str, out: &Path) -> Output {
    sb.drun(&["export", image, "-o", &out.display().to_string()]).ok()
}

/// Mounts of this sandbox left in the host's mount table, and loop devices backed by its files.
fn leftovers(sb: &Sandbox) -> Vec<String> {
    let dir = sb.path().display().to_string();
    let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if b.contains(&dir) {
                left.push(format!("{}: {b}", e.path().display()));
            }
        }
    }
    left
}

#[test]
fn an_exported_image_file_is_the_overlay_view_and_runs_without_unpacking() {
    let sb = Sandbox::new();
    let image = debian();
    let file = sb.path().join("debian.sqsh");
    // Not pulled yet: export pulls it.
    let out = export(&sb, &image, &file);
    assert!(out.stdout.trim().starts_with("sha256:"), "{}", out.stdout);
    assert!(out.stderr.contains("exported to"), "{}", out.stderr);
    let view = sb.drun(&["run", "-q", &image, "sh", "-c", TREE]).ok().stdout;
    let run_file = |extra: &[(&str, &str)], file: &Path| {
        let mut c = sb.cmd(&["--log-level", "drun=debug", "run", "-q"]);
        c.arg(file).args(["sh", "-c", TREE]);
        for (k, v) in extra {
            c.env(k, v);
        }
        run(c, std::time::Duration::from_secs(120)).ok()
    };
    // As root, a file drun published: the kernel mounts it.
    let kernel = run_file(&[], &file);
    assert!(
        kernel.stderr.contains("squashfs image mounted by the kernel"),
        "{}",
        kernel.stderr
    );
    assert_eq!(
        kernel.stdout, view,
        "the file's tree differs from the image's overlay view"
    );
    assert!(view.contains("/opt/perm/owned 1234 5678 640 1 f 6"), "{view}");
    assert!(
        view.contains("/opt/links/hard-a 0 0 644 2 f 17"),
        "hardlinks kept: {view}"
    );
    assert!(
        !view.contains("/opt/keep/gone") && !view.contains("/opt/replaced/old"),
        "deleted paths absent"
    );
    // squashfuse reads it the same way.
    let fuse = run_file(&[("DRUN_SQUASH", "fuse")], &file);
    assert!(
        fuse.stderr.contains("squashfs image mounted with squashfuse"),
        "{}",
        fuse.stderr
    );
    assert_eq!(fuse.stdout, view);
    // Extended attributes are in the file (read back with unsquashfs, outside drun).
    let x = sb.path().join("x");
    let st = std::process::Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(&x)
        .arg(&file)
        .arg("opt/xattr/file")
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        xattr(&x.join("opt/xattr/file"), "user.drun").as_deref(),
        Some(&b"drun-xattr-value"[..])
    );
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn the_kernel_mounts_only_files_drun_published_and_checks_them() {
    let sb = Sandbox::new();
    let file = sb.path().join("busybox.sqsh");
    export(&sb, &busybox(), &file);
    let mounted_by = |f: &Path| {
        let mut c = sb.cmd(&["--log-level", "drun=debug", "run", "-q"]);
        c.arg(f).args(["cat", "/etc/drun-arch"]);
        run(c, std::time::Duration::from_secs(120))
    };
    // A file another user owns (they could change it under the kernel): squashfuse, even for root.
    let theirs = sb.path().join("theirs.sqsh");
    std::fs::copy(&file, &theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    let out = mounted_by(&theirs).ok();
    assert!(out.stderr.contains("mounted with squashfuse"), "{}", out.stderr);
    assert_eq!(out.stdout, "amd64");
    // A file drun never published (another store's): squashfuse too.
    let other = Sandbox::new();
    let out = {
        let mut c = other.cmd(&["--log-level", "drun=debug", "run", "-q"]);
        c.arg(&file).args(["cat", "/etc/drun-arch"]);
        run(c, std::time::Duration::from_secs(120)).ok()
    };
    assert!(out.stderr.contains("mounted with squashfuse"), "{}", out.stderr);
    // Published, but damaged after the fact: the digest check refuses it before the kernel sees it.
    let damaged = sb.path().join("damaged.sqsh");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[200] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    mounted_by(&damaged).fails_with(125, &["is damaged", "damaged.sqsh"]);
    // Not an image file at all.
    let plain = sb.path().join("plain.sqsh");
    std::fs::write(&plain, b"not squashfs").unwrap();
    mounted_by(&plain).fails_with(125, &["is not a drun squashfs image"]);
    sb.drun(&["export", &busybox(), "-o", "/tmp/x.tar"])
        .fails_with(125, &["expected FILE.sqsh"]);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn pull_squash_keeps_one_file_runs_it_and_unpacks_no_layer() {
    // The store holds the image as `squash/<manifest hex>.sqsh` only: no unpacked layer, no staging left; a run
    // mounts it (the kernel, as root: drun published it) and sees the tree the unpacked layers give.
    let unpacked = Sandbox::new();
    let image = debian();
    unpacked.drun(&["pull", "-q", &image]).ok();
    let view = unpacked.drun(&["run", "-q", &image, "sh", "-c", TREE]).ok().stdout;
    let sb = Sandbox::new();
    let out = sb.drun(&["--log-level", "drun=debug", "pull", "--squash", &image]).ok();
    assert!(out.stderr.contains("pulled as a squashfs image file"), "{}", out.stderr);
    // Streamed: its hardlink into a lower layer (/opt/links/hard-lower) written ahead of its target.
    assert!(
        out.stderr.contains("pulled into a squashfs image file, streamed"),
        "{}",
        out.stderr
    );
    let digest = out.stdout.trim().strip_prefix("sha256:").unwrap().to_string();
    assert!(sb.store().join(format!("squash/{digest}.sqsh")).is_file());
    assert!(sb.entries("layers/host").is_empty(), "{:?}", sb.entries("layers/host"));
    assert!(sb.entries("tmp").is_empty(), "{:?}", sb.entries("tmp"));
    let run_it = || {
        let mut c = sb.cmd(&["--log-level", "drun=debug", "run", "-q", &image, "sh", "-c", TREE]);
        c.env_remove("DRUN_SQUASH");
        run(c, std::time::Duration::from_secs(120)).ok()
    };
    let first = run_it();
    assert!(
        first.stderr.contains("squashfs image mounted by the kernel"),
        "{}",
        first.stderr
    );
    assert_eq!(
        first.stdout, view,
        "the squashfs form's tree differs from the unpacked image's"
    );
    // Again (the digest check cached): still nothing unpacked.
    assert_eq!(run_it().stdout, view);
    assert!(sb.entries("layers/host").is_empty());
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
    // `drun check` finds the file damaged; `rmi` frees it with the record.
    std::fs::write(sb.store().join(format!("squash/{digest}.sqsh")), b"damaged").unwrap();
    let check = sb.drun(&["check"]);
    assert_eq!(check.code(), Some(1), "{}", check.stdout);
    assert!(
        check.stdout.contains("its squashfs file") && check.stdout.contains("is not a drun squashfs image"),
        "{}",
        check.stdout
    );
    sb.drun(&["rmi", &image]).ok();
    assert!(sb.entries("squash").is_empty(), "{:?}", sb.entries("squash"));
}

/// squashfs mounts below the sandbox in the host's mount table (drun as root mounts there).
fn squashfs_mounts(sb: &Sandbox) -> Vec<String> {
    let dir = sb.path().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            let (left, right) = l.split_once(" - ").unwrap_or((l, ""));
            let point = left.split(' ').nth(4).unwrap_or("");
            right.split(' ').next() == Some("squashfs") && point.starts_with(&dir)
        })
        .map(str::to_string)
        .collect()
}

/// Lets the waiting runs go when dropped: a failed assertion does not leave them waiting for ever.
struct Go(std::path::PathBuf);

impl Drop for Go {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("go"), b"");
    }
}

/// `drun run FILE` whose container says it is up (`CTL/up-TAG`) and waits for `CTL/go`.
fn waiting_run(sb: &Sandbox, file: &Path, ctl: &Path, tag: &str) -> std::process::Child {
    let mut c = sb.cmd(&["--log-level", "drun=debug", "run", "-q", "-v"]);
    c.arg(format!("{}:/ctl", ctl.display()))
        .arg(file)
        .args(["sh", "-c"])
        .arg(format!(
            "touch /ctl/up-{tag}; while [ ! -e /ctl/go ]; do sleep 0.1; done; cat /etc/drun-arch"
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c.spawn().unwrap()
}

#[test]
fn concurrent_runs_of_one_image_file_share_one_mount_until_the_last_ends() {
    let sb = Sandbox::new();
    let file = sb.path().join("busybox.sqsh");
    export(&sb, &busybox(), &file);
    let ctl = sb.path().join("ctl");
    std::fs::create_dir(&ctl).unwrap();
    let go = Go(ctl.clone());
    let tags = ["a", "b", "c", "d"];
    let runs: Vec<_> = tags.iter().map(|t| waiting_run(&sb, &file, &ctl, t)).collect();
    wait_until("all four containers run", || {
        tags.iter().all(|t| ctl.join(format!("up-{t}")).exists())
    });
    // One kernel mount (and loop device) for the four runs, not one each.
    assert_eq!(squashfs_mounts(&sb).len(), 1, "{:#?}", squashfs_mounts(&sb));
    drop(go);
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| wait(c, std::time::Duration::from_secs(120)).ok())
        .collect();
    for o in &outs {
        assert_eq!(o.stdout, "amd64");
    }
    let mounted = outs
        .iter()
        .filter(|o| o.stderr.contains("squashfs image mounted by the kernel"))
        .count();
    let shared = outs
        .iter()
        .filter(|o| o.stderr.contains("already mounted by the kernel: shared"))
        .count();
    assert_eq!(
        (mounted, shared),
        (1, 3),
        "{:#?}",
        outs.iter().map(|o| &o.stderr).collect::<Vec<_>>()
    );
    // Unmounted when the last run ended: nothing of it left.
    assert!(squashfs_mounts(&sb).is_empty(), "{:#?}", squashfs_mounts(&sb));
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
    let refs = std::fs::read_dir(sb.state().join("squash")).unwrap().count();
    assert_eq!(refs, 0, "the shared mount's directory is removed with it");
}

#[test]
fn a_run_killed_by_sigkill_does_not_leave_the_shared_mount_behind() {
    let sb = Sandbox::new();
    let file = sb.path().join("busybox.sqsh");
    export(&sb, &busybox(), &file);
    let ctl = sb.path().join("ctl");
    std::fs::create_dir(&ctl).unwrap();
    let go = Go(ctl.clone());
    let mut killed = waiting_run(&sb, &file, &ctl, "killed");
    let other = waiting_run(&sb, &file, &ctl, "other");
    wait_until("both containers run", || {
        ctl.join("up-killed").exists() && ctl.join("up-other").exists()
    });
    assert_eq!(squashfs_mounts(&sb).len(), 1, "{:#?}", squashfs_mounts(&sb));
    // The first drun dies holding its reference; the other run ends normally, and with it the last live
    // reference: the mount goes although the killed run's reference was never released by its drun.
    killed.kill().unwrap();
    killed.wait().unwrap();
    drop(go);
    assert_eq!(wait(other, std::time::Duration::from_secs(120)).ok().stdout, "amd64");
    assert!(squashfs_mounts(&sb).is_empty(), "{:#?}", squashfs_mounts(&sb));
    // The killed run's own leftovers go with the next clean-up.
    sb.drun(&["ps"]).ok();
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));

    // A drun killed after mounting, before its reference was written: a mount no run references, which `drun
    // check` reports and the next clean-up (here `drun ps`) unmounts.
    let mut c = sb.cmd(&["run", "-q"]);
    c.arg(&file)
        .arg("true")
        .env("DRUN_FAILPOINT", "shared-mount-unreferenced");
    let out = run(c, std::time::Duration::from_secs(120));
    assert_eq!(out.code(), None, "killed at the fail point: {}", out.stderr);
    assert_eq!(squashfs_mounts(&sb).len(), 1, "{:#?}", squashfs_mounts(&sb));
    let check = sb.drun(&["check"]);
    assert_eq!(check.code(), Some(1), "{}", check.stdout);
    assert!(check.stdout.contains("unused mount:"), "{}", check.stdout);
    sb.drun(&["ps"]).ok();
    assert!(squashfs_mounts(&sb).is_empty(), "{:#?}", squashfs_mounts(&sb));
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
    // A run of the image afterwards mounts it again.
    let again = sb.cmd(&["run", "-q"]);
    let mut again = again;
    again.arg(&file).args(["cat", "/etc/drun-arch"]);
    assert_eq!(run(again, std::time::Duration::from_secs(120)).ok().stdout, "amd64");
}

#[test]
fn a_workflow_runs_an_image_file_named_relative_to_the_workflow_file() {
    let sb = Sandbox::new();
    let project = sb.path().join("project");
    std::fs::create_dir_all(project.join("images")).unwrap();
    // Made in another store (as if copied from elsewhere): this one unpacks nothing.
    export(&Sandbox::new(), &busybox(), &project.join("images/busybox.sqsh"));
    let wf = project.join("workflow.yaml");
    std::fs::write(
        &wf,
        "workflows:\n  - name: fromfile\n    provider: docker\n    image: ./images/busybox.sqsh\n    commands:\n      - cat /etc/drun-arch\n      - echo\n      - cat input.txt\n",
    )
    .unwrap();
    std::fs::write(project.join("input.txt"), "project file\n").unwrap();
    // Started from another directory: the file is found beside the workflow file, not in the current directory.
    let mut c = sb.cmd(&["run", &wf.display().to_string()]);
    c.current_dir("/");
    let out = run(c, std::time::Duration::from_secs(120)).ok();
    assert!(out.stdout.contains("amd64\nproject file\n"), "{}", out.stdout);
    assert!(
        sb.entries("layers/host").is_empty(),
        "nothing unpacked: {:?}",
        sb.entries("layers/host")
    );
    // A path that names no file is an error of the workflow file, with its location.
    std::fs::write(
        &wf,
        "workflows:\n  - name: missing\n    provider: docker\n    image: ./images/none.sqsh\n    commands:\n      - true\n",
    )
    .unwrap();
    let mut c = sb.cmd(&["run", &wf.display().to_string()]);
    c.current_dir("/");
    run(c, std::time::Duration::from_secs(120)).fails_with(
        125,
        &["workflow.yaml:4:", "cannot find the image file \"./images/none.sqsh\""],
    );
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn squash_mem_bounds_the_converters_memory() {
    // Given to tar2sqfs as its queue of data blocks (256 KiB each, input and output), from the environment or the
    // configuration file; a size drun cannot read is an error before anything is fetched.
    let sb = Sandbox::new();
    let pull = |env: &[(&str, &str)]| {
        let mut c = sb.cmd(&["--log-level", "drun=debug", "pull", "--squash", &busybox()]);
        for (k, v) in env {
            c.env(k, v);
        }
        run(c, std::time::Duration::from_secs(120))
    };
    pull(&[("DRUN_SQUASH_MEM", "lots")]).fails_with(125, &["invalid squash_mem (or DRUN_SQUASH_MEM) \"lots\""]);
    sb.write_config("squash_mem = \"lots\"\n");
    pull(&[]).fails_with(125, &["invalid squash_mem"]);
    let out = pull(&[("DRUN_SQUASH_MEM", "64M")]).ok();
    assert!(out.stderr.contains("pulled as a squashfs image file"), "{}", out.stderr);
    assert!(out.stderr.contains(r#""--queue-backlog" "256""#), "{}", out.stderr);
}

#[test]
fn a_layer_that_cannot_be_streamed_is_converted_through_an_unpacked_copy() {
    // Layer 1 hardlinks /data/link to layer 0's /data/a, which layer 2 replaces: the link keeps the old content,
    // which went by before the stream (top layer first) knew it was needed. drun converts through an unpacked copy
    // instead, and the file holds what the layers give.
    let sb = Sandbox::new();
    let dir = sb.path().join("img");
    std::fs::create_dir(&dir).unwrap();
    let layer = |n: usize, entries: &[(&str, Option<&str>, &[u8])]| {
        let p = dir.join(format!("layer-{n}.tar"));
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        for (path, link, data) in entries {
            match link {
                Some(target) => {
                    let mut h = tar_header(tar::EntryType::Link, 0o644, 0);
                    b.append_link(&mut h, path, target).unwrap();
                }
                None => {
                    let mut h = tar_header(tar::EntryType::Regular, 0o755, data.len() as u64);
                    b.append_data(&mut h, path, *data).unwrap();
                }
            }
        }
        b.finish().unwrap();
        p
    };
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let tars = [
        layer(0, &[("bin/busybox", None, &busybox), ("data/a", None, b"lower")]),
        layer(1, &[("data/link", Some("data/a"), b"")]),
        layer(2, &[("data/a", None, b"upper")]),
    ];
    let layout = dir.join("layout");
    let spec = serde_json::json!({
        "layout": layout, "tag": "latest", "created": "2024-01-01T00:00:00Z",
        "images": [{"os": "linux", "architecture": "amd64", "config": {"Cmd": ["/bin/busybox", "true"]},
                    "layers": tars.iter().map(|t| serde_json::json!({"tar": t, "compression": "gzip"}))
                        .collect::<Vec<_>>()}]
    });
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    mkimage_build(&spec_file);
    let src = format!("oci:{}:latest", layout.display());
    let mut c = sb.cmd(&["--log-level", "drun=debug", "pull", "--squash", &src]);
    c.env("DRUN_SQUASH_MEM", "64M");
    let out = run(c, std::time::Duration::from_secs(120)).ok();
    assert!(
        out.stderr.contains("converting through an unpacked copy")
            && out
                .stderr
                .contains("a hardlink to a file this layer or an upper one replaces or hides"),
        "{}",
        out.stderr
    );
    let shown = sb
        .drun(&["run", "-q", &src, "/bin/busybox", "cat", "/data/a", "/data/link"])
        .ok();
    assert_eq!(shown.stdout, "upperlower");
    assert!(sb.entries("tmp").is_empty(), "{:?}", sb.entries("tmp"));
    assert!(sb.entries("layers/host").is_empty(), "{:?}", sb.entries("layers/host"));
}

#[test]
fn a_file_is_hashed_once_per_node_and_copies_do_not_displace_each_others_record() {
    // The file `pull --squash` wrote is recorded as checked by the pull itself; a copy of it (same data, another
    // inode) is checked once on its own; neither makes the other be hashed again.
    let sb = Sandbox::new();
    let image = busybox();
    let out = sb.drun(&["pull", "-q", "--squash", &image]).ok();
    let digest = out.stdout.trim().strip_prefix("sha256:").unwrap().to_string();
    let file = sb.store().join(format!("squash/{digest}.sqsh"));
    let copy = sb.path().join("copy.sqsh");
    std::fs::copy(&file, &copy).unwrap();
    let checked = |what: &str| {
        let mut c = sb.cmd(&["--log-level", "drun=debug", "run", "-q", what, "true"]);
        c.env_remove("DRUN_SQUASH");
        let out = run(c, std::time::Duration::from_secs(120)).ok();
        assert!(
            out.stderr.contains("squashfs image mounted by the kernel"),
            "{}",
            out.stderr
        );
        out.stderr.contains("checking the digest of an image file")
    };
    assert!(!checked(&image), "the pull recorded the file it wrote");
    assert!(checked(&copy.display().to_string()), "a copy is checked once");
    assert!(!checked(&copy.display().to_string()));
    assert!(!checked(&image), "the copy's record did not displace the original's");
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn a_streamed_pull_reads_only_cached_blobs_no_one_else_can_change() {
    // A streamed conversion reads a cached blob twice (checked, then streamed) and cannot retry half-way: it uses
    // a copy in the shared blob cache only if the caller or root owns it and no one else can write it.
    let sb = Sandbox::new();
    let cache = sb.path().join("blob-cache");
    let bc = format!("--blob-cache={}", cache.display());
    sb.drun(&[&bc, "pull", "-q", &busybox()]).ok();
    let blobs: Vec<_> = std::fs::read_dir(cache.join("sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(!blobs.is_empty());
    let pull_squash = || {
        let other = Sandbox::new();
        let out = other
            .drun(&["--log-level", "drun=debug", &bc, "pull", "--squash", &busybox()])
            .ok();
        assert!(out.stderr.contains("streamed"), "{}", out.stderr);
        out.stderr.contains("layer blob found in the blob cache")
    };
    assert!(pull_squash(), "root's own copy is used");
    for b in &blobs {
        std::os::unix::fs::chown(b, Some(65534), None).unwrap();
    }
    assert!(!pull_squash(), "another user's copy is not");
}
