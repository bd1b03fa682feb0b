//! Copying a workflow's artifacts out of the container's project view, once every process of the container has
//! ended (`run::reap`).
//!
//! The view is what the container left, and the container is hostile: any directory on the way may have been
//! replaced by a symlink to a host path. So the copy works on file descriptors only: every component from the
//! project root down (the working directory included) is opened beneath the root with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`), the tree is walked with `openat`/`fstatat` on the
//! directories already opened, and nothing is ever re-resolved by path. Artifacts are data: setuid and setgid bits
//! are dropped, devices, FIFOs and sockets skipped, and sparse files keep their holes. The destination is written
//! the same way (new files only, no-follow), below the job's artifact directory.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, futimens, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, Gid, Uid};

/// Deeper trees are refused (each level holds two descriptors open).
pub(super) const MAX_DEPTH: usize = 200;

/// Why an artifact could not be copied out.
#[derive(Debug, thiserror::Error)]
pub enum CopyOutError {
    #[error("{0:?} is not a path below the project")]
    NotBelowProject(String),
    #[error("{0:?} is not a relative path")]
    NotRelative(String),
    #[error("cannot open the directory {path:?}")]
    OpenDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {path:?} in the container's view")]
    OpenBeneath {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("{0:?} is a symbolic link in the container; artifacts are not copied through links")]
    SymbolicLink(PathBuf),
    #[error("not found in the working directory after the run")]
    NotFound,
    #[error("cannot inspect it")]
    Inspect(#[source] Errno),
    #[error("cannot create the directory {path:?}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot replace {path:?}")]
    Replace {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy to {path:?}")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Copies `rel` (a path below the project view `root`, the working directory included) to `dest_dir/rel_dest`
/// (`rel_dest` relative, its parents created), handing what it creates to `owner`. Returns the number of files.
pub fn copy_artifact(
    root: &Path,
    rel: &str,
    dest_dir: &Path,
    rel_dest: &str,
    owner: Option<(u32, u32)>,
) -> Result<u64, CopyOutError> {
    let (src_parent, name) = split(rel).ok_or_else(|| CopyOutError::NotBelowProject(rel.into()))?;
    let (dst_parent, dst_name) = split(rel_dest).ok_or_else(|| CopyOutError::NotRelative(rel_dest.into()))?;
    let open_dir = |path: &Path| {
        open_dir_path(path).map_err(|source| CopyOutError::OpenDir {
            path: path.to_path_buf(),
            source,
        })
    };
    let root_fd = open_dir(root)?;
    let src = open_beneath(root_fd.as_fd(), &src_parent).map_err(|e| match e {
        Errno::ELOOP | Errno::EXDEV | Errno::ENOENT | Errno::ENOTDIR => why_not(root_fd.as_fd(), &src_parent),
        source => CopyOutError::OpenBeneath {
            path: src_parent.clone(),
            source,
        },
    })?;
    let st = match fstatat(src.as_fd(), name.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Err(CopyOutError::NotFound),
        Err(e) => return Err(CopyOutError::Inspect(e)),
    };
    if kind(&st) == SFlag::S_IFLNK {
        return Err(CopyOutError::SymbolicLink(rel.into()));
    }
    let dest = open_dir(dest_dir)?;
    let dparent = make_dirs_at(dest.as_fd(), &dst_parent, owner).map_err(|source| CopyOutError::CreateDir {
        path: dest_dir.join(&dst_parent),
        source,
    })?;
    crate::sys::at::remove_at(dparent.as_fd(), &dst_name).map_err(|source| CopyOutError::Replace {
        path: rel_dest.into(),
        source,
    })?;
    let mut files = 0;
    copy_entry(src.as_fd(), &name, dparent.as_fd(), &dst_name, owner, 0, &mut files).map_err(|source| {
        CopyOutError::Copy {
            path: dest_dir.join(rel_dest),
            source,
        }
    })?;
    Ok(files)
}

/// Why `rel` could not be opened beneath `root`: the first component that is a symlink, or is missing.
fn why_not(root: BorrowedFd<'_>, rel: &str) -> CopyOutError {
    let mut at = PathBuf::new();
    for c in Path::new(rel).components() {
        let Component::Normal(name) = c else { continue };
        at.push(name);
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV);
        match openat2(root, &at, how).and_then(|fd| fstat(fd.as_fd())) {
            Ok(st) if kind(&st) == SFlag::S_IFLNK => return CopyOutError::SymbolicLink(at),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    CopyOutError::NotFound
}

/// `a/b/c` → ("a/b", "c"); `c` → (".", "c"). None for an empty, absolute or `..` path.
fn split(rel: &str) -> Option<(String, OsString)> {
    let comps: Vec<&OsStr> = Path::new(rel)
        .components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let (last, parents) = comps.split_last()?;
    let parent = if parents.is_empty() {
        ".".to_string()
    } else {
        parents
            .iter()
            .map(|p| p.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    };
    Some((parent, last.to_os_string()))
}

pub(super) fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// A directory of drun's own (the project view's mount point, the job's artifact directory).
pub(super) fn open_dir_path(p: &Path) -> io::Result<OwnedFd> {
    Ok(crate::sys::safe_fs::open_dir_nofollow(p)?.into())
}

/// Opens the directory `rel` below `root` without following any symlink and without leaving `root` or its mount.
fn open_beneath(root: BorrowedFd<'_>, rel: &str) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    openat2(root, Path::new(rel), how)
}

/// Opens `name` in `dir` as what `st` said it was (same inode), never following a symlink, never blocking.
pub(super) fn reopen(dir: BorrowedFd<'_>, name: &OsStr, st: &FileStat, flags: OFlag) -> io::Result<OwnedFd> {
    let fd = openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    let now = fstat(fd.as_fd())?;
    if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
        return Err(io::Error::other("changed while being copied"));
    }
    Ok(fd)
}

/// `mkdir -p rel` below `dir`, each component created new or opened without following links.
fn make_dirs_at(dir: BorrowedFd<'_>, rel: &str, owner: Option<(u32, u32)>) -> io::Result<OwnedFd> {
    let mut at: OwnedFd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for c in Path::new(rel).components() {
        let Component::Normal(name) = c else { continue };
        let made = match mkdirat(at.as_fd(), name, Mode::from_bits_truncate(0o777)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(e.into()),
        };
        let next = openat(
            at.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        if made {
            fchmod(next.as_fd(), caller_mode(0o777))?;
            hand_over(next.as_fd(), owner);
        }
        at = next;
    }
    Ok(at)
}

pub(super) fn caller_mode(mode: u32) -> Mode {
    Mode::from_bits_truncate(crate::sys::safe_fs::for_caller(mode))
}

pub(super) fn hand_over(fd: BorrowedFd<'_>, owner: Option<(u32, u32)>) {
    if let Some((u, g)) = owner {
        let _ = fchown(fd, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)));
    }
}

/// The names in a directory (without `.` and `..`).
pub(super) fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // nix's Dir takes its descriptor: give it a duplicate, opened anew so that its offset is its own.
    let dup = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

fn copy_entry(
    sdir: BorrowedFd<'_>,
    name: &OsStr,
    ddir: BorrowedFd<'_>,
    dname: &OsStr,
    owner: Option<(u32, u32)>,
    depth: usize,
    files: &mut u64,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!("directories nested deeper than {MAX_DEPTH}")));
    }
    let st = fstatat(sdir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    // Artifacts are data: no setuid or setgid bits, whoever gets them, and no more access for others than the
    // caller's umask gives (a container cannot hand back world-writable files).
    let mode = caller_mode(st.st_mode & 0o1777);
    let times = (
        nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec),
        nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    );
    match kind(&st) {
        SFlag::S_IFDIR => {
            let src = reopen(sdir, name, &st, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
            mkdirat(ddir, dname, Mode::from_bits_truncate(0o700))?;
            let dst = openat(
                ddir,
                dname,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            for n in entries(src.as_fd())? {
                copy_entry(src.as_fd(), &n, dst.as_fd(), &n, owner, depth + 1, files)?;
            }
            hand_over(dst.as_fd(), owner);
            fchmod(dst.as_fd(), mode)?;
            let _ = futimens(dst.as_fd(), &times.0, &times.1);
        }
        SFlag::S_IFREG => {
            let src = File::from(reopen(sdir, name, &st, OFlag::O_RDONLY)?);
            let dst = File::from(openat(
                ddir,
                dname,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )?);
            crate::failpoint::hit("artifact-copying");
            copy_sparse(&src, &dst, u64::try_from(st.st_size).map_err(io::Error::other)?)?;
            hand_over(dst.as_fd(), owner);
            fchmod(dst.as_fd(), mode)?;
            let _ = futimens(dst.as_fd(), &times.0, &times.1);
            *files += 1;
        }
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(sdir, name)?;
            nix::unistd::symlinkat(target.as_os_str(), ddir, dname)?;
            if let Some((u, g)) = owner {
                let _ = fchownat(
                    ddir,
                    dname,
                    Some(Uid::from_raw(u)),
                    Some(Gid::from_raw(g)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                );
            }
            let _ = nix::sys::stat::utimensat(
                ddir,
                dname,
                &times.0,
                &times.1,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
        // Devices, sockets and FIFOs are not outputs.
        _ => {}
    }
    Ok(())
}

/// Copies `len` bytes keeping holes: only the data regions (SEEK_DATA/SEEK_HOLE) are read and written, and the
/// size is set at the end, so a sparse file stays sparse.
fn copy_sparse(src: &File, dst: &File, len: u64) -> io::Result<()> {
    // Offsets are off_t (i64); a length beyond it cannot be a real file's.
    let end_of_file = i64::try_from(len).map_err(|_| io::Error::other("the file is too large to copy"))?;
    // Non-negative offsets from lseek, as u64 for the positional reads and writes.
    let unsigned = |offset: i64| u64::try_from(offset).map_err(|_| io::Error::other("negative file offset"));
    let (sfd, mut buf) = (src.as_raw_fd(), vec![0u8; 1 << 20]);
    let mut pos: i64 = 0;
    while pos < end_of_file {
        // SAFETY: lseek on a descriptor we own; a negative result is an error, checked below.
        let data = unsafe { libc::lseek(sfd, pos, libc::SEEK_DATA) };
        if data < 0 {
            match io::Error::last_os_error().raw_os_error() {
                // No data after `pos`: the rest is a hole.
                Some(libc::ENXIO) => break,
                // A file system without SEEK_DATA: copy everything.
                Some(libc::EINVAL) => {
                    copy_range(src, dst, 0, len, &mut buf)?;
                    break;
                }
                _ => return Err(io::Error::last_os_error()),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(sfd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { end_of_file } else { hole.min(end_of_file) };
        copy_range(src, dst, unsigned(data)?, unsigned(end)?, &mut buf)?;
        pos = end;
    }
    dst.set_len(len)?;
    Ok(())
}

fn copy_range(src: &File, dst: &File, from: u64, to: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut at = from;
    while at < to {
        let want = usize::try_from(to - at).map_or(buf.len(), |left| left.min(buf.len()));
        let n = src.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn symlinks_on_the_way_are_refused_and_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let (view, out, secret) = (t.path().join("view"), t.path().join("out"), t.path().join("secret"));
        for d in [&view, &out, &secret] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(secret.join("key"), "host secret").unwrap();
        std::os::unix::fs::symlink(&secret, view.join("src")).unwrap();
        std::fs::create_dir(view.join("wd")).unwrap();
        std::os::unix::fs::symlink(&secret, view.join("wd/out")).unwrap();
        std::os::unix::fs::symlink("../src", view.join("wd/rel")).unwrap();
        for (rel, want) in [
            ("src/key", "symbolic link"),
            ("wd/out", "symbolic link"),
            ("wd/rel/key", "symbolic link"),
        ] {
            let e = copy_artifact(&view, rel, &out, "a", None).unwrap_err().to_string();
            assert!(e.contains(want), "{rel}: {e}");
        }
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn setuid_bits_are_dropped_and_holes_kept() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (view, out) = (t.path().join("view"), t.path().join("out"));
        std::fs::create_dir_all(view.join("wd/res/sub")).unwrap();
        std::fs::create_dir(&out).unwrap();
        std::fs::write(view.join("wd/res/tool"), "x").unwrap();
        std::fs::set_permissions(view.join("wd/res/tool"), std::fs::Permissions::from_mode(0o6755)).unwrap();
        let f = File::create(view.join("wd/res/sub/sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_all_at_end();
        std::os::unix::fs::symlink("tool", view.join("wd/res/link")).unwrap();
        nix::unistd::mkfifo(&view.join("wd/res/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(copy_artifact(&view, "wd/res", &out, "x/res", None).unwrap(), 2);
        let tool = std::fs::metadata(out.join("x/res/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o755);
        let sparse = std::fs::metadata(out.join("x/res/sub/sparse")).unwrap();
        assert_eq!(sparse.len(), (1 << 30) + 1);
        assert!(
            sparse.blocks() < 1024,
            "the hole was filled: {} blocks",
            sparse.blocks()
        );
        assert_eq!(std::fs::read_link(out.join("x/res/link")).unwrap(), Path::new("tool"));
        assert!(!out.join("x/res/fifo").exists());
    }

    trait EndByte {
        fn write_all_at_end(&self);
    }
    impl EndByte for File {
        fn write_all_at_end(&self) {
            use std::os::unix::fs::FileExt;
            self.write_all_at(b"e", 1 << 30).unwrap();
        }
    }
}
