//! Setup layers in `setup/<idmap>/<key>/`: what a workflow's setup (`apt_packages`, `requirements`, `setup`) added
//! to an image, kept as an overlay layer (`root/`, the setup run's upper directory) with [`SETUP_META`] written
//! last, published by one rename like an unpacked layer. The key (hex of a SHA-256) covers the image, the script,
//! its environment, the requirements file's content and the ID mapping (`run::setup_layer`).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, remove_tree, unique, Store, StoreError};
use crate::digest::Digest;

/// Metadata kept beside a setup layer's `root/`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetupMeta {
    /// The image it was made on: its ID (config digest) and the name it was run by.
    pub image_id: Digest,
    pub image: String,
    /// Where the setup comes from (`workflow "NAME" in FILE`).
    pub source: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: time::OffsetDateTime,
    /// Bytes in the layer's tree.
    pub size: u64,
}

/// The overlay attributes a kept upper directory may carry into later runs, where it is a lower layer: only
/// `overlay.opaque` (a directory that hides the image's) is part of a layer. The rest (`redirect`, `metacopy`,
/// `origin`, `impure`, `nlink` …) describe that one mount, and one set by the setup itself (in a user namespace the
/// `user.overlay.*` names are the setup's to write) could make a later mount look elsewhere in the lower layers.
fn is_stray_overlay_xattr(name: &[u8]) -> bool {
    let rest = name
        .strip_prefix(b"trusted.overlay.")
        .or_else(|| name.strip_prefix(b"user.overlay."));
    rest.is_some_and(|r| r != b"opaque")
}

