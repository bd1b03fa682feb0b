//! GPUs against a simulated NVIDIA driver tree (tests/fixtures/fake-driver.sh: real device nodes made with mknod, real
//! ELF libraries built with gcc, fake /proc and nvidia-smi), checked from inside real containers. The test on
//! real hardware is ignored here (no GPU on this machine): `make test-gpu` runs it on a GPU host.

use std::path::{Path, PathBuf};

use crate::common::*;

const A100: &str = "GPU-a1a1a1a1-0000-4000-8000-000000000001";
const K80: &str = "GPU-c0c0c0c0-0000-4000-8000-000000000002";

/// A sandbox with busybox and debian pulled, a fake driver tree and an empty CDI directory.
struct Gpu {
    sb: Sandbox,
    root: PathBuf,
    cdi: PathBuf,
}

fn setup(libdir: Option<&str>) -> Gpu {
    match libdir {
        Some(l) => setup_with(&["--libdir", l]),
        None => setup_with(&[]),
    }
}

/// A simulated driver made by `fake-driver.sh ROOT ARGS…`.
fn setup_with(fake_driver_args: &[&str]) -> Gpu {
    assert!(is_root(), "GPU tests need root (mknod)");
    let sb = Sandbox::new();
    sb.drun(&["pull", "-q", &test_image("busybox:latest")]).ok();
    sb.drun(&["pull", "-q", &test_image("debian:bookworm")]).ok();
    let root = sb.path().join("driver");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(fixture("fake-driver.sh")).arg(&root).args(fake_driver_args);
    assert!(cmd.status().unwrap().success(), "fake-driver.sh failed");
    let cdi = sb.path().join("cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    Gpu { sb, root, cdi }
}

impl Gpu {
    fn drun(&self, args: &[&str]) -> Output {
        self.sb.drun_with(
            args,
            &[
                ("DRUN_DRIVER_ROOT", self.root.as_os_str()),
                ("DRUN_CDI_SPEC_DIRS", self.cdi.as_os_str()),
            ],
        )
    }

    /// `drun run FLAGS IMAGE sh -c SCRIPT`.
    fn sh(&self, flags: &[&str], img: &str, script: &str) -> Output {
        let img = test_image(img);
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&img, "sh", "-c", script]);
        self.drun(&args)
    }
}

/// A driver installed under a prefix of its own, as on the real GPU machine of hack/gpu-hardware.sh
/// (/usr/local/nvidia), that only `LD_LIBRARY_PATH` points at: found whole (libraries, utilities beside them,
/// firmware), and its nvidia-smi runs in an image that has none (drun once looked the command up before injecting
/// the GPUs, and exited 127).
#[test]
fn a_driver_under_its_own_prefix_is_found_through_ld_library_path() {
    let g = setup_with(&["--prefix", "/opt/vendor/nvidia"]);
    let with_path = |args: &[&str]| {
        g.sb.drun_with(
            args,
            &[
                ("DRUN_DRIVER_ROOT", g.root.as_os_str()),
                ("DRUN_CDI_SPEC_DIRS", g.cdi.as_os_str()),
                ("LD_LIBRARY_PATH", std::ffi::OsStr::new("/opt/vendor/nvidia/lib64")),
            ],
        )
    };
    let spec = g.sb.path().join("nvidia.yaml");
    g.drun(&["cdi", "generate", "-o", spec.to_str().unwrap()]).ok();
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(
        !text.contains("libcuda.so"),
        "nothing names the prefix, yet libcuda was found:\n{text}"
    );
    with_path(&["cdi", "generate", "-o", spec.to_str().unwrap()]).ok();
    let text = std::fs::read_to_string(&spec).unwrap();
    for want in [
        "/opt/vendor/nvidia/lib64/libcuda.so.550.54.15",
        "/opt/vendor/nvidia/lib64/libnvidia-ml.so.550.54.15",
        "/opt/vendor/nvidia/bin/nvidia-smi",
        "/opt/vendor/nvidia/firmware/nvidia/550.54.15",
    ] {
        assert!(text.contains(want), "{want} missing from the generated spec:\n{text}");
    }
    let out = with_path(&["run", "--gpus", "all", &test_image("busybox:latest"), "nvidia-smi"]).ok();
    assert!(
        out.stdout.contains("fake nvidia-smi, driver 550.54.15: visible GPU-"),
        "{}",
        out.stdout
    );
}

