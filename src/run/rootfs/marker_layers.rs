//! A layer's whiteouts and opaque directories kept as markers (a store on a file system that refuses overlay
//! whiteouts: overlayfs inside a CI job container, FUSE, old kernels for an ordinary user) turned back into the
//! overlay form for one run: a small layer of the run's own, made where whiteouts can be made (the run's
//! directory or its tmpfs) and stacked directly below the marked layer. It hides what the layers below have at
//! those paths; the marked layer above still shows what it put there itself, as OCI's whiteouts say.
//!
//! The layer is made in a fresh directory of drun's own from paths checked when the layer was unpacked (relative,
//! no `..`): nothing is ever written into the store or outside that directory. Its directories' owners and modes
//! never show: the marked layer holds every directory its markers are in, and shadows them.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::sys::stat::{mknod, Mode, SFlag};

use crate::image::unpack::{Markers, OVERLAY_OPAQUE_XATTR, OVERLAY_USER_OPAQUE_XATTR};

/// Whether `m` makes the layer's root opaque: the layers below it are then hidden whole.
pub(super) fn hides_everything_below(m: &Markers) -> bool {
    m.opaque.iter().any(|p| components(p).is_some_and(|c| c.is_empty()))
}

/// Makes the overlay-format layer of `m` in `dir` (created here, 0755).
pub(super) fn make(m: &Markers, dir: &Path) -> io::Result<()> {
    crate::sys::safe_fs::create_dir_mode(dir, 0o755)?;
    // The xattr the overlay mounted for this run reads (see `mount_overlay`: `userxattr` in a user namespace).
    let opaque_xattr = if crate::sys::userns::current().is_some() {
        OVERLAY_USER_OPAQUE_XATTR
    } else {
        OVERLAY_OPAQUE_XATTR
    };
    let make_opaque = |path: &Path| -> io::Result<()> {
        let d = crate::sys::safe_fs::open_dir_nofollow(path)?;
        crate::sys::at::set_xattr(d.as_fd(), opaque_xattr, b"y")
    };
    for w in &m.whiteouts {
        let Some(comps) = components(w).filter(|c| !c.is_empty()) else {
            continue;
        };
        let (name, parents) = comps.split_last().expect("not empty");
        let parent = dirs(dir, parents, &make_opaque)?;
        let target = parent.join(name);
        match std::fs::symlink_metadata(&target) {
            // A deeper marker made it a directory first: the layer deleted it and made it again, so nothing
            // below shows through it.
            Ok(md) if md.is_dir() => make_opaque(&target)?,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0).map_err(io::Error::from)?;
            }
            Err(e) => return Err(e),
        }
    }
    for o in &m.opaque {
        let Some(comps) = components(o).filter(|c| !c.is_empty()) else {
            continue;
        };
        let d = dirs(dir, &comps, &make_opaque)?;
        make_opaque(&d)?;
    }
    Ok(())
}

/// Creates the directories `comps` below `root` (a whiteout in the way becomes an opaque directory: the layer
/// deleted that path and made it again) and returns the last one.
fn dirs(
    root: &Path,
    comps: &[&OsStr],
    make_opaque: &dyn Fn(&Path) -> io::Result<()>,
) -> io::Result<std::path::PathBuf> {
    let mut at = root.to_path_buf();
    for c in comps {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                std::fs::remove_file(&at)?;
                crate::sys::safe_fs::create_dir_mode(&at, 0o755)?;
                make_opaque(&at)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::sys::safe_fs::create_dir_mode(&at, 0o755)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// A marker's path as file names (empty for the layer's root), or None for one that is not plainly relative
/// (never written by the unpacker, which checked every name).
fn components(p: &[u8]) -> Option<Vec<&OsStr>> {
    Path::new(OsStr::from_bytes(p))
        .components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[test]
    fn markers_become_an_overlay_layer_of_whiteouts_and_opaque_directories() {
        if !nix::unistd::geteuid().is_root() {
            return; // 0:0 character devices and trusted.* xattrs need root
        }
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("w");
        let m = Markers {
            whiteouts: vec![b"etc/issue.net".to_vec(), b"a".to_vec(), b"a/b".to_vec()],
            opaque: vec![b"opt/replaced".to_vec(), b"../x".to_vec()],
        };
        make(&m, &dir).unwrap();
        let whiteout = |p: &str| {
            let md = std::fs::symlink_metadata(dir.join(p)).unwrap();
            md.file_type().is_char_device() && md.rdev() == 0
        };
        let opaque = |p: &str| crate::sys::read::xattr_present(&dir.join(p), OVERLAY_OPAQUE_XATTR);
        assert!(whiteout("etc/issue.net") && whiteout("a/b"));
        assert!(dir.join("a").is_dir() && opaque("a"), "deleted and made again");
        assert!(opaque("opt/replaced") && !opaque("opt") && !opaque("etc"));
        assert!(!t.path().join("x").exists());
        assert!(!hides_everything_below(&m));
        assert!(hides_everything_below(&Markers {
            whiteouts: vec![],
            opaque: vec![b".".to_vec()],
        }));
    }
}
