//! Whiteouts: OCI's `.wh.NAME` (the layer deletes NAME) and `.wh..wh..opq` (the directory hides what lower layers
//! put in it) become overlayfs' forms — a 0:0 character device and the opaque xattr — or, where the kernel or the
//! file system cannot make those, [`Markers`] kept beside the layer. Never deletes anything outside the entry's
//! own directory.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, mknodat, Mode, SFlag};

use super::layer::{Extraction, Place};
use super::{UnpackError, UnpackOptions, MAX_TRACKED};
use crate::sys::at::{open_in_root, relative_path, remove_at, set_xattr};

/// The prefix of a whiteout entry's name.
pub(super) const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the entry that makes its directory opaque.
pub(super) const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The opaque marker of an overlay mounted with `userxattr` (in a user namespace, where `trusted.*` is out of
/// reach).
pub const OVERLAY_USER_OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Whiteouts and opaque directories the file system could not represent the overlay way (an ordinary user on a
/// kernel before 5.8 cannot make 0:0 character devices; a file system without user xattrs cannot mark opaque
/// directories; overlayfs, a store on a CI job container's root, refuses 0:0 devices even to root). Kept beside
/// the layer tree in [`MARKERS_FILE`]; a root file system with such layers gets them as a small overlay-format
/// layer of its own below the marked one (`run/rootfs/markers.rs`), or is flattened where that cannot be made.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Markers {
    /// Paths (relative to the layer root) the layer deletes.
    pub whiteouts: Vec<Vec<u8>>,
    /// Directories whose lower contents the layer hides.
    pub opaque: Vec<Vec<u8>>,
}

impl Markers {
    pub fn is_empty(&self) -> bool {
        self.whiteouts.is_empty() && self.opaque.is_empty()
    }
}

/// The file, beside a layer's `root/`, that holds its [`Markers`].
pub const MARKERS_FILE: &str = "markers.json";
/// The largest [`MARKERS_FILE`] read back: the markers of one layer are bounded by [`MAX_TRACKED`], and each byte
/// of a path takes at most four in the file (`255,`).
pub const MARKERS_FILE_MAX: u64 = 4 * MAX_TRACKED as u64 + 4096;

/// `DRUN_WHITEOUTS=markers`: record every whiteout and opaque directory in the markers file instead of the
/// overlay form (what happens by itself where the kernel or file system cannot make the overlay form).
pub(super) fn markers_forced() -> bool {
    std::env::var_os("DRUN_WHITEOUTS").is_some_and(|v| v == "markers")
}

impl UnpackOptions {
    /// The xattr that marks a directory opaque for the overlay drun will mount.
    fn opaque_xattr(&self) -> &'static str {
        if self.userns.is_some() {
            OVERLAY_USER_OPAQUE_XATTR
        } else {
            OVERLAY_OPAQUE_XATTR
        }
    }
}

impl Extraction<'_> {
    /// `.wh..wh..opq` in the directory `parent_comps`: that directory is opaque.
    pub(super) fn opaque_marker(&mut self, place: &Place<'_>, parent_comps: &[&OsStr]) -> Result<(), UnpackError> {
        let dir = open_in_root(
            self.root,
            &relative_path(parent_comps),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(|e| place.error(e))?;
        let set = if self.force_markers {
            Err(io::Error::from(Errno::EOPNOTSUPP))
        } else {
            set_xattr(dir.as_fd(), self.opts.opaque_xattr(), b"y")
        };
        match set {
            Ok(()) => {}
            // Also as root: overlayfs (a store inside a CI job container) refuses `trusted.overlay.*` before
            // Linux 6.7.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EPERM)) => {
                let path = relative_path(parent_comps).into_os_string().into_vec();
                self.tracked.add(path.len())?;
                self.markers.opaque.push(path);
            }
            Err(e) => return Err(place.error(e)),
        }
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// `.wh.<target>` in the directory `parent_comps`: `target` is deleted.
    pub(super) fn whiteout(
        &mut self,
        place: &Place<'_>,
        parent_comps: &[&OsStr],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
            return Err(UnpackError::BadWhiteout {
                path: place.shown.clone(),
            });
        }
        let target = OsStr::from_bytes(target);
        let pfd = place.parent.as_fd();
        remove_at(pfd, target).map_err(|e| place.error(e))?;
        let made = if self.force_markers {
            Err(Errno::EPERM)
        } else {
            mknodat(pfd, target, SFlag::S_IFCHR, Mode::empty(), 0)
        };
        match made {
            Ok(()) => {}
            // EPERM unprivileged before Linux 5.8; some file systems (FUSE, parallel ones) refuse 0:0 devices
            // otherwise, and overlayfs (a store inside a CI job container) refuses them even to root.
            Err(Errno::EPERM | Errno::EOPNOTSUPP | Errno::EINVAL) => {
                let mut path = relative_path(parent_comps);
                path.push(target);
                let path = path.into_os_string().into_vec();
                self.tracked.add(2 * path.len())?;
                self.whited.insert(path.clone());
                self.markers.whiteouts.push(path);
            }
            Err(e) => return Err(place.error(e)),
        }
        self.stats.whiteouts += 1;
        Ok(())
    }
}

/// Whether `components` below `root` is an overlay whiteout (a 0:0 character device).
pub(super) fn is_whiteout_at(root: BorrowedFd<'_>, components: &[&OsStr]) -> bool {
    let Some((&name, parent)) = components.split_last() else {
        return false;
    };
    let Ok(dir) = open_in_root(root, &relative_path(parent), OFlag::O_PATH | OFlag::O_DIRECTORY) else {
        return false;
    };
    fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && st.st_rdev == 0)
}