/// `ls -l` lines of /dev/nvidia* → "name major, minor" set.
const NODES: &str = "for n in /dev/nvidia*; do stat -c '%n %t:%T' $n; done";

#[test]
fn discovery_injects_exactly_the_selected_gpu() {
    let g = setup(None);
    let out = g
        .sh(
            &["--gpus", "1"],
            "debian:bookworm",
            &format!(
                "{NODES}; env | grep -E '^(NVIDIA|CUDA)_' | sort; ldconfig -p | grep -E 'libcuda|libnvidia' | sort; \
                 ls /usr/lib/x86_64-linux-gnu | grep -E 'cuda|nvidia' | sort; command -v nvidia-smi; nvidia-smi; \
                 ls /lib/firmware/nvidia/550.54.15; test -e /run/nvidia-persistenced/socket && echo socket"
            ),
        )
        .ok();
    let o = out.stdout;
    // Index 0 is the A100 (PCI order), whose node is minor 1; control nodes; no other GPU.
    for want in [
        "/dev/nvidia1 c3:1",
        "/dev/nvidiactl c3:ff",
        "/dev/nvidia-uvm 1ff:0",
        "/dev/nvidia-uvm-tools 1ff:1",
        "/dev/nvidia-modeset c3:fe",
        &format!("NVIDIA_VISIBLE_DEVICES={A100}"),
        "CUDA_VISIBLE_DEVICES=0",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        "libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "libcuda.so\n",
        "libcuda.so.550.54.15",
        "/usr/bin/nvidia-smi",
        &format!("fake nvidia-smi, driver 550.54.15: visible {A100}"),
        "gsp_ga10x.bin",
        "socket",
    ] {
        assert!(o.contains(want), "{want:?} not in\n{o}");
    }
    assert!(
        !o.contains("/dev/nvidia0 "),
        "a GPU that was not selected is visible:\n{o}"
    );
    // Video libraries are not in the default capabilities; a stale libcuda of another version never is.
    assert!(!o.contains("libnvidia-encode"), "{o}");
    assert!(!o.contains("470.82.01"), "{o}");
    // The image itself is untouched: a plain run has none of it.
    let plain = g
        .sh(&[], "debian:bookworm", "ls /dev; ldconfig -p | grep -c cuda || true")
        .ok()
        .stdout;
    assert!(!plain.contains("nvidia") && plain.trim_end().ends_with('0'), "{plain}");
    // The ld cache helper's mounts lived in its own namespace; nothing is left on the host.
    assert!(leftovers(&g.sb).is_empty(), "{:?}", leftovers(&g.sb));
}

#[test]
fn busybox_read_only_root_and_all_gpus() {
    let g = setup(None);
    let out = g
        .sh(
            &["--gpus", "all", "--read-only"],
            "busybox:latest",
            &format!(
                "{NODES}; echo NV=$NVIDIA_VISIBLE_DEVICES CUDA=$CUDA_VISIBLE_DEVICES; \
                 ls /usr/lib/x86_64-linux-gnu; cat /etc/ld.so.conf; test -s /etc/ld.so.cache && echo cache; \
                 touch /newfile 2>/dev/null || echo read-only"
            ),
        )
        .ok();
    let o = out.stdout;
    for want in [
        "/dev/nvidia0 c3:0",
        "/dev/nvidia1 c3:1",
        &format!("NV={A100},{K80} CUDA=0,1"),
        "libcuda.so.1",
        "libnvidia-ml.so.550.54.15",
        "include /etc/ld.so.conf.d/*.conf",
        "cache",
        "read-only",
    ] {
        assert!(o.contains(want), "{want:?} not in\n{o}");
    }
}

