//! The files of the ld cache refresh in the container's root: the ld.so configuration naming the libraries'
//! directories, and the `.so` development links. Every write is relative to the root's descriptor, resolved
//! inside it, and replaces a symlink instead of following it.

use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use super::{components, LdCacheError};
use crate::sys::at::{create_dirs_in_root, open_in_root};

const CONF_DIR: &str = "/etc/ld.so.conf.d";
const CONF_NAME: &str = "000-drun-nvidia.conf";
/// The most of the image's `/etc/ld.so.conf` drun reads (a real one is a few lines).
const LD_SO_CONF_CAP: u64 = 1 << 20;

/// Writes `data` to `path` of the root `root` (resolved inside it, missing directories created) without
/// following a symlink at `path`: written under a fresh name, then renamed over whatever `path` was.
fn write_in_root(root: BorrowedFd<'_>, path: &str, data: &[u8]) -> io::Result<()> {
    let c = components(path);
    let Some((name, parents)) = c.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"));
    };
    let parent = create_dirs_in_root(root, parents)?;
    let tmp = format!(".{}.drun-{}", name.to_string_lossy(), std::process::id());
    let _ = nix::unistd::unlinkat(&parent, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    let fd = nix::fcntl::openat(
        &parent,
        tmp.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    let written = std::fs::File::from(fd)
        .write_all(data)
        .and_then(|()| nix::fcntl::renameat(&parent, tmp.as_str(), &parent, *name).map_err(io::Error::from));
    if written.is_err() {
        let _ = nix::unistd::unlinkat(&parent, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// Names `dirs` (container paths) in the image's ld.so configuration: in `/etc/ld.so.conf.d/000-drun-nvidia.conf`,
/// with `/etc/ld.so.conf` made to include that directory if it does not; or, where the image's
/// `/etc/ld.so.conf.d` cannot take the file, in `/etc/ld.so.conf` itself.
pub(super) fn list_library_dirs(root: BorrowedFd<'_>, dirs: &[String]) -> Result<(), LdCacheError> {
    let listed = dirs.join("\n") + "\n";
    let conf_d_file = format!("{CONF_DIR}/{CONF_NAME}");
    // An image whose /etc/ld.so.conf.d is no directory (a symlink to nothing or out of the root, a file) or has
    // one of drun's file's name gets the directories in /etc/ld.so.conf itself.
    let in_conf_d = match write_in_root(root, &conf_d_file, listed.as_bytes()) {
        Ok(()) => true,
        Err(e)
            if e.raw_os_error().map(Errno::from_raw).is_some_and(|errno| {
                matches!(
                    errno,
                    Errno::ENOENT | Errno::ENOTDIR | Errno::EEXIST | Errno::ELOOP | Errno::EXDEV | Errno::EISDIR
                )
            }) =>
        {
            false
        }
        Err(source) => {
            return Err(LdCacheError::Write {
                path: conf_d_file,
                source,
            })
        }
    };
    // The image's own configuration, if it is a regular file of a sane size (a symlink is followed inside the
    // root only, and never onto a mounted host file): anything else is replaced.
    let conf = crate::sys::read::read_regular_at(root, "/etc/ld.so.conf", LD_SO_CONF_CAP)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let includes = conf
        .lines()
        .any(|l| l.trim_start().starts_with("include") && l.contains("ld.so.conf.d"));
    if includes && in_conf_d {
        return Ok(());
    }
    let mut text = conf;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if !in_conf_d {
        text.push_str(&listed);
    }
    if !includes {
        text.push_str("include /etc/ld.so.conf.d/*.conf\n");
    }
    write_in_root(root, "/etc/ld.so.conf", text.as_bytes()).map_err(|source| LdCacheError::Write {
        path: "/etc/ld.so.conf".to_string(),
        source,
    })
}

/// Adds `DIR/STEM.so -> SONAME` for the library at `ctr` when the image has no `STEM.so`, SONAME being the
/// `STEM.so.N` symlink ldconfig made in DIR. Best effort: a link that cannot be made is left out.
pub(super) fn add_dev_link(root: BorrowedFd<'_>, ctr: &str) {
    let c = components(ctr);
    let Some((file, parents)) = c.split_last() else { return };
    let Some(stem) = file.to_str().and_then(|f| f.split(".so").next()) else {
        return;
    };
    let dir_path: PathBuf = if parents.is_empty() {
        PathBuf::from(".")
    } else {
        parents.iter().collect()
    };
    let Ok(dir) = open_in_root(root, &dir_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY) else {
        return;
    };
    let dev = format!("{stem}.so");
    if fstatat(&dir, dev.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
        return;
    }
    let prefix = format!("{stem}.so.");
    let Some(mut listing) = dir.try_clone().ok().and_then(|fd| nix::dir::Dir::from_fd(fd).ok()) else {
        return;
    };
    let soname = listing.iter().flatten().find_map(|e| {
        let n = e.file_name().to_str().ok()?.to_string();
        let version = n.strip_prefix(&prefix)?;
        let is_link = fstatat(&dir, n.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
        (!version.is_empty() && !version.contains('.') && is_link).then_some(n)
    });
    if let Some(s) = soname {
        let _ = nix::unistd::symlinkat(s.as_str(), &dir, dev.as_str());
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::path::Path;

    fn root() -> (tempfile::TempDir, std::fs::File) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc/ld.so.conf.d")).unwrap();
        let fd = crate::sys::safe_fs::open_dir_nofollow(t.path()).unwrap();
        (t, fd)
    }

    #[test]
    fn directories_go_to_a_file_of_their_own_and_the_conf_includes_it() {
        let (t, fd) = root();
        std::fs::write(t.path().join("etc/ld.so.conf"), "/opt/lib").unwrap();
        list_library_dirs(fd.as_fd(), &["/usr/lib64".into(), "/opt/nvidia".into()]).unwrap();
        let listed = std::fs::read_to_string(t.path().join("etc/ld.so.conf.d/000-drun-nvidia.conf")).unwrap();
        assert_eq!(listed, "/usr/lib64\n/opt/nvidia\n");
        let conf = std::fs::read_to_string(t.path().join("etc/ld.so.conf")).unwrap();
        assert_eq!(conf, "/opt/lib\ninclude /etc/ld.so.conf.d/*.conf\n");
    }

    #[test]
    fn symlinks_of_the_image_are_replaced_never_written_through() {
        let (t, fd) = root();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "host file\n").unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("etc/ld.so.conf")).unwrap();
        // A conf.d that is no directory: the directories go into ld.so.conf itself.
        std::fs::remove_dir(t.path().join("etc/ld.so.conf.d")).unwrap();
        std::os::unix::fs::symlink("/nowhere", t.path().join("etc/ld.so.conf.d")).unwrap();
        list_library_dirs(fd.as_fd(), &["/usr/lib64".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file\n");
        let conf = t.path().join("etc/ld.so.conf");
        assert!(std::fs::symlink_metadata(&conf).unwrap().is_file());
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "/usr/lib64\ninclude /etc/ld.so.conf.d/*.conf\n"
        );
    }

    #[test]
    fn a_dev_link_points_at_the_soname_link() {
        let (t, fd) = root();
        let lib = t.path().join("usr/lib64");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libcuda.so.550.54.15"), "").unwrap();
        std::os::unix::fs::symlink("libcuda.so.550.54.15", lib.join("libcuda.so.1")).unwrap();
        add_dev_link(fd.as_fd(), "/usr/lib64/libcuda.so.550.54.15");
        assert_eq!(
            std::fs::read_link(lib.join("libcuda.so")).unwrap(),
            Path::new("libcuda.so.1")
        );
    }
}
