//! The container's ld cache, refreshed for injected driver libraries before its process starts (what the
//! toolkit's update-ldcache hook does): without it "couldn't find libnvidia-ml.so" and CUDA init errors follow.
//!
//! A child process, in a private mount namespace, bind-mounts the libraries into the run's root file system at
//! their container paths (resolved inside the root: an image's symlinks cannot redirect them), chroots there,
//! adds `/etc/ld.so.conf.d/000-drun-nvidia.conf` (and an `/etc/ld.so.conf` including it if the image has none) and
//! runs the host's statically linked `ldconfig`, then adds the `.so` development links. Everything it writes lands
//! in the run's writable layer, never in the image; its mounts vanish with it.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use super::GpuError;
use crate::image::unpack::{open_dir, open_in_root, parent_dir};

const CONF: &str = "/etc/ld.so.conf.d/000-drun-nvidia.conf";

fn find_ldconfig() -> Option<PathBuf> {
    ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Refreshes `rootfs`'s ld cache for `libs` (host path, container path).
pub fn refresh(rootfs: &Path, libs: &[(PathBuf, String)]) -> Result<(), GpuError> {
    if libs.is_empty() {
        return Ok(());
    }
    let ldconfig = find_ldconfig().ok_or_else(|| GpuError::Ldconfig("no ldconfig on this host".into()))?;
    let exe = nix::fcntl::open(&ldconfig, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| GpuError::Ldconfig(format!("{}: {e}", ldconfig.display())))?;
    // SAFETY: drun is single-threaded on the run path (libcontainer requires it too); the child only makes
    // system calls and exits.
    match unsafe { fork() }.map_err(|e| GpuError::Ldconfig(format!("fork: {e}")))? {
        ForkResult::Child => {
            let code = match child(rootfs, libs, exe.as_raw_fd()) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "drun: ldconfig step: {e}");
                    1
                }
            };
            // SAFETY: _exit skips the parent's atexit handlers and buffers, as a forked child must.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(s) => Err(GpuError::Ldconfig(format!(
                "the helper ended with {s:?} (see its message above)"
            ))),
            Err(e) => Err(GpuError::Ldconfig(format!("waitpid: {e}"))),
        },
    }
}

fn comps(path: &str) -> Vec<&OsStr> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .map(OsStr::new)
        .collect()
}

fn child(rootfs: &Path, libs: &[(PathBuf, String)], exe: i32) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    // Opened only now: a descriptor from before unshare() names the other namespace's mount, where mounting fails.
    let root_fd = open_dir(rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    let root = root_fd.as_fd();
    let mut dirs: Vec<String> = Vec::new();
    for (host, ctr) in libs {
        let c = comps(ctr);
        let Some((name, parents)) = c.split_last() else {
            continue;
        };
        let parent = parent_dir(root, parents).map_err(|e| format!("{ctr}: {e}"))?;
        let create = || {
            nix::fcntl::openat(
                parent.as_fd(),
                *name,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
        };
        if let Err(nix::errno::Errno::ELOOP) = create() {
            // The image has a symlink of that name: the driver's library replaces it.
            let _ = nix::unistd::unlinkat(parent.as_fd(), *name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        create().map_err(|e| format!("create {ctr}: {e}"))?;
        let target = open_in_root(parent.as_fd(), Path::new(name), OFlag::O_PATH | OFlag::O_NOFOLLOW)
            .map_err(|e| format!("open {ctr}: {e}"))?;
        let via = format!("/proc/self/fd/{}", target.as_raw_fd());
        mount(
            Some(host.as_path()),
            via.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind {} at {ctr}: {e}", host.display()))?;
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
    nix::unistd::chroot(rootfs).map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir: {e}"))?;
    std::fs::create_dir_all("/etc/ld.so.conf.d").map_err(|e| format!("/etc/ld.so.conf.d: {e}"))?;
    std::fs::write(CONF, dirs.join("\n") + "\n").map_err(|e| format!("{CONF}: {e}"))?;
    let conf = std::fs::read_to_string("/etc/ld.so.conf").unwrap_or_default();
    if !conf
        .lines()
        .any(|l| l.trim_start().starts_with("include") && l.contains("ld.so.conf.d"))
    {
        let mut text = conf;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("include /etc/ld.so.conf.d/*.conf\n");
        std::fs::write("/etc/ld.so.conf", text).map_err(|e| format!("/etc/ld.so.conf: {e}"))?;
    }
    // SAFETY: as in `refresh`; the grandchild only execs.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let argv = [CString::new("ldconfig").expect("no NUL")];
            let env: [CString; 0] = [];
            // SAFETY: exe is an open descriptor of the host's static ldconfig, inherited across fork.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(exe) };
            let e = nix::unistd::fexecve(fd, &argv, &env).err();
            let _ = writeln!(std::io::stderr(), "drun: cannot run ldconfig: {e:?}");
            // SAFETY: see `refresh`.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            other => return Err(format!("ldconfig failed: {other:?}")),
        },
    }
    // `.so` development links to the SONAME links ldconfig made (libcuda.so -> libcuda.so.1), as the toolkit does.
    for (_, ctr) in libs {
        let p = Path::new(ctr);
        let (Some(dir), Some(file)) = (p.parent(), p.file_name().and_then(OsStr::to_str)) else {
            continue;
        };
        let Some(stem) = file.split(".so").next() else { continue };
        let dev = dir.join(format!("{stem}.so"));
        if std::fs::symlink_metadata(&dev).is_ok() {
            continue;
        }
        let soname = std::fs::read_dir(dir).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix(&format!("{stem}.so."))
                        .is_some_and(|v| !v.is_empty() && !v.contains('.'))
                })
                .find(|n| std::fs::symlink_metadata(dir.join(n)).is_ok_and(|m| m.file_type().is_symlink()))
        });
        if let Some(s) = soname {
            let _ = std::os::unix::fs::symlink(s, &dev);
        }
    }
    Ok(())
}
