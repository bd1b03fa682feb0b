//! The mounts of the ld cache refresh, in its private mount namespace: remounting a bind mount with
//! `nosuid,nodev` (keeping the flags the kernel locks) and the host's driver libraries bind-mounted read-only at
//! their container paths, each read-only before anything in the root is written. Never follows an image's
//! symlink: a mount point is resolved inside the root and an image's file there is replaced, never opened.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fstatat, Mode};

use super::{components, LdCacheError};
use crate::sys::at::create_dirs_in_root;

/// The mount flags of the mount `fd` is on that an unprivileged remount must keep (the kernel locks them when
/// the mount came from a more privileged namespace), plus `nosuid` and `nodev`.
fn kept_flags(fd: BorrowedFd<'_>) -> Result<MsFlags, Errno> {
    use nix::sys::statvfs::FsFlags;
    let have = nix::sys::statvfs::fstatvfs(fd)?.flags();
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(st) {
            flags |= ms;
        }
    }
    Ok(flags)
}

/// Remounts the bind mount whose root `fd` is with `extra` flags (and nosuid, nodev), keeping its locked ones.
pub(super) fn remount(fd: BorrowedFd<'_>, extra: MsFlags) -> Result<(), Errno> {
    let flags = kept_flags(fd)? | extra | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    let via = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(None::<&str>, via.as_str(), None::<&str>, flags, None::<&str>)
}

/// Makes `name` in `parent` a regular file to mount over: an existing regular file is used as it is; a symlink,
/// FIFO, device or socket the image has there is replaced (never opened), a directory refused.
fn mount_point(parent: BorrowedFd<'_>, name: &OsStr, ctr: &str) -> Result<(), LdCacheError> {
    let failed = |step| {
        move |e: Errno| LdCacheError::Library {
            step,
            container: ctr.to_string(),
            source: e.into(),
        }
    };
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => return Ok(()),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            return Err(LdCacheError::LibraryOverDirectory {
                container: ctr.to_string(),
            });
        }
        Ok(_) => nix::unistd::unlinkat(parent, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(failed("remove the image's file"))?,
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(failed("inspect the mount point")(e)),
    }
    nix::fcntl::openat(
        parent,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map(drop)
    .map_err(failed("create the mount point"))
}

/// Bind-mounts each library (host path, container path) at its container path below `root`, read-only, and
/// returns the container directories that hold them, in order, once each.
pub(super) fn mount_libraries_read_only(
    root: BorrowedFd<'_>,
    libs: &[(PathBuf, String)],
) -> Result<Vec<String>, LdCacheError> {
    let mut dirs: Vec<String> = Vec::new();
    for (host, ctr) in libs {
        let c = components(ctr);
        let Some((name, parents)) = c.split_last() else {
            continue;
        };
        let failed = |step| {
            move |source: io::Error| LdCacheError::Library {
                step,
                container: ctr.clone(),
                source,
            }
        };
        let parent = create_dirs_in_root(root, parents).map_err(failed("resolve the directory"))?;
        mount_point(parent.as_fd(), name, ctr)?;
        let open = || -> Result<OwnedFd, LdCacheError> {
            nix::fcntl::openat(
                &parent,
                *name,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| failed("open the mount point")(e.into()))
        };
        let target = open()?;
        let via = format!("/proc/self/fd/{}", target.as_raw_fd());
        mount(
            Some(host.as_path()),
            via.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| failed("bind-mount the host's library")(e.into()))?;
        // Looked up again, the name is the new mount's root.
        let mounted = open()?;
        remount(mounted.as_fd(), MsFlags::MS_RDONLY).map_err(|e| failed("remount read-only")(e.into()))?;
        let read_only = nix::sys::statvfs::fstatvfs(&mounted)
            .is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
        if !read_only {
            return Err(LdCacheError::StillWritable { container: ctr.clone() });
        }
        let dir = format!(
            "/{}",
            parents
                .iter()
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        );
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    Ok(dirs)
}
