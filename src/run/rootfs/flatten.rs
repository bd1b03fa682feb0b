//! The last resort where overlayfs cannot be mounted: a private copy of the image's layers, flattened into one
//! tree with their whiteouts, opaque directories and hardlinks applied. Never follows a symlink out of the tree.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::image::unpack::{Markers, OVERLAY_OPAQUE_XATTR, OVERLAY_USER_OPAQUE_XATTR};
use crate::sys::read::xattr_present;

/// Copies `layers` (bottom first, each with its markers, if any) into the empty directory `dest`.
pub(super) fn flatten(layers: &[PathBuf], markers: &[Option<Markers>], dest: &Path) -> io::Result<()> {
    let mut links = Links::new();
    for (layer, m) in layers.iter().zip(markers) {
        if let Some(m) = m {
            apply_markers(m, dest)?;
        }
        apply_layer(layer, dest, &mut links)?;
    }
    Ok(())
}

/// Applies a layer's recorded whiteouts and opaque directories to the flattened tree below it.
fn apply_markers(m: &Markers, dest: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // The paths were checked component by component when the layer was unpacked (no `..`, no absolute path);
    // a path whose parent in the tree so far is not a real directory (a symlink an image planted, or nothing)
    // has nothing below it to remove: never follow a symlink out of the tree.
    let inside = |p: &[u8]| -> Option<PathBuf> {
        let rel = Path::new(OsStr::from_bytes(p));
        let mut at = dest.to_path_buf();
        // "." (an opaque marker at the layer's root) is the root itself.
        let mut comps = rel
            .components()
            .filter(|c| *c != std::path::Component::CurDir)
            .peekable();
        while let Some(c) = comps.next() {
            let std::path::Component::Normal(name) = c else {
                return None;
            };
            at.push(name);
            if comps.peek().is_some() && !fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
                return None;
            }
        }
        Some(at)
    };
    for w in &m.whiteouts {
        if let Some(p) = inside(w) {
            remove_any(&p)?;
        }
    }
    for o in &m.opaque {
        let Some(dir) = inside(o) else { continue };
        if fs::symlink_metadata(&dir).is_ok_and(|md| md.is_dir()) {
            for e in fs::read_dir(&dir)? {
                remove_any(&e?.path())?;
            }
        }
    }
    Ok(())
}

/// Files already copied, by source (device, inode): a hardlinked source file is linked, not copied again, so
/// the flattened tree keeps the image's hardlinks (within a layer and to files of lower layers).
pub(super) type Links = std::collections::HashMap<(u64, u64), (PathBuf, u64)>;

/// Copies one overlay-format layer onto `dest`, honouring its whiteouts and opaque directories.
pub(super) fn apply_layer(layer: &Path, dest: &Path, links: &mut Links) -> io::Result<()> {
    for entry in fs::read_dir(layer)? {
        let entry = entry?;
        let src = entry.path();
        let dst = dest.join(entry.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            remove_any(&dst)?;
            continue;
        }
        if ft.is_dir() {
            let opaque = xattr_present(&src, OVERLAY_OPAQUE_XATTR) || xattr_present(&src, OVERLAY_USER_OPAQUE_XATTR);
            if opaque || !fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
                remove_any(&dst)?;
                fs::create_dir(&dst)?;
            }
            copy_meta(&meta, &dst)?;
            apply_layer(&src, &dst, links)?;
            continue;
        }
        remove_any(&dst)?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            let _ = std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()));
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                // Only while the first copy is still there (a later layer may have replaced that path).
                let first = links
                    .get(&key)
                    .filter(|(p, ino)| fs::symlink_metadata(p).is_ok_and(|m| m.ino() == *ino));
                if let Some((first, _)) = first {
                    if fs::hard_link(first, &dst).is_ok() {
                        continue;
                    }
                }
            }
            // A reflink or copy; hardlinking into the store would let container writes reach it.
            crate::sys::safe_fs::copy_file_nofollow(&src, &dst)?;
            copy_meta(&meta, &dst)?;
            if meta.nlink() > 1 {
                let ino = fs::symlink_metadata(&dst)?.ino();
                links.insert(key, (dst.clone(), ino));
            }
        } else {
            let kind = if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else if ft.is_fifo() {
                nix::sys::stat::SFlag::S_IFIFO
            } else {
                nix::sys::stat::SFlag::S_IFCHR
            };
            nix::sys::stat::mknod(
                &dst,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(io::Error::from)?;
            copy_meta(&meta, &dst)?;
        }
    }
    Ok(())
}

fn copy_meta(meta: &fs::Metadata, dst: &Path) -> io::Result<()> {
    let _ = std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()));
    crate::sys::safe_fs::set_mode_nofollow(dst, meta.mode() & 0o7777)
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn markers_never_follow_a_symlink_out_of_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let (dest, outside) = (t.path().join("root"), t.path().join("outside"));
        fs::create_dir_all(dest.join("etc/sub")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("victim"), "v").unwrap();
        fs::write(dest.join("etc/gone"), "g").unwrap();
        fs::write(dest.join("etc/sub/old"), "o").unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("link")).unwrap();
        let m = Markers {
            whiteouts: vec![b"link/victim".to_vec(), b"etc/gone".to_vec()],
            opaque: vec![b"link".to_vec(), b"etc/sub".to_vec()],
        };
        apply_markers(&m, &dest).unwrap();
        // An opaque marker at the layer's root hides everything below.
        let root_opaque = Markers {
            whiteouts: vec![],
            opaque: vec![b".".to_vec()],
        };
        let other = t.path().join("other");
        fs::create_dir_all(other.join("a")).unwrap();
        apply_markers(&root_opaque, &other).unwrap();
        assert_eq!(fs::read_dir(&other).unwrap().count(), 0);
        assert!(outside.join("victim").is_file(), "followed the symlink");
        assert!(!dest.join("etc/gone").exists());
        assert!(dest.join("etc/sub").is_dir() && !dest.join("etc/sub/old").exists());
        assert!(fs::symlink_metadata(dest.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