/// Removes [`is_stray_overlay_xattr`] attributes from every entry of the tree `dir` (a setup's upper directory, in
/// the store's private staging once the setup's container has ended), never following a symlink.
fn scrub_overlay_xattrs(dir: &Path) -> std::io::Result<()> {
    let mut pending = vec![dir.to_path_buf()];
    // At most 64 KiB of names per entry: the kernel's own limit (XATTR_LIST_MAX).
    let mut names = vec![0u8; 64 << 10];
    while let Some(path) = pending.pop() {
        let n = match rustix::fs::llistxattr(&path, &mut names[..]) {
            Ok(n) => n,
            // A file system without extended attributes has none to remove.
            Err(rustix::io::Errno::OPNOTSUPP) => 0,
            Err(e) => return Err(e.into()),
        };
        for name in names[..n].split(|b| *b == 0).filter(|n| is_stray_overlay_xattr(n)) {
            let name = std::ffi::CString::new(name).expect("split at NUL bytes");
            match rustix::fs::lremovexattr(&path, name.as_c_str()) {
                Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if fs::symlink_metadata(&path)?.is_dir() {
            for e in fs::read_dir(&path)? {
                pending.push(e?.path());
            }
        }
    }
    Ok(())
}

/// In the name of a setup layer that a rebuild (`--no-cache`) replaced: `<key>.old.<pid>.<n>`.
const OLD_INFIX: &str = ".old.";

/// The file beside a setup layer's `root/` that holds its [`SetupMeta`].
pub const SETUP_META: &str = "setup.json";
const SETUP_META_MAX: u64 = 64 << 10;

/// A published setup layer, as listed.
#[derive(Clone, Debug)]
pub struct SetupLayer {
    pub idmap: String,
    pub key: String,
    pub meta: SetupMeta,
}

impl Store {
    /// The lock name of the setup layer `key` (held while it is built: concurrent runs build it once).
    pub fn setup_lock_key(key: &str) -> String {
        format!("setup-{key}")
    }

    /// A fresh staging directory for the setup layer `key` (the caller holds its lock: anything there is debris).
    /// The setup run's writable layer goes in it (`upper/`, `work/`), on the store's file system, so that it can
    /// be published by renaming.
    pub fn setup_staging(&self, idmap: &str, key: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("tmp").join(format!("setup-{idmap}-{key}"));
        remove_tree(&dir)?;
        crate::sys::safe_fs::create_dir_all_mode(&dir, 0o700).map_err(io_err("create", &dir))?;
        Ok(dir)
    }

    /// Publishes the upper directory `staging/upper` as the setup layer `key`, replacing one already there.
    pub fn publish_setup(&self, idmap: &str, key: &str, staging: &Path, meta: &SetupMeta) -> Result<(), StoreError> {
        // The work directory is overlayfs's; what it left there is not part of the layer.
        remove_tree(&staging.join("work"))?;
        let (upper, root) = (staging.join("upper"), staging.join("root"));
        scrub_overlay_xattrs(&upper).map_err(io_err("clean the overlay attributes of", &upper))?;
        fs::rename(&upper, &root).map_err(io_err("rename", &upper))?;
        let meta_path = staging.join(SETUP_META);
        crate::sys::safe_fs::write_new(
            &meta_path,
            &serde_json::to_vec_pretty(meta).expect("setup metadata serialises"),
            0o600,
        )
        .map_err(io_err("write", &meta_path))?;
        // Durable before it is visible: a power cut must not leave a published layer with missing files.
        super::sync_file_system(staging)?;
        let parent = self.root.join("setup").join(idmap);
        crate::sys::safe_fs::create_dir_all_mode(&parent, 0o700).map_err(io_err("create", &parent))?;
        let dest = self.setup_dir(idmap, key);
        // One replaced (`--no-cache`) stays beside it as `<key>.old.*` while runs of the key may use it: garbage
        // collection removes it once none does (it cannot tell the old from the new by the key runs record).
        if fs::symlink_metadata(&dest).is_ok() {
            let old = parent.join(format!("{key}{OLD_INFIX}{}.{}", std::process::id(), unique()));
            fs::rename(&dest, &old).map_err(io_err("move aside", &dest))?;
        }
        fs::rename(staging, &dest).map_err(io_err("publish", &dest))?;
        super::sync_parent(&dest)
    }

    pub fn setup_dir(&self, idmap: &str, key: &str) -> PathBuf {
        self.root.join("setup").join(idmap).join(key)
    }

    /// The tree of a published setup layer, if there is one.
    pub fn setup_root(&self, idmap: &str, key: &str) -> Option<PathBuf> {
        let dir = self.setup_dir(idmap, key);
        dir.join(SETUP_META).is_file().then(|| dir.join("root"))
    }

    /// Every published setup layer, of every ID mapping.
    pub fn setup_layers(&self) -> Vec<SetupLayer> {
        let mut out = Vec::new();
        let Ok(maps) = fs::read_dir(self.root.join("setup")) else {
            return out;
        };
        for m in maps.flatten().filter(|m| m.file_type().is_ok_and(|t| t.is_dir())) {
            let Ok(entries) = fs::read_dir(m.path()) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(OLD_INFIX) {
                    continue;
                }
                let data = crate::sys::safe_fs::read_bounded(&e.path().join(SETUP_META), SETUP_META_MAX);
                if let Some(meta) = data.ok().and_then(|d| serde_json::from_slice(&d).ok()) {
                    out.push(SetupLayer {
                        idmap: m.file_name().to_string_lossy().into_owned(),
                        key: e.file_name().to_string_lossy().into_owned(),
                        meta,
                    });
                }
            }
        }
        out.sort_by_key(|l| std::cmp::Reverse(l.meta.created));
        out
    }

    /// Which setup layers garbage collection removes: those whose image is gone, those without metadata (an
    /// interrupted publish cannot leave one, but a damaged store can), and those replaced by a newer one of the
    /// same source on the same image name; never one in `in_use` (`setup-<key>`, as runs record it).
    pub(super) fn unused_setup_layers(&self, image_ids: &[&Digest], in_use: &[String]) -> Vec<PathBuf> {
        let layers = self.setup_layers();
        let mut out = Vec::new();
        let mut newest: Vec<(&str, &str, &str)> = Vec::new();
        for l in &layers {
            let used = in_use.contains(&Store::setup_lock_key(&l.key));
            // Newest first: a later entry of the same source, image and ID mapping was replaced.
            let same = (l.meta.source.as_str(), l.meta.image.as_str(), l.idmap.as_str());
            let replaced = newest.contains(&same);
            newest.push(same);
            if !used && (replaced || !image_ids.contains(&&l.meta.image_id)) {
                out.push(self.setup_dir(&l.idmap, &l.key));
            }
        }
        let Ok(maps) = fs::read_dir(self.root.join("setup")) else {
            return out;
        };
        for m in maps.flatten().filter(|m| m.file_type().is_ok_and(|t| t.is_dir())) {
            for e in fs::read_dir(m.path()).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.split(OLD_INFIX).next().unwrap_or(&name);
                let used = in_use.contains(&Store::setup_lock_key(key));
                // Replaced ones, and any without metadata, unless a run of the key may use them.
                if !used && (name.contains(OLD_INFIX) || !e.path().join(SETUP_META).is_file()) {
                    out.push(e.path());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods, reason = "test scaffolding in a temporary directory")]

    use super::*;

    fn names(p: &Path) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap();
        let mut v: Vec<String> = buf[..n]
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_opaque_overlay_attributes_stay_in_a_kept_layer() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        let file = sub.join("f");
        std::fs::write(&file, "x").unwrap();
        std::os::unix::fs::symlink("f", sub.join("link")).unwrap();
        let set = |p: &Path, name: &str| rustix::fs::lsetxattr(p, name, b"y", rustix::fs::XattrFlags::empty());
        set(&sub, "user.overlay.opaque").unwrap();
        set(&sub, "user.overlay.redirect").unwrap();
        set(&file, "user.overlay.metacopy").unwrap();
        set(&file, "user.kept").unwrap();
        scrub_overlay_xattrs(dir.path()).unwrap();
        assert_eq!(names(&sub), ["user.overlay.opaque"]);
        assert_eq!(names(&file), ["user.kept"]);
        assert!(is_stray_overlay_xattr(b"trusted.overlay.origin"));
        assert!(!is_stray_overlay_xattr(b"trusted.overlay.opaque"));
        assert!(!is_stray_overlay_xattr(b"security.capability"));
    }
}
