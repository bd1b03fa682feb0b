//! Reading files of an image's or a container's root from a descriptor of that root (never through the host's
//! path walk), and asking whether a file carries an extended attribute. Never follows a symlink out of the root,
//! never blocks on a FIFO, never reads without a bound.

use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::FileStat;

use crate::sys::at::open_in_root;

/// What kind of file `mode` (an `st_mode`) is, in words, for errors about files that are not regular.
pub fn file_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symbolic link",
        _ => "an unknown kind of file",
    }
}

/// Reads the regular file `path` below the directory `root` (symlinks and ".." resolved inside it, never
/// crossing a mount point): `Ok(None)` when it does not exist. Anything but a regular file (a FIFO would block the
/// read forever, a device like /dev/zero never end it) and anything larger than `cap` bytes is an error that says
/// so. The type is checked on an `O_PATH` descriptor, before anything is opened for reading (opening a device runs
/// its driver), and again on the descriptor read from, which must be the same file.
pub fn read_regular_at(root: BorrowedFd<'_>, path: &str, cap: u64) -> io::Result<Option<Vec<u8>>> {
    let rel = Path::new(path.trim_start_matches('/'));
    let open = |flags| open_in_root(root, rel, flags).map_err(io::Error::from);
    let regular = |st: &FileStat| -> io::Result<()> {
        if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is {}, not a regular file", file_kind(st.st_mode)),
        ))
    };
    let probe = match open(OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let before = nix::sys::stat::fstat(&probe).map_err(io::Error::from)?;
    regular(&before)?;
    // O_NONBLOCK: should the file have been swapped for a FIFO since, the open does not wait for a writer.
    let fd = open(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)?;
    let st = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
    regular(&st)?;
    if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino) {
        return Err(io::Error::other("it changed while drun opened it"));
    }
    let too_large = || io::Error::new(io::ErrorKind::InvalidData, format!("it is larger than {cap} bytes"));
    // A regular file's size is never negative; one that does not fit is larger than any cap.
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > cap {
        return Err(too_large());
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    std::fs::File::from(fd).take(cap + 1).read_to_end(&mut data)?;
    if u64::try_from(data.len()).unwrap_or(u64::MAX) > cap {
        return Err(too_large());
    }
    Ok(Some(data))
}

/// Whether `path` itself (not what a symlink points to) has the extended attribute `name`.
pub fn xattr_present(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(path), Ok(name)) = (
        std::ffi::CString::new(path.as_os_str().as_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated and outlive the call; a null buffer with size 0 only asks for the
    // value's size, so the kernel writes nothing.
    unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn reads_regular_files_inside_the_root_only() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join("etc/conf"), "inside\n").unwrap();
        // A symlink out of the root resolves inside it.
        std::os::unix::fs::symlink("/etc/conf", t.path().join("link")).unwrap();
        nix::unistd::mkfifo(&t.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let root = crate::sys::safe_fs::open_dir_nofollow(t.path()).unwrap();
        let root = root.as_fd();
        assert_eq!(read_regular_at(root, "/etc/conf", 100).unwrap().unwrap(), b"inside\n");
        assert_eq!(read_regular_at(root, "link", 100).unwrap().unwrap(), b"inside\n");
        assert!(read_regular_at(root, "/missing", 100).unwrap().is_none());
        let e = read_regular_at(root, "fifo", 100).unwrap_err();
        assert!(e.to_string().contains("it is a FIFO, not a regular file"), "{e}");
        let e = read_regular_at(root, "/etc/conf", 3).unwrap_err();
        assert!(e.to_string().contains("larger than 3 bytes"), "{e}");
        assert!(read_regular_at(root, "/etc", 100).is_err());
    }

    #[test]
    fn a_missing_xattr_is_absent() {
        let t = tempfile::tempdir().unwrap();
        assert!(!xattr_present(t.path(), "security.capability"));
        assert!(!xattr_present(&t.path().join("missing"), "user.x"));
    }
}
