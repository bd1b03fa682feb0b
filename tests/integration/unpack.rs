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
    if n <= 0 {
        return vec![];
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| n.starts_with(b"user."))
    {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 4096];
        // SAFETY: as above; cn is NUL-terminated.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if m >= 0 {
            out.push((String::from_utf8_lossy(name).into_owned(), val[..m as usize].to_vec()));
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
    let image = format!("{}/drun-test/debian:bookworm", registry());
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

    // Spot checks of what the layers do (see hack/images.sh).
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

#[test]
fn hostile_layers_touch_nothing_outside_the_store() {
    let target = PathBuf::from(env("DRUN_TEST_ESCAPE_TARGET"));
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
    for name in names {
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("victim"), "victim\n").unwrap();
        let before = std::fs::metadata(target.join("victim")).unwrap();
        let sb = Sandbox::new();
        let image = format!("{}/drun-test/evil:{name}", registry());
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
                assert!(
                    out.stderr.contains("error: failed to pull"),
                    "evil:{name}: {}",
                    out.stderr
                );
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
    sb.drun(&["pull", &format!("{}/drun-test/evil:abs", registry())])
        .fails_with(125, &["/tmp/drun-escape-target/pwned-abs", "absolute path"]);
    sb.drun(&["pull", &format!("{}/drun-test/evil:dotdot", registry())])
        .fails_with(125, &["\"..\" component"]);
    let _ = std::fs::remove_dir_all(&target);
}
