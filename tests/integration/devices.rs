//! `--device /dev/HOST[:/dev/CONTAINER][:rwm]` and a workflow's `devices` (issue 16): host device nodes given to a
//! container as root, checked from inside against the device cgroup (v1 on this host, so really enforced). The
//! rootless case is in `rootless.rs`; the cgroup v2 eBPF filter is checked in the v2 VM for GPU nodes, the same
//! rules.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::common::*;
use crate::run::ready;

/// `drun run [flags] busybox sh -c SCRIPT`.
fn sh(sb: &Sandbox, flags: &[&str], script: &str) -> Output {
    let image = busybox();
    let mut args = vec!["run", "-q"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[&image, "sh", "-c", script]);
    sb.drun(&args)
}

/// A loop device node of the host, none of the devices every container gets (so only a rule for it lets a
/// container open it), and its minor number. Opening an unbound loop device changes nothing.
fn loop_device() -> (String, u64) {
    let path = "/dev/loop0";
    let meta = std::fs::metadata(path).expect("this test needs /dev/loop0 (the loop module)");
    assert!(meta.file_type().is_block_device());
    (path.to_string(), nix::sys::stat::minor(meta.rdev()))
}

/// Opens `path` for reading then for writing in busybox sh; prints what each gave.
fn open_both(path: &str) -> String {
    format!(
        "(exec 3<{path}) 2>/dev/null && echo r=ok || echo r=denied; (exec 3>{path}) 2>/dev/null && echo w=ok || echo w=denied"
    )
}

#[test]
fn a_host_device_is_given_with_its_permissions_and_others_stay_denied() {
    let sb = ready();
    let (dev, minor) = loop_device();
    // rwm by default, under another name; the node is the host's.
    let out = sh(
        &sb,
        &["--device", &format!("{dev}:/dev/myloop")],
        &format!("stat -c '%t:%T %F' /dev/myloop; {}", open_both("/dev/myloop")),
    )
    .ok();
    assert_eq!(out.stdout, format!("7:{minor:x} block special file\nr=ok\nw=ok\n"));

    // `r` only: the device cgroup refuses writes (EPERM, as under Docker).
    let out = sh(
        &sb,
        &["--device", &format!("{dev}:/dev/myloop:r")],
        &format!("{}; echo x > /dev/myloop", open_both("/dev/myloop")),
    );
    assert_eq!(out.stdout, "r=ok\nw=denied\n", "{}", out.stderr);
    assert!(out.stderr.contains("Operation not permitted"), "{}", out.stderr);

    // A device not given stays denied even to a root with CAP_MKNOD that makes its own node: the same loop
    // device without --device, and another one beside the one given.
    let other = minor + 1;
    let script = format!(
        "mknod /tmp/given b 7 {minor} && mknod /tmp/other b 7 {other} && {} && {}",
        open_both("/tmp/given"),
        open_both("/tmp/other")
    );
    let out = sh(&sb, &["--cap-add", "MKNOD"], &script).ok();
    assert_eq!(out.stdout, "r=denied\nw=denied\nr=denied\nw=denied\n");
    let out = sh(&sb, &["--cap-add", "MKNOD", "--device", &format!("{dev}:rw")], &script).ok();
    assert_eq!(out.stdout, "r=ok\nw=ok\nr=denied\nw=denied\n");
}

