//! File primitives relative to a directory descriptor (`openat2`, `*at` calls): the only way drun writes into a
//! tree that an image or a container controls (a layer being unpacked, a container's root file system).
//!
//! # Contract
//!
//! Every function here takes an anchor, a directory descriptor, and works on what lies below it; none ever
//! reaches a file outside the anchor, whatever the tree holds, and none follows a symlink it did not resolve
//! itself inside the anchor:
//!
//! - A path below an anchor is resolved by `open_in_root` with `RESOLVE_IN_ROOT`: symlinks and `..` are resolved
//!   as if the anchor were `/` (an absolute symlink target means the anchor), magic links (`/proc/self/fd/…`) are
//!   refused and no mount point is crossed. This needs Linux 5.6.
//! - A `name` argument is one path component (no `/`; not `.` or `..`; callers split and check names first, as
//!   the unpacker's entry names are): its final component is never followed (`O_NOFOLLOW`,
//!   `AT_SYMLINK_NOFOLLOW`), and a file created is new (`O_EXCL`), never one someone placed under that name (a
//!   directory that is already there is used as it is, opened inside the anchor like any path).
//! - Every descriptor opened here is `O_CLOEXEC`: none leaks into a container's process or a helper program.
//! - A directory the tree renames or replaces while drun works cannot redirect a call: calls go through the
//!   descriptor of the directory, never through its path again.
//!
//! The one `unsafe` call (`set_xattr`) passes the kernel a descriptor borrowed for the call, a NUL-terminated
//! name and a buffer whose pointer and length come from one slice.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};

/// An `O_PATH` descriptor of a directory, the anchor for `*at` calls and `open_in_root`. The path is drun's
/// own (a layer's staging directory, a container's root): it is followed like any path.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Opens `path` below `root` without ever leaving it: symlinks and ".." are resolved as if `root` were "/".
pub(crate) fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV);
    openat2(root, path, how)
}

/// The relative path of `components` below an anchor (`.` for none), as `open_in_root` takes it.
pub(crate) fn relative_path(components: &[&OsStr]) -> PathBuf {
    if components.is_empty() {
        return PathBuf::from(".");
    }
    components.iter().collect()
}

/// Opens the directory `components` below `root` (an `O_PATH` descriptor), creating the directories that are
/// missing, mode 0755 whatever drun's (private) umask: the implied directories of a layer, or a working
/// directory.
pub(crate) fn create_dirs_in_root(root: BorrowedFd<'_>, components: &[&OsStr]) -> io::Result<OwnedFd> {
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    match open_in_root(root, &relative_path(components), dir_flags) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let mut parent = open_in_root(root, Path::new("."), dir_flags)?;
    for i in 1..=components.len() {
        let path = relative_path(&components[..i]);
        parent = match open_in_root(root, &path, dir_flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let made = match mkdirat(parent.as_fd(), components[i - 1], Mode::from_bits_truncate(0o755)) {
                    Ok(()) => true,
                    Err(Errno::EEXIST) => false,
                    Err(e) => return Err(e.into()),
                };
                if made {
                    let new = nix::fcntl::openat(
                        parent.as_fd(),
                        components[i - 1],
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )?;
                    fchmod(new.as_fd(), Mode::from_bits_truncate(0o755))?;
                }
                open_in_root(root, &path, dir_flags)?
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(parent)
}

/// Removes `name` in `dir`, recursively if it is a directory; nothing there is fine. Never follows symlinks.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        let fd = nix::fcntl::openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut d = nix::dir::Dir::from_fd(fd)?;
        let names: Vec<CString> = d
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        for n in names {
            remove_at(d.as_fd(), OsStr::from_bytes(n.as_bytes()))?;
        }
        unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(io::Error::from)
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
    }
}

/// Whether `name` in `dir` is a directory (not a symlink to one).
pub(crate) fn is_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// Creates `name` in `dir` as a new, private (0600) file open for writing; never follows or reuses an existing
/// entry.
pub(crate) fn create_new_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o600))
        .map(File::from)
        .map_err(io::Error::from)
}

/// Sets the owner of `name` in `dir` without following a symlink.
pub(crate) fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> Result<(), Errno> {
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// Sets the extended attribute `name` of the open file `fd` to `value`.
pub(crate) fn set_xattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "xattr name with NUL"))?;
    // SAFETY: `fd` is borrowed, so open for the whole call; `cname` is NUL-terminated and outlives the call;
    // `value`'s pointer and length come from one live slice, which the kernel only reads.
    let rc = unsafe { libc::fsetxattr(fd.as_raw_fd(), cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copies the regular file `sname` in `sdir` to the new file `dname` in `ddir`, with its mode and (whole-second)
/// mtime; neither end is followed if it is a symlink.
pub(crate) fn copy_file_at(sdir: BorrowedFd<'_>, sname: &OsStr, ddir: BorrowedFd<'_>, dname: &OsStr) -> io::Result<()> {
    let src = nix::fcntl::openat(
        sdir,
        sname,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut src = File::from(src);
    let meta = src.metadata()?;
    let mut dst = create_new_at(ddir, dname)?;
    io::copy(&mut src, &mut dst)?;
    fchmod(dst.as_fd(), Mode::from_bits_truncate(meta.mode() & 0o7777))?;
    let t = TimeSpec::new(meta.mtime(), 0);
    futimens(dst.as_fd(), &t, &t).map_err(io::Error::from)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_below_an_anchor_never_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(dir.path().join("outside"), "x").unwrap();
        symlink("../outside", root.join("up")).unwrap();
        symlink(dir.path().join("outside"), root.join("abs")).unwrap();
        symlink(dir.path(), root.join("escape")).unwrap();
        let anchor = open_dir(&root).unwrap();
        let fd = anchor.as_fd();
        // ".." stops at the anchor and an absolute target means the anchor: neither finds the file outside.
        assert_eq!(
            open_in_root(fd, Path::new("up"), OFlag::O_RDONLY).unwrap_err(),
            Errno::ENOENT
        );
        assert_eq!(
            open_in_root(fd, Path::new("abs"), OFlag::O_RDONLY).unwrap_err(),
            Errno::ENOENT
        );
        // Creating directories through a symlink to the outside creates nothing outside.
        assert!(create_dirs_in_root(fd, &[OsStr::new("escape"), OsStr::new("new")]).is_err());
        assert!(!dir.path().join("new").exists());
        let made = create_dirs_in_root(fd, &[OsStr::new("a"), OsStr::new("b")]).unwrap();
        assert!(is_dir_at(made.as_fd(), OsStr::new(".")) && root.join("a/b").is_dir());
        // Removing a symlink removes the link, never what it points to; removing a tree removes all of it.
        remove_at(fd, OsStr::new("escape")).unwrap();
        remove_at(fd, OsStr::new("a")).unwrap();
        remove_at(fd, OsStr::new("missing")).unwrap();
        assert!(dir.path().join("outside").is_file() && !root.join("a").exists());
        assert!(std::fs::symlink_metadata(root.join("escape")).is_err());
    }

    #[test]
    fn new_files_are_never_reused_or_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), "x").unwrap();
        symlink(dir.path().join("target"), dir.path().join("link")).unwrap();
        let anchor = open_dir(dir.path()).unwrap();
        assert!(create_new_at(anchor.as_fd(), OsStr::new("link")).is_err());
        assert!(create_new_at(anchor.as_fd(), OsStr::new("target")).is_err());
        create_new_at(anchor.as_fd(), OsStr::new("new")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("target")).unwrap(), "x");
    }
}
