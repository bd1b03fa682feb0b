//! Paths of the container's root file system opened, read, created and appended to from the host with every
//! symlink and `..` resolved inside that root: a hostile image never leads drun's writes or reads outside it.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::Path;

use crate::sys::read::{file_kind, read_regular_at};

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