#[test]
fn selection_by_uuid_name_memory_and_clear_errors() {
    let g = setup(None);
    let by_uuid = g
        .sh(&["--gpus", &format!("device={K80}")], "busybox:latest", NODES)
        .ok()
        .stdout;
    assert!(
        by_uuid.contains("/dev/nvidia0 c3:0") && !by_uuid.contains("/dev/nvidia1 "),
        "{by_uuid}"
    );
    let by_index = g
        .drun(&[
            "run",
            "--device",
            "nvidia.com/gpu=1",
            &test_image("busybox:latest"),
            "sh",
            "-c",
            NODES,
        ])
        .ok()
        .stdout;
    assert!(
        by_index.contains("/dev/nvidia0 c3:0") && !by_index.contains("/dev/nvidia1 "),
        "{by_index}"
    );

    // Workflows: name (substring, any case) and memory (minimum, from nvidia-smi).
    let project = g.sb.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let wf = project.join("wf.yaml");
    std::fs::write(
        &wf,
        format!(
            r#"workflows:
  - name: k80
    image: {bb}
    resources:
      gpu:
        name: "k80"
        count: 1
    commands: ["echo $NVIDIA_VISIBLE_DEVICES > gpu.txt"]
    artifacts: [gpu.txt]
  - name: big
    image: {bb}
    resources:
      gpu:
        memory: 40GB
    commands: ["echo $NVIDIA_VISIBLE_DEVICES > gpu.txt"]
    artifacts: [gpu.txt]
  - name: v100
    image: {bb}
    resources:
      gpu: {{name: V100}}
    commands: ["true"]
"#,
            bb = test_image("busybox:latest")
        ),
    )
    .unwrap();
    let w = wf.to_str().unwrap();
    g.drun(&["run", "-q", w, "k80", "big"]).ok();
    assert_eq!(
        std::fs::read_to_string(project.join("artifacts/k80/gpu.txt")).unwrap(),
        format!("{K80}\n")
    );
    assert_eq!(
        std::fs::read_to_string(project.join("artifacts/big/gpu.txt")).unwrap(),
        format!("{A100}\n")
    );
    g.drun(&["run", "-q", w, "v100"]).fails_with(
        125,
        &[
            "cannot assign 1 GPU(s) with name \"V100\"; GPUs on this host:",
            &format!("0 NVIDIA A100-SXM4-80GB ({A100}, 81920 MiB): model does not match \"V100\""),
            &format!("1 Tesla K80 ({K80}, 11441 MiB): model does not match \"V100\""),
        ],
    );
    g.sh(&["--gpus", "3"], "busybox:latest", "true")
        .fails_with(125, &["cannot assign 3 GPU(s)", "Tesla K80", "available"]);
    g.sh(&["--gpus", "device=7"], "busybox:latest", "true")
        .fails_with(125, &["cannot assign GPU 7 (no such GPU)"]);
    g.sh(&["--gpus", "lots"], "busybox:latest", "true")
        .fails_with(125, &["invalid --gpus \"lots\""]);
    // The host's NVIDIA_VISIBLE_DEVICES restricts the candidates outside Slurm.
    let out = g.sb.drun_with(
        &["run", "--gpus", "all", &test_image("busybox:latest"), "sh", "-c", NODES],
        &[
            ("DRUN_DRIVER_ROOT", g.root.as_os_str()),
            ("DRUN_CDI_SPEC_DIRS", g.cdi.as_os_str()),
            ("NVIDIA_VISIBLE_DEVICES", K80.as_ref()),
        ],
    );
    let o = out.ok().stdout;
    assert!(o.contains("/dev/nvidia0 ") && !o.contains("/dev/nvidia1 "), "{o}");
}

#[test]
fn driver_capabilities_choose_the_library_groups() {
    let g = setup(None);
    let o = g
        .sh(
            &["--gpus", "1", "-e", "NVIDIA_DRIVER_CAPABILITIES=video,utility"],
            "debian:bookworm",
            "ldconfig -p | grep -E 'libcuda|libnvidia' | sort; command -v nvidia-smi",
        )
        .ok()
        .stdout;
    assert!(
        o.contains("libnvidia-encode.so.1") && o.contains("libnvidia-ml.so.1"),
        "{o}"
    );
    assert!(!o.contains("libcuda"), "{o}");
}

