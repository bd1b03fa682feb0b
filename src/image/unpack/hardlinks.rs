//! Hardlinks: within a layer, linked as the entry comes; into a lower layer (legal, if rare), remembered as a
//! [`LowerLink`] and made by [`link_from_lower`] once the lower layers are in the store. A link never reaches a
//! file outside the layer or its image's lower layers.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, SFlag};
use nix::unistd::linkat;

use super::layer::{Extraction, Place};
use super::names::components;
use super::whiteouts::is_whiteout_at;
use super::{LowerLink, UnpackError};
use crate::sys::at::{copy_file_at, create_dirs_in_root, open_dir, open_in_root, relative_path, remove_at};

impl Extraction<'_> {
    /// A hardlink entry named `raw` (split into `comps`) to `target`, both paths of the layer.
    pub(super) fn hardlink(
        &mut self,
        place: &Place<'_>,
        raw: &[u8],
        comps: &[&OsStr],
        target: Vec<u8>,
    ) -> Result<(), UnpackError> {
        let target_shown = String::from_utf8_lossy(&target).into_owned();
        // The error names the entry, not only its target.
        let tcomps = components(&target).map_err(|e| match e {
            UnpackError::DotDot { .. } => UnpackError::LinkDotDot {
                path: place.shown.clone(),
                target: target_shown.clone(),
            },
            other => other,
        })?;
        let missing = || UnpackError::HardlinkTarget {
            path: place.shown.clone(),
            target: target_shown.clone(),
        };
        let Some((&tname, tparent)) = tcomps.split_last() else {
            return Err(missing());
        };
        let tdir = match open_in_root(self.root, &relative_path(tparent), OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => Some(fd),
            Err(Errno::ENOENT | Errno::ENOTDIR) => None,
            Err(e) => return Err(place.error(e)),
        };
        let present = match &tdir {
            None => None,
            Some(t) => match fstatat(t.as_fd(), tname, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT),
                Err(Errno::ENOENT) => None,
                Err(e) => return Err(place.error(e)),
            },
        };
        let tdir = match (present, tdir) {
            (Some(SFlag::S_IFDIR), _) => return Err(missing()),
            // A whiteout in this layer hides the target.
            (Some(SFlag::S_IFCHR), _) if is_whiteout_at(self.root, &tcomps) => return Err(missing()),
            (Some(_), Some(t)) => t,
            // The same, where the whiteout is kept as a marker: what a layer links to does not depend on how
            // whiteouts are stored.
            _ if self
                .whited
                .contains(&relative_path(&tcomps).into_os_string().into_vec()) =>
            {
                return Err(missing())
            }
            _ => {
                // The target was laid down by a lower layer (legal, if rare): link it once those exist. This makes
                // the stored layer depend on the layers below it (see the store's keys).
                self.tracked.add(raw.len() + target.len())?;
                self.lower_links.push(LowerLink {
                    link: raw.to_vec(),
                    target,
                });
                return Ok(());
            }
        };
        if tcomps != comps {
            let pfd = place.parent.as_fd();
            remove_at(pfd, place.name).map_err(|e| place.error(e))?;
            linkat(tdir.as_fd(), tname, pfd, place.name, AtFlags::empty()).map_err(|e| place.error(e))?;
        }
        Ok(())
    }
}

/// Resolves hardlinks into lower layers for the layer unpacked at `dest`. `lowers` are the unpacked trees of the
/// layers below it, nearest first. The link is a real hardlink to the lower layer's file (same file system, so
/// the merged root shows one inode, as Docker's would); where the kernel refuses that (`protected_hardlinks` for
/// an unprivileged user), the file is copied.
pub fn link_from_lower(dest: &Path, lowers: &[PathBuf], links: &[LowerLink]) -> Result<(), UnpackError> {
    let root_fd = open_dir(dest).map_err(|source| UnpackError::Entry {
        path: dest.display().to_string(),
        source,
    })?;
    for l in links {
        let shown = String::from_utf8_lossy(&l.link).into_owned();
        let wrap = |source: io::Error| UnpackError::Entry {
            path: shown.clone(),
            source,
        };
        let missing = || UnpackError::HardlinkTarget {
            path: shown.clone(),
            target: String::from_utf8_lossy(&l.target).into_owned(),
        };
        let tcomps = components(&l.target)?;
        let lcomps = components(&l.link)?;
        let (Some((&tname, tparent)), Some((&lname, lparent))) = (tcomps.split_last(), lcomps.split_last()) else {
            return Err(missing());
        };
        let mut source = None;
        for lower in lowers {
            let lroot = open_dir(lower).map_err(wrap)?;
            let Ok(dir) = open_in_root(
                lroot.as_fd(),
                &relative_path(tparent),
                OFlag::O_PATH | OFlag::O_DIRECTORY,
            ) else {
                continue;
            };
            match fstatat(dir.as_fd(), tname, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                    if fmt == SFlag::S_IFDIR || (fmt == SFlag::S_IFCHR && st.st_rdev == 0) {
                        break; // a directory, or deleted by a whiteout: nothing to link
                    }
                    source = Some(dir);
                    break;
                }
                Err(_) => continue,
            }
        }
        let sdir = source.ok_or_else(missing)?;
        let pdir = create_dirs_in_root(root_fd.as_fd(), lparent).map_err(wrap)?;
        remove_at(pdir.as_fd(), lname).map_err(wrap)?;
        match linkat(sdir.as_fd(), tname, pdir.as_fd(), lname, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EPERM | Errno::EXDEV) => copy_file_at(sdir.as_fd(), tname, pdir.as_fd(), lname).map_err(wrap)?,
            Err(e) => return Err(wrap(e.into())),
        }
    }
    Ok(())
}