#[test]
fn a_symlink_to_a_device_is_followed_and_a_char_device_reads_and_writes() {
    let sb = ready();
    let link = sb.path().join("zero-link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    // Named by the link, the container path defaults to the path as written: give it one under /dev.
    let out = sh(
        &sb,
        &["--device", &format!("{}:/dev/myzero:rw", link.display())],
        "stat -c '%t:%T %F' /dev/myzero; head -c 5 /dev/myzero | wc -c; echo x > /dev/myzero && echo wrote",
    )
    .ok();
    assert_eq!(out.stdout, "1:5 character special file\n5\nwrote\n");
}

#[test]
fn what_is_not_a_device_is_refused_with_the_reason() {
    let sb = ready();
    let file = sb.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let run = |value: &str| sb.drun(&["run", "-q", "--device", value, &busybox(), "true"]);
    run(file.to_str().unwrap()).fails_with(
        125,
        &[&format!(
            "error: invalid device {:?}: expected a character or block device node, not a regular file",
            file.display().to_string()
        )],
    );
    run(sb.path().to_str().unwrap()).fails_with(125, &["expected a character or block device node, not a directory"]);
    run("/no/such/device").fails_with(125, &["error: cannot find the device \"/no/such/device\""]);
    run("/dev/zero:/dev/z:rx").fails_with(
        125,
        &["invalid --device \"/dev/zero:/dev/z:rx\": permissions \"rx\": expected one or more of r (read)"],
    );
    run("/dev/zero:dev/z").fails_with(125, &["the container path \"dev/z\" must be absolute"]);
    run("zero").fails_with(
        125,
        &["invalid --device \"zero\": expected a host device /dev/HOST[:/dev/CONTAINER][:rwm] or a CDI device"],
    );
    run("/dev/zero:/dev/null").fails_with(
        125,
        &["invalid container path \"/dev/null\" for a device: every container has it already"],
    );
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn a_workflow_gives_devices_as_docker_py_writes_them() {
    let (sb, project) = crate::workflow::ready();
    let (dev, _) = loop_device();
    let wf = crate::workflow::write(
        &project,
        "workflow.yaml",
        &format!(
            r#"workflows:
  - name: dev
    image: {{busybox}}
    devices:
      - "{dev}:/dev/myloop:r"
      - /dev/zero:/dev/myzero
    commands:
      - {}
      - head -c 3 /dev/myzero | wc -c
"#,
            open_both("/dev/myloop")
        ),
    );
    let out = sb.drun(&["run", wf.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("r=ok\nw=denied\n3\n"), "{}", out.stdout);
    let plan = sb.drun(&["run", "--dry-run", wf.to_str().unwrap()]).ok();
    assert!(
        plan.stdout
            .contains(&format!("  device:      {dev} -> /dev/myloop (r)\n")),
        "{}",
        plan.stdout
    );

    // A bad item is reported at its place in the file.
    let plain = crate::workflow::write(&project, "plain", "x");
    let bad = crate::workflow::write(
        &project,
        "bad.yaml",
        &format!(
            "workflows:\n  - name: dev\n    image: {{busybox}}\n    devices: [{}]\n    commands: [\"true\"]\n",
            plain.display()
        ),
    );
    sb.drun(&["run", bad.to_str().unwrap()]).fails_with(
        125,
        &[&format!(
            "bad.yaml:4:15: invalid device {:?}: expected a character or block device node, not a regular file",
            plain.display().to_string()
        )],
    );
}

/// A simulated RDMA host under `root` (read by drun through `DRUN_RDMA_ROOT`): `/dev/infiniband` nodes made with
/// mknod, with Linux's numbers (verbs and MAD devices are major 231; rdma_cm a misc device), plus a subnet-manager
/// node and a file a container does not need.
fn fake_rdma(root: &std::path::Path) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let dir = root.join("dev/infiniband");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, major, minor) in [
        ("uverbs0", 231, 192),
        ("umad0", 231, 0),
        ("issm0", 231, 64),
        ("rdma_cm", 10, 58),
    ] {
        mknod(
            &dir.join(name),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .unwrap();
    }
    std::fs::write(dir.join("README"), "not a device").unwrap();
}

#[test]
fn rdma_gives_the_verbs_devices_and_raises_memlock() {
    let sb = ready();
    let root = sb.path().join("rdma");
    fake_rdma(&root);
    let env = [("DRUN_RDMA_ROOT", root.as_os_str())];
    let image = busybox();
    // No driver has major 231 on the test host: opening uverbs0 gets past the device cgroup (which would say
    // EPERM) to the kernel's "no such device".
    let script = "ls /dev/infiniband; stat -c '%t:%T' /dev/infiniband/uverbs0; ulimit -l; \
                  (exec 3<>/dev/infiniband/uverbs0) 2>&1; true";
    let out = sb
        .drun_with(&["run", "-q", "--rdma", &image, "sh", "-c", script], &env)
        .ok();
    // What drun can raise RLIMIT_MEMLOCK to: unlimited with CAP_SYS_RESOURCE (or an unlimited hard limit), else the
    // hard limit it was given, which it then warns about.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK).unwrap();
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("CapEff:")
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .unwrap();
    let memlock = if hard == nix::sys::resource::RLIM_INFINITY || cap_eff & (1 << 24) != 0 {
        "unlimited".to_string()
    } else {
        assert!(
            out.stderr
                .contains("RLIMIT_MEMLOCK for --rdma is capped at the hard limit"),
            "{}",
            out.stderr
        );
        (hard / 1024).to_string()
    };
    let lines: Vec<&str> = out.stdout.lines().collect();
    // Not umad0 (raw management datagrams) nor issm0 (the subnet manager's).
    assert_eq!(
        lines[..4],
        ["rdma_cm", "uverbs0", "e7:c0", memlock.as_str()],
        "{}",
        out.stdout
    );
    assert!(lines[4].contains("No such device or address"), "{}", out.stdout);

    // --ulimit memlock wins; without --rdma nothing is given.
    let out = sb
        .drun_with(
            &[
                "run",
                "-q",
                "--rdma",
                "--ulimit",
                "memlock=1024:1024",
                &image,
                "sh",
                "-c",
                "ulimit -l",
            ],
            &env,
        )
        .ok();
    assert_eq!(out.stdout, "1\n");
    let out = sb.drun_with(&["run", "-q", &image, "ls", "/dev/infiniband"], &env);
    assert_ne!(out.code(), Some(0), "{}", out.stdout);

    // A host without verbs devices: refused, with what to check.
    let empty = sb.path().join("no-rdma");
    std::fs::create_dir_all(&empty).unwrap();
    sb.drun_with(
        &["run", "-q", "--rdma", &image, "true"],
        &[("DRUN_RDMA_ROOT", empty.as_os_str())],
    )
    .fails_with(125, &["cannot use RDMA: no verbs device (uverbs*) in", "mlx5_ib"]);
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

/// The host's verbs libraries (libibverbs, librdmacm, libnl, the providers and their `.driver` files), copied from
/// this host (Debian's libibverbs1 and ibverbs-providers, which the MPI test's libucx0 brings) into the simulated
/// RDMA root.
fn fake_rdma_libraries(root: &std::path::Path) {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let host = std::path::PathBuf::from(format!("/usr/lib/{triplet}"));
    assert!(
        host.join("libibverbs.so.1").exists() && host.join("libibverbs").is_dir(),
        "the host needs libibverbs1 and ibverbs-providers"
    );
    let dir = root.join(format!("usr/lib/{triplet}"));
    std::fs::create_dir_all(dir.join("libibverbs")).unwrap();
    std::fs::create_dir_all(root.join("etc/libibverbs.d")).unwrap();
    let copy = |pattern: String, to: &std::path::Path| {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cp -a {pattern} {}", to.display()))
            .status()
            .unwrap();
        assert!(st.success(), "cp {pattern}");
    };
    for lib in [
        "libibverbs.so.1*",
        "librdmacm.so.1*",
        "libnl-3.so.200*",
        "libnl-route-3.so.200*",
        "libmlx5.so.1*",
    ] {
        copy(format!("{}/{lib}", host.display()), &dir);
    }
    copy(
        format!("{}/libibverbs/libmlx5-rdmav*.so", host.display()),
        &dir.join("libibverbs"),
    );
    copy("/etc/libibverbs.d/mlx5.driver".into(), &root.join("etc/libibverbs.d"));
}

#[test]
fn rdma_gives_the_hosts_verbs_libraries_to_an_image_without_them() {
    let sb = ready();
    let root = sb.path().join("rdma");
    fake_rdma(&root);
    fake_rdma_libraries(&root);
    let env = [("DRUN_RDMA_ROOT", root.as_os_str())];
    let lib = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    // An image without them (debian: no rdma-core) finds them through its ld cache, loads them with their
    // dependencies, has the provider and its .driver file at the host's paths, and cannot change them.
    let script = format!(
        "ldconfig -p | grep -oE '(libibverbs|librdmacm|libmlx5)\\.so\\.1 ' | sort; \
         /lib64/ld-linux-x86-64.so.2 --list {lib}/libibverbs.so.1 | grep -c 'not found'; \
         cat /etc/libibverbs.d/mlx5.driver; ls {lib}/libibverbs; \
         touch {lib}/libibverbs/*.so 2>&1 | grep -c 'Read-only'"
    );
    let out = sb
        .drun_with(&["run", "-q", "--rdma", &debian(), "sh", "-c", &script], &env)
        .ok();
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "libibverbs.so.1",
            "libmlx5.so.1",
            "librdmacm.so.1",
            "0",
            "driver mlx5",
            "libmlx5-rdmav34.so",
            "1"
        ],
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // Without --rdma, nothing of it.
    let out = sb.drun_with(
        &["run", "-q", &debian(), "sh", "-c", "ldconfig -p | grep -c ibverbs"],
        &env,
    );
    assert_eq!(out.stdout.trim(), "0", "{}", out.stderr);
    // An image with its own (the MPI image: rdma-core through libucx0) keeps it: nothing is mounted over it.
    let out = sb.drun_with(
        &[
            "run",
            "-q",
            "--rdma",
            &test_image("mpi:bookworm"),
            "sh",
            "-c",
            "grep -c ibverbs /proc/self/mountinfo; ls /etc/libibverbs.d | wc -l",
        ],
        &env,
    );
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"0"), "{}\n{}", out.stdout, out.stderr);
    assert_ne!(
        lines.get(1),
        Some(&"1"),
        "the image's own provider list: {}",
        out.stdout
    );
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}
