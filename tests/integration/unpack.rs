//! Unpacking is exact (compared with umoci's) and safe against hostile layers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::common::*;

/// user.* extended attributes of a path (not following symlinks).
fn user_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: c is NUL-terminated; the buffer pointer and length are valid.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let Ok(n) = usize::try_from(n) else {
        return vec![];
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| n.starts_with(b"user.")) {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 4096];
        // SAFETY: as above; cn is NUL-terminated.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if let Ok(m) = usize::try_from(m) {
            out.push((String::from_utf8_lossy(name).into_owned(), val[..m].to_vec()));
        }
    }
    out.sort();
    out
}

/// A description of every path below `root` (directory mtimes excluded), and the hardlink groups.
fn describe(root: &Path) -> (BTreeMap<String, String>, BTreeSet<Vec<String>>) {
    let mut map = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    fn walk(
        root: &Path,
        dir: &Path,
        map: &mut BTreeMap<String, String>,
        inodes: &mut HashMap<(u64, u64), Vec<String>>,
    ) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let mut d = format!("mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid());
            if ft.is_file() {
                let data = std::fs::read(&p).unwrap();
                d += &format!(
                    " file size={} sha256={} mtime={}",
                    m.len(),
                    hex::encode(sha2::Sha256::digest(&data)),
                    m.mtime()
                );
                if m.nlink() > 1 {
                    inodes.entry((m.dev(), m.ino())).or_default().push(rel.clone());
                }
            } else if ft.is_symlink() {
                d += &format!(" -> {}", std::fs::read_link(&p).unwrap().display());
            } else if ft.is_char_device() || ft.is_block_device() {
                d += &format!(" dev={}", m.rdev());
            }
            let x = user_xattrs(&p);
            if !x.is_empty() {
                d += &format!(" xattrs={x:?}");
            }
            map.insert(rel, d);
            if ft.is_dir() {
                walk(root, &p, map, inodes);
            }
        }
    }
    walk(root, root, &mut map, &mut inodes);
    let groups = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    (map, groups)
}

/// A read-only overlay of layer trees: what a container's root file system shows. Unmounted on drop.
struct Overlay {
    dir: PathBuf,
}

