//! `drun export IMAGE -o oci-archive:FILE[:TAG]` and `-o docker-archive:FILE`: archives that drun, skopeo and
//! podman read back, with the image's tree intact.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;

/// Every path of the root (but the run's own /etc files and the kernel's file systems) with owner, group, mode,
/// and for all but directories link count, type, size, symlink target and modification time.
const TREE: &str = "find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o \
    -type d -printf '%p %U %G %m d\\n' -o -printf '%p %U %G %m %n %y %s %l %T@\\n' \
    | grep -v -e '^/etc/hosts ' -e '^/etc/hostname ' -e '^/etc/resolv.conf ' | sort";

fn tree(sb: &Sandbox, image: &str) -> String {
    sb.drun(&["run", "-q", "--pull=never", image, "sh", "-c", TREE])
        .ok()
        .stdout
}

fn skopeo_inspect(src: &str) -> serde_json::Value {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", src])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {src}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_image_exported_to_archives_runs_from_a_fresh_store_with_the_same_tree() {
    let sb = Sandbox::new();
    let image = debian();
    sb.drun(&["pull", "-q", &image]).ok();
    let view = tree(&sb, &image);
    // Whiteouts, an opaque directory, hardlinks (one into a lower layer), owners: all in the view compared.
    assert!(view.contains("/opt/links/hard-lower 0 0 644 2 f"), "{view}");
    assert!(!view.contains("/opt/keep/gone") && !view.contains("/opt/replaced/old"));
    let oci = sb.path().join("debian-oci.tar");
    let docker = sb.path().join("debian-docker.tar");
    let oci_src = format!("oci-archive:{}:v1", oci.display());
    let out = sb.drun(&["export", &image, "-o", &oci_src]).ok();
    let digest = out.stdout.trim().to_string();
    assert!(digest.starts_with("sha256:"), "{}", out.stdout);
    assert!(out.stderr.contains("3 written from the store"), "{}", out.stderr);
    sb.drun(&["export", &image, "-o", &format!("docker-archive:{}", docker.display())])
        .ok();
    // Private to the caller, like `docker save -o`; no temporary file left beside them.
    for f in [&oci, &docker] {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let names: Vec<String> = std::fs::read_dir(sb.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("drun-tmp")), "{names:?}");
    // The same image gives the same bytes: exporting again (over the file, atomically) keeps the digest.
    let again = sb.drun(&["export", &image, "-o", &oci_src]).ok();
    assert_eq!(again.stdout.trim(), digest);

    // A fresh store pulls each archive and runs the same tree.
    let fresh = Sandbox::new();
    let pulled = fresh.drun(&["pull", "-q", &oci_src]).ok();
    assert_eq!(pulled.stdout.trim(), digest, "the archive's manifest is the one pulled");
    assert_eq!(tree(&fresh, &oci_src), view, "the oci-archive's tree differs");
    let roots = fresh.layer_roots(&oci_src);
    let with_xattr = roots.iter().find(|r| r.join("opt/xattr/file").exists()).unwrap();
    assert_eq!(
        xattr(&with_xattr.join("opt/xattr/file"), "user.drun").as_deref(),
        Some(&b"drun-xattr-value"[..])
    );
    let fresh2 = Sandbox::new();
    fresh2
        .drun(&["pull", "-q", &format!("docker-archive:{}", docker.display())])
        .ok();
    // Recorded under the archive's RepoTags: the image's own name.
    assert_eq!(tree(&fresh2, &image), view, "the docker-archive's tree differs");
}

