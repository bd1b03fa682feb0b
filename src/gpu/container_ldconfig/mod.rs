//! Refreshes the container's ld cache for the injected driver libraries before its process starts (what the
//! toolkit's update-ldcache hook does): without it "couldn't find libnvidia-ml.so" and CUDA init errors follow.
//! Not to be confused with [`super::host_ld_cache`], which only reads the host's cache to find the driver.
//!
//! A thread of its own, in a private mount namespace, sees the run's root file system through a bind mount of its
//! own with `nosuid,nodev` (a device node shipped in the image cannot be opened there), bind-mounts the libraries
//! into it at their container paths (resolved inside the root: an image's symlinks cannot redirect them) and
//! makes each of those mounts read-only before it writes anything ([`mounts`]). Only then does it add
//! `/etc/ld.so.conf.d/000-drun-nvidia.conf` (and an `/etc/ld.so.conf` including it if the image has none), run
//! the host's statically linked `ldconfig` chrooted there without any capability ([`sandbox`]), and add the `.so`
//! development links ([`conf`]). Every write is made relative to a descriptor of the root, resolved inside it, and
//! never through a symlink: a file is written under a fresh name (`O_CREAT|O_EXCL`) and renamed over the old one,
//! replacing a symlink instead of following it (an image whose `/etc/ld.so.conf` pointed at the mounted
//! `libcuda.so.*` would otherwise have written the host's library). It all lands in the run's writable layer,
//! never in the image; the mounts vanish with the private namespace.
//!
//! A mount namespace is per thread once the thread unshares it (`unshare(CLONE_NEWNS)` implies `CLONE_FS`): the
//! rest of drun, and its umask, are untouched, and the work here may allocate, which a forked child of drun may
//! not (see [`crate::sys`]).

mod conf;
mod mounts;
mod sandbox;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

use crate::sys::at::open_dir;
use crate::sys::fork::ForkError;

