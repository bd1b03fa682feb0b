//! The container's root file system: an overlay of the store's unpacked layers with the run's own upper and work
//! directories, so the store is never modified and every write is discarded with the run. Layers whose whiteouts
//! are kept as markers get an overlay-format layer of the run's own below them (`marker_layers`); where the run
//! directory's file system cannot hold an upper directory, the writable layers live on a tmpfs (`memory`). Where
//! overlayfs cannot be mounted at all, a private flattened copy is made instead (`flatten`), as a last resort.
//!
//! Also the workflow's copy-on-write project directory, the same way, and the helpers that reach into the
//! container's root without leaving it (`in_root`).

mod flatten;
mod in_root;
mod marker_layers;
mod memory;

use std::io;
use std::path::{Path, PathBuf};

use crate::image::unpack::Markers;
pub use in_root::{append_in_root, mkdir_in_root, open_dir_in_root, read_in_root, stat_in_root, ETC_FILE_CAP};
pub use memory::{Scratch, MEMORY_DIR};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot create {path:?}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot flatten the image into {path:?}")]
    Flatten { path: PathBuf, source: io::Error },
    #[error("cannot read the whiteout markers of layer {path:?}")]
    Markers { path: PathBuf, source: io::Error },
    /// A setup's writable layer must be an overlay's upper directory in the store, to be kept.
    #[error("cannot mount an overlay with its upper directory in the store")]
    NotKept { source: io::Error },
}

/// How the root file system was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    /// An overlay with its writable layer in the run's directory, or in memory (see [`Scratch`]).
    Overlay,
    Flattened,
}

