//! The file-system primitives drun uses on paths that other users, images or containers may control: created
//! new (never through a name someone planted), no-follow, private by default, and read with a bound.
//!
//! Clippy's `disallowed_methods` (clippy.toml) forbids the path-following helpers of `std::fs` everywhere else:
//! a new call site has to come here, or say with an `#[allow]` and a comment why its path is drun's own.
#![allow(clippy::disallowed_methods)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The umask drun works under: everything it creates without an explicit mode is its owner's alone.
pub const PRIVATE_UMASK: u32 = 0o077;

/// The umask of whoever started drun, for what is made for them (artifacts, logs, `--cidfile`).
static CALLER_UMASK: AtomicU32 = AtomicU32::new(0o022);

/// Sets drun's own umask (called first thing in `main`) and remembers the caller's.
pub fn set_private_umask() {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(PRIVATE_UMASK));
    CALLER_UMASK.store(old.bits(), Ordering::Relaxed);
}

/// The caller's umask (0o022 if drun never set its own, as in unit tests).
pub fn caller_umask() -> u32 {
    CALLER_UMASK.load(Ordering::Relaxed)
}

/// `mode` as the caller's umask leaves it: for what drun makes for them (0o666 for files, 0o777 for directories).
pub fn for_caller(mode: u32) -> u32 {
    mode & !caller_umask()
}

/// Runs `f` under `mask`, then puts the previous umask back. The umask is per process: only for moments when
/// no other thread of drun creates files (the container's creation, which must see Docker's 0022).
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    let out = f();
    nix::sys::stat::umask(old);
    out
}

/// Creates the directory `path` (not its parents) with exactly `mode`, whatever the umask; an existing real
/// directory is left as it is (`Ok(false)`), a symlink or other file is an error.
pub fn create_dir_mode(path: &Path, mode: u32) -> io::Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {
            // mkdir(2) masks the mode with the umask; set it on the directory opened without following links.
            let dir = open_dir_nofollow(path)?;
            dir.set_permissions(std::fs::Permissions::from_mode(mode))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            open_dir_nofollow(path)?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// `mkdir -p` whose new directories get exactly `mode`, whatever the umask (cgroup directories, which monitoring
/// tools of other users read as they do Docker's).
pub fn create_dir_all_mode(path: &Path, mode: u32) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dir_all_mode(parent, mode)?;
    }
    create_dir_mode(path, mode).map(drop)
}

/// What lets someone whose uid `trusted_owner` does not accept change the entries of a directory with metadata
/// `m` (rename or replace them): another owner, or write access for group or others. A sticky directory (/tmp) is
/// fine when `sticky_ok`: only an entry's owner may rename it there. None when nothing does.
pub fn open_to_others(
    m: &std::fs::Metadata,
    trusted_owner: impl Fn(u32) -> bool,
    sticky_ok: bool,
) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    if !trusted_owner(m.uid()) {
        return Some("belongs to someone else");
    }
    let sticky = m.mode() & 0o1000 != 0;
    (m.mode() & 0o022 != 0 && !(sticky_ok && sticky)).then_some("others may write to")
}

/// Whether someone but root and `caller` could replace what the canonical `path` (no symlinks) names, by owning it
/// or a directory on the way to it, or by writing to such a directory (a sticky one is fine: its entries below are
/// checked for their owner): the first such component, and why. For a path that is checked, then handed on by name
/// (libcontainer canonicalizes a bind mount's source and mounts it by path, so a descriptor cannot be handed on),
/// this is what keeps the name meaning what was checked.
pub fn replaceable_by_others(path: &Path, caller: u32) -> Option<(std::path::PathBuf, &'static str)> {
    use std::os::unix::fs::MetadataExt;
    let trusted = |uid: u32| uid == 0 || uid == caller;
    for p in path.ancestors() {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return Some((p.to_path_buf(), "cannot be examined"));
        };
        let why = if p == path && !m.is_dir() {
            (!trusted(m.uid())).then_some("belongs to someone else")
        } else {
            open_to_others(&m, trusted, true)
        };
        if let Some(why) = why {
            return Some((p.to_path_buf(), why));
        }
    }
    None
}

