//! The scale images of `tests/fixtures/scale-images.sh` through drun for real: a "CUDA/PyTorch-like" image (large
//! incompressible files and many small ones, 5 layers) and an "NGC-like" image of 64 layers, pulled into the store
//! and as squashfs image files, and run from both. `make test` runs the small ones (seconds); `make test-scale` the
//! large ones (3.4 GB unpacked, 105,000 files), which the ignored tests here need (`scale-images.sh large`).

use std::time::{Duration, Instant};

use crate::common::*;

/// What a container of a scale image prints: regular files under /usr and /opt, their bytes, the first large
/// file's sha256, /etc/issue (overwritten by the top layer), whether the whited-out module is gone, the link count
/// of the in-layer hardlink and the file-system type of `/`.
const CHECK: &str = "cd / && find usr opt -type f | wc -l && \
    find usr opt -type f -exec stat -c %s {} + | busybox awk '{s += $1} END {printf \"%.0f\\n\", s}' && \
    sha256sum \"$BIG\" | busybox awk '{print $1}' && cat /etc/issue && \
    { [ -e usr/lib/python3/site-packages/pkg0000/mod00.py ] && echo present || echo deleted; } && \
    stat -c %h usr/local/cuda/lib64/stubs/libcuda.so && \
    while read -r dev mnt fs rest; do [ \"$mnt\" = / ] && r=$fs; done < /proc/mounts; echo $r";

/// What the many-layer image adds: the top layer's /top and the /layers files its whiteouts leave.
const LAYERS: &str = "cat /top; echo; ls /layers | wc -l";

pub(crate) struct Expected {
    pub(crate) big_file: String,
    pub(crate) view: String,
}

/// What [`CHECK`] prints for `image` (scale-cuda or scale-layers) of `size`, from what tests/fixtures/mkscale.py
/// recorded while writing the layers (not from anything drun made).
pub(crate) fn expected(size: &str, image: &str) -> Expected {
    let path = cache().join(format!("scale/{size}/expect.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nbuild the scale images first: tests/fixtures/scale-images.sh {size}",
            path.display()
        )
    });
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    let e = &all[image];
    let mut view = format!(
        "{}\n{}\n{}\nscale image\ndeleted\n2\noverlay\n",
        e["files"],
        e["bytes"],
        e["big_sha256"].as_str().unwrap()
    );
    if image == "scale-layers" {
        view.push_str("63\n53\n");
    }
    Expected {
        big_file: e["big_file"].as_str().unwrap().to_string(),
        view,
    }
}

/// Runs [`CHECK`] (and [`LAYERS`] for the many-layer image) in `image`, with drun's debug log on stderr.
fn check(sb: &Sandbox, image: &str, want: &Expected, limit: Duration) -> Output {
    check_with(|a| sb.cmd(a), image, want, limit)
}

/// [`check`] with the drun command `drun(args)` makes (an ordinary user's, a Slurm step's).
pub(crate) fn check_with(
    drun: impl Fn(&[&str]) -> std::process::Command,
    image: &str,
    want: &Expected,
    limit: Duration,
) -> Output {
    let mut c = drun(&check_args(image, want).iter().map(String::as_str).collect::<Vec<_>>());
    c.env_remove("DRUN_SQUASH");
    let out = run(c, limit).ok();
    assert_eq!(
        out.stdout, want.view,
        "{image}: the container's view differs from the image's"
    );
    out
}

/// drun's arguments for [`CHECK`] in `image`.
pub(crate) fn check_args(image: &str, want: &Expected) -> Vec<String> {
    let script = if image.contains("scale-layers") {
        format!("{CHECK}; {LAYERS}")
    } else {
        CHECK.to_string()
    };
    [
        "--log-level",
        "drun=debug",
        "run",
        "-q",
        "-e",
        &format!("BIG={}", want.big_file),
        image,
        "sh",
        "-c",
        &script,
    ]
    .map(str::to_string)
    .to_vec()
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    eprintln!("scale: {what}: {:.1} s", t.elapsed().as_secs_f64());
    r
}

/// The overlay form drun must use for many layers on this kernel: `lowerdir+` from Linux 6.8, else short
/// descriptor paths.
fn many_layer_form() -> &'static str {
    let new_api = kernel_at_least(6, 8);
    if new_api {
        "form=LowerdirPlus"
    } else {
        "form=DescriptorPaths"
    }
}