impl Overlay {
    fn mount(layers_bottom_first: &[PathBuf], dir: PathBuf) -> Overlay {
        std::fs::create_dir_all(&dir).unwrap();
        let lower = layers_bottom_first
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        nix::mount::mount(
            Some("overlay"),
            &dir,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(format!("lowerdir={lower}").as_str()),
        )
        .expect("mount overlay of the stored layers");
        Overlay { dir }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn debian_root_matches_umoci_unpack() {
    assert!(is_root(), "this test mounts overlayfs: run it as root (make test does)");
    let sb = Sandbox::new();
    let image = debian();
    sb.drun(&["pull", "-q", &image]).ok();
    let layers = sb.layer_roots(&image);
    assert!(layers.len() >= 3);
    // Layers are stored in overlay format: no OCI whiteout files, whiteouts are 0:0 character devices.
    for l in &layers {
        let (map, _) = describe(l);
        assert!(
            map.keys().all(|k| !k.rsplit('/').next().unwrap().starts_with(".wh.")),
            "OCI whiteout left in {}",
            l.display()
        );
    }
    let top = layers.last().unwrap();
    let wh = std::fs::symlink_metadata(top.join("opt/keep/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);

    let ov = Overlay::mount(&layers, sb.path().join("merged"));
    let (ours, our_links) = describe(&ov.dir);
    let (theirs, their_links) = describe(&cache().join("umoci/debian-bookworm/rootfs"));
    let mut diffs = Vec::new();
    for (k, v) in &theirs {
        match ours.get(k) {
            None => diffs.push(format!("missing in drun: {k} ({v})")),
            Some(o) if o != v => diffs.push(format!("{k}:\n  drun:  {o}\n  umoci: {v}")),
            _ => {}
        }
    }
    for k in ours.keys().filter(|k| !theirs.contains_key(*k)) {
        diffs.push(format!("extra in drun: {k} ({})", ours[k]));
    }
    assert!(
        diffs.is_empty(),
        "{} differences, first ones:\n{}",
        diffs.len(),
        diffs.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(our_links, their_links, "hardlink groups differ");

    // Spot checks of what the layers do (see tests/fixtures/images.sh).
    let m = &ov.dir;
    assert!(
        !m.join("opt/keep/gone").exists() && !m.join("etc/issue.net").exists() && !m.join("usr/share/doc/apt").exists()
    );
    assert_eq!(std::fs::read_to_string(m.join("opt/keep/changed")).unwrap(), "v2\n");
    assert!(
        m.join("opt/replaced/new").exists()
            && !m.join("opt/replaced/old").exists()
            && !m.join("opt/replaced/sub").exists()
    );
    let setuid = std::fs::metadata(m.join("opt/perm/setuid")).unwrap();
    assert_eq!((setuid.mode() & 0o7777, setuid.uid()), (0o4755, 0));
    let owned = std::fs::metadata(m.join("opt/perm/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid(), owned.mode() & 0o777), (1234, 5678, 0o640));
    assert_eq!(
        std::fs::read_link(m.join("opt/links/abs")).unwrap(),
        Path::new("/opt/keep/stays")
    );
    let a = std::fs::metadata(m.join("opt/links/hard-a")).unwrap();
    let b = std::fs::metadata(m.join("opt/links/hard-b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        std::fs::read_to_string(m.join("opt/links/hard-lower")).unwrap(),
        "stays\n"
    );
    assert_eq!(
        user_xattrs(&m.join("opt/xattr/file")),
        vec![("user.drun".to_string(), b"drun-xattr-value".to_vec())]
    );
}

/// The hostile images of `tests/fixtures/mkimage.py` (its `innocent` layer, then one of its `evil-*` layers),
/// aimed at `target`: an OCI layout in `dir`, one tag per name.
fn hostile_images(dir: &Path, target: &Path, names: &[&str]) -> PathBuf {
    let layout = dir.join("hostile");
    let innocent = dir.join("innocent.tar");
    mkimage_layer("innocent", &innocent, &[]);
    for name in names {
        let tar = dir.join(format!("evil-{name}.tar"));
        mkimage_layer(
            &format!("evil-{name}"),
            &tar,
            &["--escape".as_ref(), target.as_os_str()],
        );
        let spec = serde_json::json!({
            "layout": layout, "tag": name, "created": "2024-01-01T00:00:00Z",
            "images": [{"os": "linux", "architecture": host_arch(), "config": {"Cmd": ["/bin/true"]},
                        "layers": [{"tar": innocent, "compression": "gzip", "created_by": "innocent"},
                                   {"tar": tar, "compression": "gzip", "created_by": format!("hostile: {name}")}]}]
        });
        let spec_file = dir.join(format!("{name}.json"));
        std::fs::write(&spec_file, spec.to_string()).unwrap();
        mkimage_build(&spec_file);
    }
    layout
}

#[test]
fn hostile_layers_touch_nothing_outside_the_store() {
    // The images aim at a directory of this run's own (removed at the end), outside every sandbox.
    let target_dir = tempfile::Builder::new().prefix("drun-escape-").tempdir().unwrap();
    let target = target_dir.path().to_path_buf();
    let build = tempfile::tempdir().unwrap();
    let names = [
        "abs",
        "dotdot",
        "symlink",
        "symlink-rel",
        "symlink-chain",
        "symlink-file",
        "hardlink",
        "hardlink-dotdot",
        "whiteout",
    ];
    let layout = hostile_images(build.path(), &target, &names);
    let hostile = |name: &str| format!("oci:{}:{name}", layout.display());
    for name in names {
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("victim"), "victim\n").unwrap();
        let before = std::fs::metadata(target.join("victim")).unwrap();
        let sb = Sandbox::new();
        let image = hostile(name);
        let out = sb.drun(&["pull", &image]);
        let listing: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            listing,
            vec!["victim".to_string()],
            "evil:{name} created something in {}: {}",
            target.display(),
            out.stderr
        );
        let after = std::fs::metadata(target.join("victim")).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("victim")).unwrap(),
            "victim\n",
            "evil:{name} changed the victim"
        );
        assert_eq!(
            (before.ino(), before.nlink(), before.mtime()),
            (after.ino(), after.nlink(), after.mtime()),
            "evil:{name}"
        );
        match out.code() {
            Some(0) => {
                // Contained: whatever the layer wrote stayed inside its layer directory.
                let roots = sb.layer_roots(&image);
                let (map, _) = describe(roots.last().unwrap());
                assert!(!map.is_empty(), "evil:{name}");
            }
            Some(125) => {
                assert!(out.stderr.contains("error: cannot pull"), "evil:{name}: {}", out.stderr);
                assert!(
                    sb.entries("tmp").is_empty(),
                    "evil:{name} left staging debris: {:?}",
                    sb.entries("tmp")
                );
                assert!(sb.entries("images").is_empty());
            }
            other => panic!("evil:{name}: unexpected exit {other:?}: {}", out.stderr),
        }
    }
    // Entry names that are refused outright say which entry and why.
    let sb = Sandbox::new();
    sb.drun(&["pull", &hostile("dotdot")])
        .fails_with(125, &["\"..\" component"]);
    // An absolute name is a path of the layer, as Docker and Podman read it: the file lands inside the layer
    // (and, checked above, nothing outside it).
    let abs = hostile("abs");
    sb.drun(&["pull", &abs]).ok();
    let top = sb.layer_roots(&abs).pop().unwrap();
    assert_eq!(
        std::fs::read_to_string(top.join(target.strip_prefix("/").unwrap()).join("pwned-abs")).unwrap(),
        "pwned-abs\n"
    );
}

// ------------------------------------------------------------------ layers and images written by the tests

/// `sha256:<hex>` of some bytes.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A layer blob for [`oci_layout`]: its bytes, the digest of its uncompressed tar and its media type.
pub struct Blob {
    pub data: Vec<u8>,
    pub diff_id: String,
    pub media_type: &'static str,
}

/// An uncompressed layer.
pub fn plain(tar: Vec<u8>) -> Blob {
    Blob {
        diff_id: sha256(&tar),
        data: tar,
        media_type: "application/vnd.oci.image.layer.v1.tar",
    }
}

/// Appends an entry with exactly this name and link name (no normalisation: leading "/" stays), owned by root.
pub fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &[u8],
    link: &[u8],
    data: &[u8],
    mode: u32,
) {
    let mut h = tar::Header::new_ustar();
    let u = h.as_ustar_mut().unwrap();
    u.name[..name.len()].copy_from_slice(name);
    u.linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_704_067_200);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// The host's architecture as OCI names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes an OCI image layout of one image for the host's platform at `dir`; returns its reference for
/// `drun pull`.
pub fn oci_layout(dir: &Path, layers: &[Blob], cmd: &[&str]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> serde_json::Value {
        let d = sha256(data);
        std::fs::write(blobs.join(&d[7..]), data).unwrap();
        serde_json::json!({"digest": d, "size": data.len()})
    };
    let config = serde_json::json!({
        "architecture": host_arch(), "os": "linux", "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>()},
    });
    let mut cdesc = put(config.to_string().as_bytes());
    cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let ldescs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let mut d = put(&l.data);
            d["mediaType"] = l.media_type.into();
            d
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cdesc, "layers": ldescs,
    });
    let mut mdesc = put(manifest.to_string().as_bytes());
    mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    mdesc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "latest"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [mdesc]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    format!("oci:{}:latest", dir.display())
}

#[test]
fn leading_slashes_name_the_layer_root() {
    // umoci starts its layers with an entry named "/", older tools wrote "/etc/passwd"; hardlink targets too.
    let sb = Sandbox::new();
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, tar::EntryType::Directory, b"/", b"", b"", 0o755);
    raw_entry(&mut b, tar::EntryType::Directory, b"/etc/", b"", b"", 0o755);
    raw_entry(
        &mut b,
        tar::EntryType::Regular,
        b"/etc/passwd",
        b"",
        b"root:x:0:0::/:/bin/sh\n",
        0o644,
    );
    raw_entry(&mut b, tar::EntryType::Regular, b"//etc/hello", b"", b"hello\n", 0o644);
    raw_entry(
        &mut b,
        tar::EntryType::Link,
        b"/etc/hello-link",
        b"/etc/hello",
        b"",
        0o644,
    );
    raw_entry(
        &mut b,
        tar::EntryType::Symlink,
        b"/etc/abs-symlink",
        b"/etc/hello",
        b"",
        0o777,
    );
    let layout = oci_layout(
        &sb.path().join("layout"),
        &[plain(b.into_inner().unwrap())],
        &["/bin/sh"],
    );
    sb.drun(&["pull", "-q", &layout]).ok();
    let root = &sb.layer_roots(&layout)[0];
    assert_eq!(
        std::fs::read_to_string(root.join("etc/passwd")).unwrap(),
        "root:x:0:0::/:/bin/sh\n"
    );
    let (a, b) = (
        std::fs::metadata(root.join("etc/hello")).unwrap(),
        std::fs::metadata(root.join("etc/hello-link")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "the hardlink with a leading / links inside the layer");
    // A symlink's target is kept as written: it is resolved in the container, not when unpacking.
    assert_eq!(
        std::fs::read_link(root.join("etc/abs-symlink")).unwrap(),
        Path::new("/etc/hello")
    );
}

#[test]
fn fifos_from_gnu_tar_and_python_tarfile_unpack() {
    // Both leave the device-number fields of non-device entries blank (all NUL), which Go's archive/tar reads as
    // 0; the tar crate refuses them.
    let sb = Sandbox::new();
    let layer = sb.path().join("fifo.tar");
    let script = r#"
import sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.GNU_FORMAT) as t:
    for name, kind, mode in [("run", tarfile.DIRTYPE, 0o755), ("run/fifo", tarfile.FIFOTYPE, 0o620)]:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = kind, mode, 1704067200
        t.addfile(ti)
"#;
    let st = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&layer)
        .status()
        .unwrap();
    assert!(st.success());
    let tar = std::fs::read(&layer).unwrap();
    // The fixture is what the bug needs: the FIFO's header (the second) has blank device fields.
    assert_eq!(&tar[512 + 329..512 + 345], &[0u8; 16]);
    let layout = oci_layout(&sb.path().join("layout"), &[plain(tar)], &["/bin/sh"]);
    sb.drun(&["pull", "-q", &layout]).ok();
    let fifo = std::fs::symlink_metadata(sb.layer_roots(&layout)[0].join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
}

