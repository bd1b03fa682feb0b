//! Making a mounted artifact directory safe to hand over once its container has ended: the container wrote
//! there directly, as root. Walks on file descriptors, as [`super::copy_out`] does; never follows a link.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::{fchmod, fstatat, SFlag};
use nix::unistd::{fchownat, Gid, Uid};

use super::copy_out::{caller_mode, entries, hand_over, kind, open_dir_path, reopen, MAX_DEPTH};

/// Makes what a container left in a mounted artifact directory `dir` (a host directory it wrote to directly) safe
/// to hand over, once every process of the container has ended: setuid/setgid bits and file capabilities are
/// removed, devices, FIFOs and sockets deleted, modes limited by the caller's umask, and everything given to
/// `owner`. Walks on descriptors, like the copy. Returns the number of files.
pub fn sanitize_tree(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<u64> {
    let top = open_dir_path(dir)?;
    let mut files = 0;
    sanitize_dir(top.as_fd(), owner, 0, &mut files)?;
    hand_over(top.as_fd(), owner);
    fchmod(top.as_fd(), caller_mode(0o777))?;
    Ok(files)
}

fn sanitize_dir(dir: BorrowedFd<'_>, owner: Option<(u32, u32)>, depth: usize, files: &mut u64) -> io::Result<()> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!("directories nested deeper than {MAX_DEPTH}")));
    }
    for name in entries(dir)? {
        let st = fstatat(dir, name.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let mode = caller_mode(st.st_mode & 0o1777);
        match kind(&st) {
            SFlag::S_IFDIR => {
                let fd = reopen(dir, &name, &st, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
                sanitize_dir(fd.as_fd(), owner, depth + 1, files)?;
                hand_over(fd.as_fd(), owner);
                fchmod(fd.as_fd(), mode)?;
            }
            SFlag::S_IFREG => {
                let fd = reopen(dir, &name, &st, OFlag::O_RDONLY)?;
                // SAFETY: the name is a NUL-terminated literal and fd a descriptor we own; ENODATA (no
                // capabilities) is the usual answer and ignored.
                unsafe { libc::fremovexattr(fd.as_raw_fd(), c"security.capability".as_ptr()) };
                hand_over(fd.as_fd(), owner);
                fchmod(fd.as_fd(), mode)?;
                *files += 1;
            }
            SFlag::S_IFLNK => {
                if let Some((u, g)) = owner {
                    let _ = fchownat(
                        dir,
                        name.as_os_str(),
                        Some(Uid::from_raw(u)),
                        Some(Gid::from_raw(g)),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    );
                }
            }
            // Devices, sockets and FIFOs are not outputs, and a device node is a way into the host.
            _ => unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)?,
        }
    }
    Ok(())
}