fn scale_images(size: &str) {
    let limit = Duration::from_secs(if size == "large" { 1800 } else { 300 });
    let cuda = test_image(&format!("scale-cuda:{size}"));
    let layers = test_image(&format!("scale-layers:{size}"));
    let (want_cuda, want_layers) = (expected(size, "scale-cuda"), expected(size, "scale-layers"));

    // Into the store: the layers unpacked, the runs through overlay.
    let store = Sandbox::new();
    timed(&format!("{size}: pull into the store"), || {
        run(store.cmd(&["pull", "-q", &cuda]), limit).ok()
    });
    timed(&format!("{size}: run from the store"), || {
        check(&store, &cuda, &want_cuda, limit)
    });
    // 64 layers (reusing the 5 of the first image): overlay with every layer as a lower directory, never a
    // flattened copy, whose files would also be on the store's file system.
    timed(&format!("{size}: pull the 64-layer image"), || {
        run(store.cmd(&["pull", "-q", &layers]), limit).ok()
    });
    let out = timed(&format!("{size}: run the 64-layer image"), || {
        check(&store, &layers, &want_layers, limit)
    });
    let mounted = out
        .stderr
        .lines()
        .find(|l| l.contains("overlay mounted"))
        .unwrap_or_else(|| panic!("no overlay mounted:\n{}", out.stderr));
    let lowers: usize = mounted
        .split("layers=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no layer count in {mounted:?}"));
    assert!(lowers >= 64, "{mounted}");
    assert!(mounted.contains(many_layer_form()), "{mounted}");
    assert!(!out.stderr.contains("flatten"), "a flattened copy:\n{}", out.stderr);

    // As squashfs image files: one file per image, no layer unpacked in the store, the runs from the file.
    let squash = Sandbox::new();
    for (image, want) in [(&cuda, &want_cuda), (&layers, &want_layers)] {
        timed(&format!("{size}: pull --squash {image}"), || {
            run(squash.cmd(&["pull", "-q", "--squash", image]), limit).ok()
        });
        let out = timed(&format!("{size}: run from the squashfs file"), || {
            check(&squash, image, want, limit)
        });
        assert!(
            out.stderr.contains("squashfs image mounted by the kernel"),
            "{}",
            out.stderr
        );
    }
    let files: Vec<String> = squash
        .entries("squash")
        .into_iter()
        .filter(|f| f.ends_with(".sqsh"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        squash.entries("layers/host").is_empty(),
        "{:?}",
        squash.entries("layers/host")
    );
    assert!(leftovers(&squash).is_empty(), "{:?}", leftovers(&squash));
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));

    // An ordinary user: the file streamed into an image directory of theirs and run through squashfuse (the kernel
    // mounts no file of theirs), as the container's root.
    let ub = crate::rootless::UserBox::new("drun-sub");
    let dir = ub.work().join("images").display().to_string();
    timed(
        &format!("{size}: rootless pull --squash into an image directory"),
        || run(ub.cmd(&["--image-dir", &dir, "pull", "-q", "--squash", &cuda]), limit).ok(),
    );
    let out = timed(&format!("{size}: rootless run from the squashfs file"), || {
        check_with(
            |a| {
                let mut args = vec!["--image-dir", dir.as_str()];
                args.extend(a);
                ub.cmd(&args)
            },
            &cuda,
            &want_cuda,
            limit,
        )
    });
    assert!(out.stderr.contains("mounted with squashfuse"), "{}", out.stderr);
    let unpacked: Vec<_> = std::fs::read_dir(ub.store().join("layers"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|idmap| std::fs::read_dir(idmap.path()).into_iter().flatten().flatten())
        .map(|l| l.path())
        .collect();
    assert!(unpacked.is_empty(), "nothing unpacked: {unpacked:?}");
}

#[test]
fn small_scale_images_run_from_the_store_and_from_squashfs_files() {
    scale_images("small");
}

#[test]
#[ignore = "3.4 GB images: make test-scale (tests/fixtures/scale-images.sh large)"]
fn large_scale_images_run_from_the_store_and_from_squashfs_files() {
    scale_images("large");
}