#[test]
fn libraries_in_a_non_standard_directory_are_found_through_the_ld_cache() {
    let g = setup(Some("/opt/nvidia/lib64"));
    let o = g
        .sh(
            &["--gpus", "1"],
            "debian:bookworm",
            "ldconfig -p | grep -E 'libcuda|libnvidia-ml'; cat /etc/ld.so.conf.d/000-drun-nvidia.conf",
        )
        .ok()
        .stdout;
    assert!(
        o.contains("libcuda.so.1 (libc6,x86-64) => /opt/nvidia/lib64/libcuda.so.1"),
        "{o}"
    );
    assert!(o.contains("/opt/nvidia/lib64\n"), "{o}");
}

/// Every file below `dir` (relative path → content), to compare a host tree before and after a run.
fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(p);
            } else if ft.is_file() {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), vec![]);
            }
        }
    }
    out
}

#[test]
fn an_image_cannot_make_the_ld_cache_helper_write_host_files() {
    use tar::EntryType::Symlink;
    let g = setup(None);
    const LIB: &str = "/usr/lib/x86_64-linux-gnu";
    // The ld.so.conf files aimed at the host's libraries, mounted there while the helper runs.
    let at_libs = crate::run::tiny_image(&g.sb, "ldconf-to-libcuda", &|b| {
        let link = |b: &mut tar::Builder<std::fs::File>, path: &str, to: String| {
            crate::run::special(b, path, Symlink, (0, 0), &to)
        };
        link(b, "etc/ld.so.conf", format!("{LIB}/libcuda.so.550.54.15"));
        link(
            b,
            "etc/ld.so.conf.d/000-drun-nvidia.conf",
            format!("{LIB}/libnvidia-ml.so.550.54.15"),
        );
        // The mount point of a library a symlink out of the root: replaced, not followed.
        link(
            b,
            &format!("{}/libnvidia-ptxjitcompiler.so.550.54.15", &LIB[1..]),
            "/etc/shadow".into(),
        );
    });
    // The configuration directory a symlink to the directory of the mounted libraries, and to the host-mounted
    // firmware directory.
    let at_dir = crate::run::tiny_image(&g.sb, "ldconfd-to-libdir", &|b| {
        crate::run::special(b, "etc/ld.so.conf.d", Symlink, (0, 0), LIB);
    });
    let at_fw = crate::run::tiny_image(&g.sb, "ldconfd-to-firmware", &|b| {
        crate::run::special(b, "etc/ld.so.conf.d", Symlink, (0, 0), "/lib/firmware/nvidia/550.54.15");
        crate::run::special(
            b,
            "etc/ld.so.conf",
            Symlink,
            (0, 0),
            "/lib/firmware/nvidia/550.54.15/gsp_ga10x.bin",
        );
        // A library's mount point a FIFO: replaced, never opened (opening it for writing would wait forever).
        crate::run::special(
            b,
            &format!("{}/libcuda.so.550.54.15", &LIB[1..]),
            tar::EntryType::Fifo,
            (0, 0),
            "",
        );
    });
    let before = tree(&g.root);
    let ldconfig = ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("ldconfig on the host");
    let vol = format!("{ldconfig}:/ldconfig:ro");
    for image in [&at_libs, &at_dir, &at_fw] {
        let out = g.drun(&[
            "run",
            "--gpus",
            "1",
            "-v",
            &vol,
            image,
            "sh",
            "-c",
            "/ldconfig -p | grep -E 'libcuda|libnvidia-ml'; cat /etc/ld.so.conf",
        ]);
        // The host's files are as they were, and nothing was added among them.
        let after = tree(&g.root);
        for (p, data) in &before {
            assert!(
                after.get(p) == Some(data),
                "{image}: the host's {} changed",
                p.display()
            );
        }
        let added: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
        assert!(added.is_empty(), "{image}: new files on the host: {added:?}");
        // The container still finds the driver through its ld cache.
        let out = out.ok();
        for want in [
            &format!("libcuda.so.1 (libc6,x86-64) => {LIB}/libcuda.so.1"),
            &format!("libnvidia-ml.so.1 (libc6,x86-64) => {LIB}/libnvidia-ml.so.1"),
            "include /etc/ld.so.conf.d/*.conf",
        ] {
            assert!(out.stdout.contains(want), "{image}: {want:?} not in\n{}", out.stdout);
        }
    }
    assert!(leftovers(&g.sb).is_empty(), "{:?}", leftovers(&g.sb));
}

