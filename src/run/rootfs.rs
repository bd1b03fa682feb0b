//! The container's root file system: an overlay of the store's unpacked layers with the run's own upper and work
//! directories, so the store is never modified and every write is discarded with the run. Where overlayfs cannot
//! be mounted, a private flattened copy is made instead (and the debug log says so).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::image::unpack::{OVERLAY_OPAQUE_XATTR, OVERLAY_USER_OPAQUE_XATTR};
use crate::sys::read::{file_kind, read_regular_at, xattr_present};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot create {path:?}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot flatten the image into {path:?}")]
    Flatten { path: PathBuf, source: io::Error },
    #[error("cannot read the whiteout markers of layer {path:?}")]
    Markers { path: PathBuf, source: io::Error },
}

/// How the root file system was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    Overlay,
    Flattened,
}

/// Mounts (or builds) the root file system at `run_dir/rootfs` from `layers` (bottom first).
pub fn prepare(run_dir: &Path, layers: &[PathBuf]) -> Result<(PathBuf, RootfsKind), RootfsError> {
    let merged = run_dir.join("rootfs");
    let upper = run_dir.join("upper");
    let work = run_dir.join("work");
    // The upper directory (or the flattened copy) is the container's `/`: 0755, as Docker's, whatever drun's
    // umask; the run directory around it keeps the host's other users out.
    for (d, mode) in [(&merged, 0o755), (&upper, 0o755), (&work, 0o700)] {
        crate::sys::safe_fs::create_dir_mode(d, mode).map_err(|source| RootfsError::Create {
            path: d.clone(),
            source,
        })?;
    }
    let lowers: Vec<&Path> = layers.iter().rev().map(PathBuf::as_path).collect();
    // A layer whose whiteouts could not be made the overlay way can only be flattened.
    let markers: Vec<Option<crate::image::unpack::Markers>> = layers
        .iter()
        .map(|l| {
            markers_of(l).map_err(|source| RootfsError::Markers {
                path: l.clone(),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    let marked = markers.iter().any(Option::is_some);
    let mounted = if marked {
        Err(io::Error::from_raw_os_error(libc::ENOTSUP))
    } else {
        mount_overlay(&merged, &lowers, &upper, &work)
    };
    match mounted {
        Ok(()) => Ok((merged, RootfsKind::Overlay)),
        Err(e) => {
            tracing::debug!(error = %e, marked, "overlayfs cannot be used here; flattening the image into a private copy");
            let mut links = Links::new();
            for (layer, m) in layers.iter().zip(&markers) {
                let flatten = |e| RootfsError::Flatten {
                    path: merged.clone(),
                    source: e,
                };
                if let Some(m) = m {
                    apply_markers(m, &merged).map_err(flatten)?;
                }
                apply_layer(layer, &merged, &mut links).map_err(flatten)?;
            }
            Ok((merged, RootfsKind::Flattened))
        }
    }
}

/// The markers kept beside a layer tree (`<layer>/../markers.json`), if it has any. One that cannot be read is an
/// error: without it the layer's deletions would silently not apply.
fn markers_of(layer_root: &Path) -> io::Result<Option<crate::image::unpack::Markers>> {
    use crate::image::unpack::{MARKERS_FILE, MARKERS_FILE_MAX};
    let Some(dir) = layer_root.parent() else {
        return Ok(None);
    };
    let data = match crate::sys::safe_fs::read_bounded(&dir.join(MARKERS_FILE), MARKERS_FILE_MAX) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&data).map(Some).map_err(io::Error::other)
}

/// Applies a layer's recorded whiteouts and opaque directories to the flattened tree below it.
fn apply_markers(m: &crate::image::unpack::Markers, dest: &Path) -> io::Result<()> {
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

/// Mounts an overlay at `merged` (`lowers` top first), whatever their number (see [`crate::sys::overlay`]).
/// DRUN_ROOTFS=flatten makes it fail, forcing the callers' copy fallbacks (for tests, and for file systems where
/// overlay misbehaves); DRUN_ROOTFS=no-lowerdir-plus skips the new mount API's `lowerdir+`, so that the form older
/// kernels get is tested on newer ones too.
fn mount_overlay(merged: &Path, lowers: &[&Path], upper: &Path, work: &Path) -> io::Result<()> {
    use crate::sys::overlay::{mount_overlay, NewApi, Overlay};
    let knob = std::env::var_os("DRUN_ROOTFS");
    if knob.as_ref().is_some_and(|v| v == "flatten") {
        return Err(io::Error::from_raw_os_error(libc::ENOTSUP));
    }
    let new_api = if knob.is_some_and(|v| v == "no-lowerdir-plus") {
        NewApi::Skipped
    } else {
        NewApi::Allowed
    };
    let mut o = Overlay {
        lowers,
        upper,
        work,
        // In a user namespace overlayfs keeps its own attributes in `user.overlay.*` (Linux ≥ 5.11), as the
        // layers unpacked there are marked.
        userxattr: crate::sys::userns::current().is_some(),
        // The upper directory is discarded with the run, so overlayfs need not sync it: without `volatile`
        // (Linux ≥ 5.10) unmounting an overlay syncs the whole file system its upper directory is on, tens of
        // milliseconds when other programs left dirty data there. Older kernels reject the option (EINVAL):
        // asked once.
        volatile: VOLATILE.load(std::sync::atomic::Ordering::Relaxed),
    };
    let first = mount_overlay(merged, &o, new_api);
    let form = match first {
        Err(e) if o.volatile && e.raw_os_error() == Some(libc::EINVAL) => {
            o.volatile = false;
            let plain = mount_overlay(merged, &o, new_api)?;
            VOLATILE.store(false, std::sync::atomic::Ordering::Relaxed);
            plain
        }
        other => other?,
    };
    tracing::debug!(layers = lowers.len(), ?form, "overlay mounted");
    Ok(())
}

static VOLATILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Files already copied, by source (device, inode): a hardlinked source file is linked, not copied again, so
/// the flattened tree keeps the image's hardlinks (within a layer and to files of lower layers).
type Links = std::collections::HashMap<(u64, u64), (PathBuf, u64)>;

/// Copies one overlay-format layer onto `dest`, honouring its whiteouts and opaque directories.
fn apply_layer(layer: &Path, dest: &Path, links: &mut Links) -> io::Result<()> {
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

/// Opens `path` of the container's root with symlinks and ".." resolved inside it.
fn open_in_container(root: &Path, path: &str, flags: nix::fcntl::OFlag) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    let root_fd = crate::sys::at::open_dir(root)?;
    crate::sys::at::open_in_root(root_fd.as_fd(), Path::new(path.trim_start_matches('/')), flags)
        .map_err(io::Error::from)
}

/// The most drun reads of an image's `/etc/passwd` or `/etc/group`. Sites bake their whole user directory into
/// images (a 100 000-user passwd is about 8 MiB), so the cap is generous; it only keeps a hostile file from taking
/// drun's memory.
pub const ETC_FILE_CAP: u64 = 16 << 20;

/// Reads the regular file `path` of the container's root, at most `cap` bytes (see [`read_regular_at`]), as
/// text (invalid UTF-8 replaced): `Ok(None)` when it does not exist.
pub fn read_in_root(root: &Path, path: &str, cap: u64) -> io::Result<Option<String>> {
    use std::os::fd::AsFd;
    let root_fd = crate::sys::at::open_dir(root)?;
    Ok(read_regular_at(root_fd.as_fd(), path, cap)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Information about a path of the container's root (symlinks resolved inside it): `Some(metadata)` if it exists.
pub fn stat_in_root(root: &Path, path: &str) -> Option<fs::Metadata> {
    fs::File::from(open_in_container(root, path, nix::fcntl::OFlag::O_PATH).ok()?)
        .metadata()
        .ok()
}

/// Opens a regular file of the container's root for appending (created 0644 if missing), never leaving the root
/// and never opening anything else (a FIFO would block, a device run its driver).
pub fn append_in_root(root: &Path, path: &str) -> io::Result<fs::File> {
    use nix::fcntl::OFlag;
    let regular = |fd: &std::os::fd::OwnedFd| -> io::Result<()> {
        let mode = nix::sys::stat::fstat(fd).map_err(io::Error::from)?.st_mode;
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} is {}, not a regular file", file_kind(mode)),
            ));
        }
        Ok(())
    };
    let existing = open_in_container(root, path, OFlag::O_PATH | OFlag::O_NOFOLLOW)
        .and_then(|probe| regular(&probe))
        .and_then(|()| {
            open_in_container(
                root,
                path,
                OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            )
        });
    let fd = match existing {
        Ok(fd) => {
            regular(&fd)?;
            fd
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let p = Path::new(path);
            let parent = p.parent().map_or("/".into(), |d| d.display().to_string());
            let dir = open_in_container(root, &parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
            let name = p.file_name().ok_or_else(|| io::Error::other("no file name"))?;
            let fd = nix::fcntl::openat(
                std::os::fd::AsFd::as_fd(&dir),
                name,
                OFlag::O_WRONLY
                    | OFlag::O_APPEND
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .map_err(io::Error::from)?;
            // 0644 whatever drun's (private) umask: the container's users read /etc/passwd and /etc/group.
            nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o644)).map_err(io::Error::from)?;
            fd
        }
        Err(e) => return Err(e),
    };
    Ok(fs::File::from(fd))
}

/// A directory of the container's root, opened for fchown and the like.
pub fn open_dir_in_root(root: &Path, path: &str) -> io::Result<std::os::fd::OwnedFd> {
    open_in_container(root, path, nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY)
}

/// Creates a directory (and its parents) inside the container's root, never leaving it.
pub fn mkdir_in_root(root: &Path, path: &str) -> io::Result<()> {
    use std::os::fd::AsFd;
    let root_fd = crate::sys::at::open_dir(root)?;
    let comps: Vec<&OsStr> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    crate::sys::at::create_dirs_in_root(root_fd.as_fd(), &comps).map(drop)
}

/// The project directory of a workflow, copy-on-write: an overlay with `source` as its only lower layer and the
/// run's own upper/work directories, mounted at `run_dir/project/merged` (a private copy where overlay cannot be
/// mounted). The container's writes never reach `source`; the merged view is what artifacts are copied from.
pub fn prepare_project(run_dir: &Path, source: &Path) -> Result<PathBuf, RootfsError> {
    let base = run_dir.join("project");
    let (merged, upper, work) = (base.join("merged"), base.join("upper"), base.join("work"));
    for (d, mode) in [(&base, 0o700), (&merged, 0o755), (&upper, 0o755), (&work, 0o700)] {
        crate::sys::safe_fs::create_dir_mode(d, mode).map_err(|source| RootfsError::Create {
            path: d.clone(),
            source,
        })?;
    }
    let mounted = mount_overlay(&merged, &[source], &upper, &work);
    if let Err(e) = mounted {
        tracing::warn!(error = %e, dir = %source.display(), "overlayfs cannot be mounted over the project directory; copying it instead");
        apply_layer(source, &merged, &mut Links::new()).map_err(|source| RootfsError::Flatten {
            path: merged.clone(),
            source,
        })?;
    }
    Ok(merged)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;
    use crate::image::unpack::Markers;

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