#[derive(Debug, thiserror::Error)]
pub enum LdCacheError {
    #[error(
        "cannot find ldconfig on this host (looked for an ELF program at /sbin/ldconfig.real, /sbin/ldconfig and \
         their /usr/sbin twins)"
    )]
    NoLdconfig,
    #[error("cannot open the host's ldconfig {path:?}")]
    OpenLdconfig {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot start the thread that refreshes the ld cache")]
    Thread(#[source] io::Error),
    #[error("the thread that refreshes the ld cache panicked")]
    Panicked,
    #[error("cannot {step}")]
    Namespace {
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot {step} the container's root file system {path:?}")]
    Root {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount the driver library at {container:?}: the image has a directory there")]
    LibraryOverDirectory { container: String },
    #[error("cannot {step} for the driver library at {container:?}")]
    Library {
        step: &'static str,
        container: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot make the driver library at {container:?} read-only: it is still writable after its remount")]
    StillWritable { container: String },
    #[error("cannot write {path:?} in the container's root file system")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot run ldconfig in the container's root file system")]
    Fork(#[source] ForkError),
    #[error("cannot run ldconfig in the container's root file system: {0}")]
    Ldconfig(String),
    #[error("ldconfig did not finish within {} s (does the image's ld.so.conf include a FIFO?)", .0.as_secs())]
    Timeout(Duration),
}

/// The host's ldconfig program below `root` (`/` but in tests). It must be an ELF executable, not a script: it is
/// executed from a close-on-exec descriptor, and the kernel cannot give a script's interpreter such a file
/// (fexecve(2): ENOENT). Ubuntu's `/sbin/ldconfig` is such a script, wrapping `/sbin/ldconfig.real`.
fn find_ldconfig(root: &Path) -> Option<PathBuf> {
    [
        "/sbin/ldconfig.real",
        "/usr/sbin/ldconfig.real",
        "/sbin/ldconfig",
        "/usr/sbin/ldconfig",
    ]
    .iter()
    .map(|p| root.join(p.trim_start_matches('/')))
    .find(|p| is_elf(p))
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = crate::sys::safe_fs::open_regular(path, true) else {
        return false;
    };
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).is_ok() && &magic == b"\x7fELF"
}

/// The non-empty components of a container path, without `.` and `..` (which resolve inside the root anyway).
fn components(path: &str) -> Vec<&OsStr> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .map(OsStr::new)
        .collect()
}

/// Refreshes `rootfs`'s ld cache for `libs` (host path, container path).
pub fn refresh(rootfs: &Path, libs: &[(PathBuf, String)]) -> Result<(), LdCacheError> {
    if libs.is_empty() {
        return Ok(());
    }
    let ldconfig = find_ldconfig(Path::new("/")).ok_or(LdCacheError::NoLdconfig)?;
    let exe = nix::fcntl::open(&ldconfig, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|source| LdCacheError::OpenLdconfig { path: ldconfig, source })?;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("ld-cache".into())
            .spawn_scoped(scope, || in_private_namespace(rootfs, libs, exe.as_fd()))
            .map_err(LdCacheError::Thread)?;
        worker.join().unwrap_or(Err(LdCacheError::Panicked))
    })
}

/// Runs [`refresh_in_root`] in a mount namespace private to this thread, and returns to drun's own namespace
/// afterwards, so that the private one and its mounts are gone before the caller goes on.
fn in_private_namespace(rootfs: &Path, libs: &[(PathBuf, String)], exe: BorrowedFd<'_>) -> Result<(), LdCacheError> {
    let namespace = |step| move |source| LdCacheError::Namespace { step, source };
    let drun_namespace: OwnedFd = nix::fcntl::open(
        "/proc/thread-self/ns/mnt",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(namespace("open drun's mount namespace"))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(namespace("create a private mount namespace"))?;
    let refreshed = refresh_in_root(rootfs, libs, exe);
    if let Err(e) = nix::sched::setns(&drun_namespace, CloneFlags::CLONE_NEWNS) {
        // The namespace then goes when the thread ends.
        tracing::debug!(error = %e, "cannot return to drun's mount namespace after the ld cache refresh");
    }
    refreshed
}

fn refresh_in_root(rootfs: &Path, libs: &[(PathBuf, String)], exe: BorrowedFd<'_>) -> Result<(), LdCacheError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|source| LdCacheError::Namespace {
        step: "make the private mount namespace's mounts private",
        source,
    })?;
    // What it creates is for every user of the container to read, whatever drun's own umask (this thread's only).
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    let root_error = |step| {
        move |source| LdCacheError::Root {
            step,
            path: rootfs.to_path_buf(),
            source,
        }
    };
    // The root through a mount of this namespace only, where nosuid and nodev are harmless: ldconfig opens what
    // the image's configuration names, and a device there (/dev/zero) must not be readable.
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| root_error("bind-mount")(e.into()))?;
    // Opened only now: a descriptor from before names the other namespace's mount (or the one below the bind).
    let root_fd = open_dir(rootfs).map_err(root_error("open"))?;
    mounts::remount(root_fd.as_fd(), MsFlags::empty()).map_err(|e| root_error("remount nosuid,nodev")(e.into()))?;
    let root = root_fd.as_fd();
    let dirs = mounts::mount_libraries_read_only(root, libs)?;
    conf::list_library_dirs(root, &dirs)?;
    sandbox::run_ldconfig(root, exe)?;
    // `.so` development links to the SONAME links ldconfig made (libcuda.so -> libcuda.so.1), as the toolkit does.
    for (_, ctr) in libs {
        conf::add_dev_link(root, ctr);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod find_tests {
    use super::*;

    /// Ubuntu's /sbin/ldconfig is a shell script around /sbin/ldconfig.real: the ELF program is the one chosen
    /// (found on the GPU machine of hack/gpu-hardware.sh, where executing the script gave ENOENT).
    #[test]
    fn ldconfig_is_the_elf_program_not_a_wrapper_script() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("sbin")).unwrap();
        std::fs::write(
            t.path().join("sbin/ldconfig"),
            "#!/bin/sh\nexec /sbin/ldconfig.real \"$@\"\n",
        )
        .unwrap();
        assert_eq!(
            find_ldconfig(t.path()),
            None,
            "a script is not an ldconfig drun can execute"
        );
        std::fs::copy("/proc/self/exe", t.path().join("sbin/ldconfig.real")).unwrap();
        assert_eq!(find_ldconfig(t.path()), Some(t.path().join("sbin/ldconfig.real")));
        // Debian: ldconfig itself is the program.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/sbin")).unwrap();
        std::fs::copy("/proc/self/exe", d.path().join("usr/sbin/ldconfig")).unwrap();
        assert_eq!(find_ldconfig(d.path()), Some(d.path().join("usr/sbin/ldconfig")));
    }
}