/// Mounts (or builds) the root file system at `<run>/rootfs` from `layers` (bottom first), its writable layer in
/// `scratch`.
pub fn prepare(
    scratch: &mut Scratch,
    run_dir: &Path,
    layers: &[PathBuf],
) -> Result<(PathBuf, RootfsKind), RootfsError> {
    let merged = run_dir.join("rootfs");
    // The merged directory (or the flattened copy) is the container's `/`: 0755, as Docker's, whatever drun's
    // umask; the run directory around it keeps the host's other users out.
    create_dirs(&[(&merged, 0o755)])?;
    let markers: Vec<Option<Markers>> = layers
        .iter()
        .map(|l| {
            markers_of(l).map_err(|source| RootfsError::Markers {
                path: l.clone(),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    if !flatten_forced() {
        scratch.check_file_system();
        let mut last;
        loop {
            match overlay_root(scratch.base(), &merged, layers, &markers, scratch.keeps_upper()) {
                Ok(()) => {
                    scratch.announce();
                    return Ok((merged, RootfsKind::Overlay));
                }
                Err(e) => {
                    // The file system of the run directory may refuse the upper directory (or the whiteouts of a
                    // marker layer) without its type saying so: once more in memory.
                    let why = format!("overlayfs refused an upper directory in {:?} ({e})", scratch.base());
                    last = Some(e);
                    if !scratch.use_memory(&why) {
                        break;
                    }
                }
            }
        }
        let e = last.expect("tried at least once");
        if scratch.keeps_upper() {
            return Err(RootfsError::NotKept { source: e });
        }
        if scratch.in_memory() {
            tracing::warn!(error = %e, "overlayfs cannot be mounted here, even with its writable layer in memory: \
                copying the image into a private directory instead");
        } else if let Some(why) = scratch.memory_refused() {
            tracing::warn!(error = %e, "overlayfs cannot be mounted here, and its writable layer cannot be kept in \
                memory ({why}): copying the image into a private directory instead");
        } else {
            tracing::debug!(error = %e, "overlayfs cannot be used here; flattening the image into a private copy");
        }
    } else if scratch.keeps_upper() {
        return Err(RootfsError::NotKept {
            source: io::Error::other("DRUN_ROOTFS=flatten"),
        });
    } else {
        tracing::debug!("DRUN_ROOTFS=flatten: flattening the image into a private copy");
    }
    flatten::flatten(layers, &markers, &merged).map_err(|source| RootfsError::Flatten {
        path: merged.clone(),
        source,
    })?;
    Ok((merged, RootfsKind::Flattened))
}

/// One try at the overlay root, its writable layer (and marker layers) under `base`.
fn overlay_root(
    base: &Path,
    merged: &Path,
    layers: &[PathBuf],
    markers: &[Option<Markers>],
    keep_upper: bool,
) -> io::Result<()> {
    let (upper, work) = (base.join("upper"), base.join("work"));
    for (d, mode) in [(&upper, 0o755), (&work, 0o700)] {
        crate::sys::safe_fs::create_dir_mode(d, mode)?;
    }
    let mut lowers: Vec<PathBuf> = Vec::with_capacity(layers.len());
    for (i, (layer, m)) in layers.iter().zip(markers).enumerate() {
        if let Some(m) = m {
            if marker_layers::hides_everything_below(m) {
                lowers.clear();
            } else {
                let dir = base.join(format!("markers-{i}"));
                if !dir.exists() {
                    marker_layers::make(m, &dir)?;
                }
                lowers.push(dir);
            }
        }
        lowers.push(layer.clone());
    }
    let top_first: Vec<&Path> = lowers.iter().rev().map(PathBuf::as_path).collect();
    mount_overlay(merged, &top_first, &upper, &work, keep_upper)
}

fn create_dirs(dirs: &[(&PathBuf, u32)]) -> Result<(), RootfsError> {
    for (d, mode) in dirs {
        crate::sys::safe_fs::create_dir_mode(d, *mode).map_err(|source| RootfsError::Create {
            path: d.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// `DRUN_ROOTFS=flatten` makes every overlay fail, forcing the copy fallbacks (for tests, and for file systems
/// where overlay misbehaves).
fn flatten_forced() -> bool {
    std::env::var_os("DRUN_ROOTFS").is_some_and(|v| v == "flatten")
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

/// Mounts an overlay at `merged` (`lowers` top first), whatever their number (see [`crate::sys::overlay`]).
/// DRUN_ROOTFS=no-lowerdir-plus skips the new mount API's `lowerdir+`, so that the form older kernels get is
/// tested on newer ones too (DRUN_ROOTFS=flatten: see [`flatten_forced`]).
/// `keep_upper`: the upper directory becomes a layer (see [`Scratch::kept_in`]): complete, and synced.
fn mount_overlay(merged: &Path, lowers: &[&Path], upper: &Path, work: &Path, keep_upper: bool) -> io::Result<()> {
    use crate::sys::overlay::{mount_overlay, NewApi, Overlay};
    let new_api = if std::env::var_os("DRUN_ROOTFS").is_some_and(|v| v == "no-lowerdir-plus") {
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
        volatile: !keep_upper && VOLATILE.load(std::sync::atomic::Ordering::Relaxed),
        complete_upper: keep_upper,
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

/// The project directory of a workflow, copy-on-write: an overlay with `source` as its only lower layer and the
/// run's own upper/work directories (in `scratch`), mounted at `<run>/project/merged` (a private copy where
/// overlay cannot be mounted). The container's writes never reach `source`; the merged view is what artifacts are
/// copied from.
pub fn prepare_project(scratch: &mut Scratch, run_dir: &Path, source: &Path) -> Result<PathBuf, RootfsError> {
    let merged = run_dir.join("project/merged");
    create_dirs(&[(&run_dir.join("project"), 0o700), (&merged, 0o755)])?;
    let mut mounted = Err(io::Error::from(nix::errno::Errno::ENOTSUP));
    if !flatten_forced() {
        scratch.check_file_system();
        loop {
            mounted = project_overlay(scratch.base(), &merged, source);
            match &mounted {
                Ok(()) => {
                    scratch.announce();
                    break;
                }
                Err(e) => {
                    let why = format!("overlayfs refused an upper directory in {:?} ({e})", scratch.base());
                    if !scratch.use_memory(&why) {
                        break;
                    }
                }
            }
        }
    }
    if let Err(e) = mounted {
        tracing::warn!(error = %e, dir = %source.display(), "overlayfs cannot be mounted over the project directory; copying it instead");
        flatten::apply_layer(source, &merged, &mut flatten::Links::new()).map_err(|source| RootfsError::Flatten {
            path: merged.clone(),
            source,
        })?;
    }
    Ok(merged)
}

fn project_overlay(base: &Path, merged: &Path, source: &Path) -> io::Result<()> {
    let (upper, work) = (base.join("project/upper"), base.join("project/work"));
    for (d, mode) in [(&base.join("project"), 0o700), (&upper, 0o755), (&work, 0o700)] {
        crate::sys::safe_fs::create_dir_mode(d, mode)?;
    }
    mount_overlay(merged, &[source], &upper, &work, false)
}