#[test]
fn a_slurm_jobs_device_cgroup_decides_which_gpus_are_usable() {
    let g = setup(None);
    let devices = Path::new("/sys/fs/cgroup/devices");
    assert!(
        devices.join("devices.deny").exists(),
        "this test needs the cgroup v1 devices controller (this VM's hybrid hierarchy has it)"
    );
    // A job cgroup that denies the A100's node (195:1), as Slurm's ConstrainDevices would.
    let cg = devices.join(format!("drun-test-gpu-{}", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("devices.deny"), "c 195:1 rwm").unwrap();
    let job = |gpus: &str| {
        let c =
            g.sb.cmd(&["run", "--gpus", gpus, &test_image("busybox:latest"), "sh", "-c", NODES]);
        let prog = c.get_program().to_owned();
        let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c")
            .arg(format!("echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"", cg.display()))
            .arg(prog)
            .args(args);
        copy_env(&c, &mut sh);
        sh.env("DRUN_DRIVER_ROOT", &g.root)
            .env("DRUN_CDI_SPEC_DIRS", &g.cdi)
            .env("SLURM_JOB_ID", "4242")
            .env("CUDA_VISIBLE_DEVICES", "0")
            .stdin(std::process::Stdio::null());
        run(sh, std::time::Duration::from_secs(120))
    };
    let one = job("1");
    let two = job("2");
    let _ = std::fs::remove_dir(&cg);
    // Without device constraints, SLURM_STEP_GPUS (host indices) names the job's GPUs.
    let step = g.sb.drun_with(
        &["run", "--gpus", "all", &test_image("busybox:latest"), "sh", "-c", NODES],
        &[
            ("DRUN_DRIVER_ROOT", g.root.as_os_str()),
            ("DRUN_CDI_SPEC_DIRS", g.cdi.as_os_str()),
            ("SLURM_JOB_ID", "4243".as_ref()),
            ("SLURM_STEP_GPUS", "1".as_ref()),
        ],
    );
    let o = step.ok().stdout;
    assert!(o.contains("/dev/nvidia0 c3:0") && !o.contains("/dev/nvidia1 "), "{o}");
    let o = one.ok().stdout;
    // Index 0 (the A100) is not the job's: the K80 is chosen, whatever CUDA_VISIBLE_DEVICES says.
    assert!(o.contains("/dev/nvidia0 c3:0") && !o.contains("/dev/nvidia1 "), "{o}");
    two.fails_with(
        125,
        &[&format!(
            "0 NVIDIA A100-SXM4-80GB ({A100}, 81920 MiB): not allocated to Slurm job 4242 (its device cgroup denies /dev/nvidia1)"
        )],
    );
}

#[test]
fn cdi_specs_take_precedence_over_discovery() {
    let g = setup(None);
    // A hand-written spec for GPU 0 with an extra variable.
    std::fs::write(
        g.cdi.join("vendor.json"),
        serde_json::json!({
            "cdiVersion": "0.6.0",
            "kind": "nvidia.com/gpu",
            "devices": [{"name": "0", "containerEdits": {
                "env": ["FROM_CDI=hand-written"],
                "deviceNodes": [{"path": "/dev/nvidia1", "hostPath": g.root.join("dev/nvidia1")}]}}],
            "containerEdits": {"deviceNodes": [{"path": "/dev/nvidiactl", "hostPath": g.root.join("dev/nvidiactl")}]}
        })
        .to_string(),
    )
    .unwrap();
    let o = g
        .sh(
            &["--gpus", "1"],
            "busybox:latest",
            &format!("{NODES}; echo FROM_CDI=$FROM_CDI"),
        )
        .ok()
        .stdout;
    assert!(
        o.contains("FROM_CDI=hand-written") && o.contains("/dev/nvidia1 c3:1"),
        "{o}"
    );
    // Only what the spec says: no libraries, no uvm node.
    assert!(!o.contains("nvidia-uvm"), "{o}");
    let listed = g.drun(&["gpus"]).ok().stdout;
    assert!(
        listed.contains("NVIDIA A100-SXM4-80GB") && listed.lines().nth(1).unwrap().ends_with("CDI"),
        "{listed}"
    );
    std::fs::remove_file(g.cdi.join("vendor.json")).unwrap();

    // A spec written by `drun cdi generate` is used as any other: here with video libraries only, which discovery
    // would not pick with the default capabilities.
    let spec = g.cdi.join("nvidia.yaml");
    let out = g
        .drun(&[
            "cdi",
            "generate",
            "--capabilities",
            "video",
            "-o",
            spec.to_str().unwrap(),
        ])
        .ok();
    assert!(out.stderr.contains("2 GPU(s), driver 550.54.15"), "{}", out.stderr);
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(text.contains("kind: nvidia.com/gpu") && text.contains(A100), "{text}");
    let o = g
        .sh(
            &["--gpus", "1"],
            "debian:bookworm",
            "ldconfig -p | grep -E 'libcuda|libnvidia' | sort",
        )
        .ok()
        .stdout;
    assert!(o.contains("libnvidia-encode.so.1") && !o.contains("libcuda"), "{o}");
    let listed = g.drun(&["gpus", "--json"]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v["gpus"][0]["source"], "CDI", "{listed}");
    assert_eq!(v["gpus"][1]["memory_mib"], 11441, "{listed}");
}

#[test]
fn any_cdi_device_by_name() {
    let g = setup(None);
    std::fs::write(
        g.cdi.join("example.yaml"),
        format!(
            "cdiVersion: 0.6.0\nkind: example.com/widget\ndevices:\n  - name: w0\n    containerEdits:\n      env: [WIDGET=w0]\n      deviceNodes:\n        - path: /dev/widget0\n          hostPath: {}\n",
            g.root.join("dev/nvidia-modeset").display()
        ),
    )
    .unwrap();
    let o = g
        .drun(&[
            "run",
            "--device",
            "example.com/widget=w0",
            &test_image("busybox:latest"),
            "sh",
            "-c",
            "stat -c '%n %t:%T' /dev/widget0; echo $WIDGET",
        ])
        .ok()
        .stdout;
    assert!(o.contains("/dev/widget0 c3:fe") && o.contains("w0"), "{o}");
    g.drun(&[
        "run",
        "--device",
        "example.com/widget=nope",
        &test_image("busybox:latest"),
        "true",
    ])
    .fails_with(
        125,
        &[
            "unresolvable CDI device example.com/widget=nope",
            "known: example.com/widget=w0",
        ],
    );
}

#[test]
fn missing_uvm_and_missing_driver() {
    let g = setup(None);
    std::fs::remove_file(g.root.join("dev/nvidia-uvm")).unwrap();
    let out = g.sh(&["--gpus", "1"], "busybox:latest", NODES).ok();
    assert!(out.stderr.contains("nvidia-modprobe -u -c=0"), "{}", out.stderr);
    assert!(
        out.stdout.contains("/dev/nvidia1 ") && !out.stdout.contains("nvidia-uvm "),
        "{}",
        out.stdout
    );
    let empty = g.sb.path().join("no-driver");
    std::fs::create_dir_all(&empty).unwrap();
    g.sb.drun_with(
        &["run", "--gpus", "1", &test_image("busybox:latest"), "true"],
        &[
            ("DRUN_DRIVER_ROOT", empty.as_os_str()),
            ("DRUN_CDI_SPEC_DIRS", g.cdi.as_os_str()),
        ],
    )
    .fails_with(
        125,
        &[
            "no NVIDIA GPU found: no driver under",
            "no nvidia.com/gpu device in the CDI specs",
        ],
    );
}

#[test]
fn the_dstack_example_with_a_simulated_k80() {
    let g = setup(None);
    let project = g.sb.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let wf = project.join("workflow.yaml");
    std::fs::write(
        &wf,
        format!(
            r#"workflows:
  - name: train
    provider: docker
    image: {}
    commands:
      - mkdir -p output
      - echo 'Hello, world!' > output/hello.txt
      - nvidia-smi > output/gpu.txt
    artifacts:
      - path: ./output
    resources:
      gpu:
        name: "K80"
        count: 1
"#,
            test_image("busybox:latest")
        ),
    )
    .unwrap();
    g.drun(&["run", "-q", wf.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::read_to_string(project.join("artifacts/train/output/hello.txt")).unwrap(),
        "Hello, world!\n"
    );
    assert_eq!(
        std::fs::read_to_string(project.join("artifacts/train/output/gpu.txt")).unwrap(),
        format!("fake nvidia-smi, driver 550.54.15: visible {K80}\n")
    );
}

/// On a host with a real NVIDIA GPU and driver: `make test-gpu` (and step 4 of `hack/gpu-hardware.sh check`).
/// The image is the CUDA check image of hack/gpu-hardware.sh (glibc + tests/fixtures/cuda_check.c, an OCI layout),
/// given as `DRUN_GPU_IMAGE=oci:DIR:TAG` or built here; no registry is needed, as GPU machines may have no network.
#[test]
#[ignore = "needs an NVIDIA GPU (run with `make test-gpu` on a GPU host)"]
fn real_gpu_hardware() {
    assert!(is_root());
    let sb = Sandbox::new();
    let image = match std::env::var("DRUN_GPU_IMAGE") {
        Ok(image) => image,
        Err(_) => {
            let layout = sb.path().join("layout");
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/gpu-hardware.sh");
            let built = std::process::Command::new("bash")
                .args([script, "image", layout.to_str().unwrap()])
                .status()
                .expect("bash");
            assert!(built.success(), "hack/gpu-hardware.sh image failed");
            format!("oci:{}:gpu-check", layout.display())
        }
    };
    sb.drun(&["pull", "-q", &image]).ok();
    let smi = |args: &[&str]| {
        let out = std::process::Command::new("nvidia-smi")
            .args(args)
            .output()
            .expect("nvidia-smi on the host");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let host_list = smi(&["-L"]);
    let gpus = host_list.lines().filter(|l| l.starts_with("GPU ")).count();
    assert!(gpus >= 1, "nvidia-smi -L on the host: {host_list}");
    let uuid = smi(&["--query-gpu=uuid", "--format=csv,noheader"]);
    let uuid = uuid.lines().next().unwrap().trim().to_string();
    let name = smi(&["--query-gpu=name", "--format=csv,noheader"]);
    let name = name.lines().next().unwrap().trim().to_string();

    // Every GPU, as the host lists them.
    let out = sb.drun(&["run", "--gpus", "all", &image, "nvidia-smi", "-L"]).ok();
    assert_eq!(
        out.stdout.trim(),
        host_list,
        "nvidia-smi -L in the container vs the host"
    );

    // CUDA through the driver API: 1 GiB allocated, set, copied back and checked on one GPU.
    let out = sb.drun(&["run", "--gpus", "1", &image, "cuda_check", "1024"]).ok();
    assert!(out.stdout.contains("cuda devices: 1\n"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("device 0: {name},")), "{}", out.stdout);
    assert!(out.stdout.contains("checked: ok"), "{}", out.stdout);

    // By UUID: the container's only device is that GPU.
    let by_uuid = format!("device={uuid}");
    let out = sb.drun(&["run", "--gpus", &by_uuid, &image, "cuda_check", "64"]).ok();
    assert!(out.stdout.contains(&format!(", {uuid}\n")), "{}", out.stdout);

    // More GPUs than the host has: drun's own error, naming what it found.
    let too_many = (gpus + 1).to_string();
    let out = sb.drun(&["run", "--gpus", &too_many, &image, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr);
    assert!(out.stderr.contains("GPU"), "{}", out.stderr);

    // Without --gpus the container has no driver.
    let out = sb.drun(&["run", &image, "cuda_check", "16"]);
    assert_eq!(out.status.code(), Some(2), "{}\n{}", out.stdout, out.stderr);
}