#[test]
fn skopeo_and_podman_read_drun_archives() {
    let sb = Sandbox::new();
    let image = debian();
    let oci = sb.path().join("oci.tar");
    let docker = sb.path().join("docker.tar");
    let digest = sb
        .drun(&["export", &image, "-o", &format!("oci-archive:{}", oci.display())])
        .ok()
        .stdout;
    sb.drun(&["export", &image, "-o", &format!("docker-archive:{}", docker.display())])
        .ok();
    let doc = skopeo_inspect(&format!("oci-archive:{}", oci.display()));
    assert_eq!(doc["Digest"].as_str(), Some(digest.trim()));
    assert_eq!(doc["Layers"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(doc["Architecture"].as_str(), Some("amd64"));
    let doc = skopeo_inspect(&format!("docker-archive:{}", docker.display()));
    assert_eq!(doc["Layers"].as_array().unwrap().len(), 3, "{doc}");
    // podman, with a store of its own in the test's directory.
    let podman = |args: &[&str]| {
        let mut c = std::process::Command::new("podman");
        c.arg("--root")
            .arg(sb.path().join("podman/root"))
            .arg("--runroot")
            .arg(sb.path().join("podman/run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        run(c, Duration::from_secs(300))
    };
    let loaded = podman(&["load", "-i", &docker.display().to_string()]).ok();
    assert!(
        loaded.stdout.contains(&format!("Loaded image: {image}")),
        "{}",
        loaded.stdout
    );
    let loaded = podman(&["load", "-i", &oci.display().to_string()]).ok();
    assert!(loaded.stdout.contains("Loaded image"), "{}", loaded.stdout);
}

#[test]
fn with_a_blob_cache_an_archive_keeps_the_original_blobs_and_digests() {
    // The store keeps unpacked layers only; where `--blob-cache` has the original blobs they are copied as they
    // are, so the archive holds the very image the registry served.
    let sb = Sandbox::new();
    let cache = sb.path().join("blob-cache");
    let bc = format!("--blob-cache={}", cache.display());
    let image = debian();
    let pulled = sb.drun(&[&bc, "pull", "-q", &image]).ok().stdout;
    let oci = sb.path().join("oci.tar");
    let out = sb
        .drun(&[&bc, "export", &image, "-o", &format!("oci-archive:{}", oci.display())])
        .ok();
    assert_eq!(out.stdout, pulled, "the registry's manifest digest");
    assert!(out.stderr.contains("3 layers copied, 0 written"), "{}", out.stderr);
    let fresh = Sandbox::new();
    let src = format!("oci-archive:{}", oci.display());
    assert_eq!(fresh.drun(&["pull", "-q", &src]).ok().stdout, pulled);
    let id = |s: &Sandbox, name: &str| {
        let out = s.drun(&["inspect", name]).ok();
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        doc["Id"].as_str().unwrap().to_string()
    };
    assert_eq!(id(&fresh, &src), id(&sb, &image), "the image ID is kept");
    assert_eq!(
        fresh.drun(&["run", "-q", &src, "cat", "/opt/keep/changed"]).ok().stdout,
        "v2\n"
    );
}

#[test]
fn export_to_an_archive_refuses_what_it_cannot_write() {
    let sb = Sandbox::new();
    sb.drun(&["pull", "-q", &busybox()]).ok();
    sb.drun(&["export", &busybox(), "-o", "oci-archive:"])
        .fails_with(125, &["expected oci-archive:FILE[:TAG]"]);
    let out = format!("docker-archive:{}", sb.path().join("x.tar").display());
    sb.drun(&["export", &busybox(), "-o", &out, "--mem", "64M"])
        .fails_with(125, &["--mem is for squashfs image files"]);
    // A directory that does not exist: nothing written, the error names the file.
    let missing = sb.path().join("no/such/dir/x.tar");
    sb.drun(&[
        "export",
        &busybox(),
        "-o",
        &format!("oci-archive:{}", missing.display()),
    ])
    .fails_with(125, &["cannot export", "cannot create", "x.tar"]);
    // A planted symlink at the output is replaced by the rename, never written through.
    let target = sb.path().join("victim");
    std::fs::write(&target, b"keep").unwrap();
    let link = sb.path().join("link.tar");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    sb.drun(&["export", &busybox(), "-o", &format!("oci-archive:{}", link.display())])
        .ok();
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
}