#[test]
fn a_huge_pax_header_fails_fast_in_bounded_memory() {
    // A gzip layer of about 1 MiB holding a PAX extended header that claims 1 GiB (zeros compress well): the
    // header's size is refused before it is read into memory.
    let sb = Sandbox::new();
    const PAX: u64 = 1 << 30;
    let mut tar_hash = sha2::Sha256::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut emit = |data: &[u8], gz: &mut flate2::write::GzEncoder<Vec<u8>>| {
        use std::io::Write;
        tar_hash.update(data);
        gz.write_all(data).unwrap();
    };
    let mut h = tar::Header::new_ustar();
    h.as_ustar_mut().unwrap().name[..9].copy_from_slice(b"PaxHeader");
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(PAX);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    emit(h.as_bytes(), &mut gz);
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(PAX >> 20) {
        emit(&zeros, &mut gz);
    }
    let mut f = tar::Header::new_ustar();
    f.set_path("file").unwrap();
    f.set_size(0);
    f.set_mode(0o644);
    f.set_mtime(0);
    f.set_cksum();
    emit(f.as_bytes(), &mut gz);
    emit(&[0u8; 1024], &mut gz);
    let data = gz.finish().unwrap();
    assert!(data.len() < 2 << 20, "{} bytes", data.len());
    let blob = Blob {
        data,
        diff_id: format!("sha256:{}", hex::encode(tar_hash.finalize())),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
    };
    let layout = oci_layout(&sb.path().join("layout"), &[blob], &["/bin/sh"]);

    let (out, peak_rss, elapsed) = measured(sb.cmd(&["pull", "-q", &layout]), std::time::Duration::from_secs(60));
    eprintln!("peak RSS {} KiB, {elapsed:?}", peak_rss >> 10);
    assert!(peak_rss < 64 << 20, "peak RSS {} MiB: {}", peak_rss >> 20, out.stderr);
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
    out.fails_with(
        125,
        &["cannot pull", "layer sha256:", "PAX extended header", "1048576 bytes"],
    );
    assert!(sb.entries("tmp").is_empty(), "{:?}", sb.entries("tmp"));
}