/// Opens a directory, refusing a symlink in its place.
pub fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates `path` new (O_EXCL, never through a planted name or symlink) with exactly `mode`.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Opens `path` for writing, creating it with `mode` if missing; refuses a symlink at the last component and
/// anything that is not a regular file (a FIFO planted there would block).
pub fn open_or_create(path: &Path, mode: u32) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .mode(mode)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other(format!("{path:?} is not a regular file")));
    }
    Ok(f)
}

/// Copies the regular file `src` to a new file `dst` (mode 0600 until the caller sets it), following a symlink at
/// neither end; reflinked or copied in the kernel where the file system can.
pub fn copy_file_nofollow(src: &Path, dst: &Path) -> io::Result<u64> {
    let mut from = open_regular(src, false)?;
    let mut to = create_new(dst, 0o600)?;
    io::copy(&mut from, &mut to)
}

/// Sets the mode of `path` itself: through an `O_PATH` descriptor, so a symlink in its place is left alone
/// (symlinks have no mode of their own) and never followed; device nodes and FIFOs are not opened.
pub fn set_mode_nofollow(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if f.metadata()?.file_type().is_symlink() {
        return Ok(());
    }
    // chmod(2) through the descriptor's /proc entry: fchmod(2) refuses O_PATH descriptors.
    std::fs::set_permissions(
        format!("/proc/self/fd/{}", f.as_raw_fd()),
        std::fs::Permissions::from_mode(mode),
    )
}

/// Writes `bytes` to a new file `path` with exactly `mode`.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    create_new(path, mode)?.write_all(bytes)
}

/// Replaces `path` atomically: `bytes` go to a new temporary file beside it (mode `mode`), renamed over it.
pub fn write_replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{path:?} has no file name")))?;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = write_new(&tmp, bytes, mode).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Opens `path` for reading only if it is a regular file. The open does not block (on a FIFO it would wait for
/// a writer forever) and, unless `follow`, does not follow a symbolic link as the last component; the type is
/// checked on the open file, so it cannot change between the check and the reads.
pub fn open_regular(path: &Path, follow: bool) -> io::Result<File> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = OpenOptions::new().read(true).custom_flags(flags).open(path)?;
    let ft = f.metadata()?.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{kind}, where a regular file was expected"),
        ));
    }
    // Back to ordinary blocking reads (it makes no difference for a regular file, but nothing later is surprised).
    let fd = f.as_fd();
    let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let fl = nix::fcntl::OFlag::from_bits_retain(fl) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(io::Error::from)?;
    Ok(f)
}

/// Reads a regular file of at most `limit` bytes, never following a symlink at its last component and never
/// blocking on a FIFO or device planted in its place.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = open_regular(path, false).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidInput => io::Error::other(format!("{path:?}: {e}")),
        _ => e,
    })?;
    read_file_bounded(f, limit, path)
}

/// Reads an open file that must be regular and at most `limit` bytes long (`path` names it in errors).
pub fn read_file_bounded(f: File, limit: u64, path: &Path) -> io::Result<Vec<u8>> {
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{path:?} is not a regular file")));
    }
    if meta.len() > limit {
        return Err(io::Error::other(format!(
            "{path:?} is {} bytes, more than the {limit} drun reads",
            meta.len()
        )));
    }
    read_capped(f, limit, path)
}

/// Reads `r` to its end, but not past `limit` bytes (`path` names it in the error).
fn read_capped(r: impl Read, limit: u64, path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if u64::try_from(buf.len()).map_or(true, |n| n > limit) {
        return Err(io::Error::other(format!(
            "{path:?} is longer than the {limit} bytes drun reads"
        )));
    }
    Ok(buf)
}

/// Reads a file the caller named on the command line (`--env-file`, a workflow file, a seccomp profile): a symlink
/// they chose is followed, and at most `limit` bytes are read: of a regular file, or of a stream they named
/// (`/dev/null`, a pipe), read to its end.
pub fn read_user_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if meta.is_file() {
        return read_file_bounded(f, limit, path);
    }
    if meta.is_dir() {
        return Err(io::Error::other(format!("{path:?} is a directory")));
    }
    // `DRUN_CONFIG=/dev/null`, `--env-file <(…)`: the caller named a stream, which is read to its end as `cat`
    // would (blocking), still bounded.
    let _ = nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()));
    read_capped(f, limit, path)
}

/// Reads a file the kernel or the host's administrator provides (`/proc`, `/sys`, cgroupfs, `/etc/subuid`,
/// `/etc/resolv.conf`), at most 4 MiB of it: not hostile, but bounded all the same. Kernel files report a
/// size of 0, so the size is not checked first.
pub fn read_system(path: impl AsRef<Path>) -> io::Result<String> {
    const LIMIT: u64 = 4 << 20;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path.as_ref())?;
    if f.metadata()?.file_type().is_fifo() {
        return Err(io::Error::other(format!("{:?} is a FIFO", path.as_ref())));
    }
    let mut s = String::new();
    f.take(LIMIT).read_to_string(&mut s)?;
    Ok(s)
}

/// Writes `bytes` to an existing kernel file (cgroupfs, `/proc/self/uid_map`), never creating one.
pub fn write_system(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path.as_ref())?
        .write_all(bytes.as_ref())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_name_in_a_directory_others_may_write_to_is_replaceable() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("node");
        std::fs::write(&file, "").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(replaceable_by_others(&file, me), None);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            replaceable_by_others(&file, me),
            Some((dir.clone(), "others may write to"))
        );
        // Sticky (as /tmp): only the entry's owner may replace it, and that is the caller.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(replaceable_by_others(&file, me), None);
        // Someone else's file there could be swapped by them.
        if me == 0 {
            std::os::unix::fs::chown(&file, Some(4242), None).unwrap();
            assert_eq!(
                replaceable_by_others(&file, 0),
                Some((file.clone(), "belongs to someone else"))
            );
        }
    }

    #[test]
    fn modes_are_exact_and_names_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let _ = with_umask(0o077, || create_dir_mode(&t.path().join("d"), 0o755).unwrap());
        assert_eq!(std::fs::metadata(t.path().join("d")).unwrap().mode() & 0o7777, 0o755);
        with_umask(0o077, || write_new(&t.path().join("f"), b"x", 0o644)).unwrap();
        assert_eq!(std::fs::metadata(t.path().join("f")).unwrap().mode() & 0o7777, 0o644);
        std::fs::write(t.path().join("victim"), "v").unwrap();
        std::os::unix::fs::symlink(t.path().join("victim"), t.path().join("link")).unwrap();
        assert!(write_new(&t.path().join("link"), b"evil", 0o600).is_err());
        assert!(open_or_create(&t.path().join("link"), 0o600).is_err());
        assert!(read_bounded(&t.path().join("link"), 10).is_err());
        assert_eq!(std::fs::read_to_string(t.path().join("victim")).unwrap(), "v");
        std::os::unix::fs::symlink(t.path(), t.path().join("dirlink")).unwrap();
        assert!(create_dir_mode(&t.path().join("dirlink"), 0o700).is_err());
    }

    #[test]
    fn reads_are_bounded_and_never_block() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_bounded(&fifo, 10).is_err());
        assert!(read_bounded(Path::new("/dev/zero"), 10).is_err());
        std::fs::write(t.path().join("big"), vec![b'x'; 11]).unwrap();
        assert!(read_bounded(&t.path().join("big"), 10).is_err());
        assert_eq!(read_bounded(&t.path().join("big"), 11).unwrap().len(), 11);
    }
}
