//! The container's ld cache, refreshed for injected driver libraries before its process starts (what the
//! toolkit's update-ldcache hook does): without it "couldn't find libnvidia-ml.so" and CUDA init errors follow.
//!
//! A child process, in a private mount namespace, sees the run's root file system through a bind mount of its own
//! with `nosuid,nodev` (a device node shipped in the image cannot be opened there), bind-mounts the libraries into
//! it at their container paths (resolved inside the root: an image's symlinks cannot redirect them) and makes
//! each of those mounts read-only before it writes anything. Only then does it add
//! `/etc/ld.so.conf.d/000-drun-nvidia.conf` (and an `/etc/ld.so.conf` including it if the image has none), run
//! the host's statically linked `ldconfig` chrooted there, and add the `.so` development links. Every write is
//! made relative to a descriptor of the root, resolved inside it, and never through a symlink: a file is written
//! under a fresh name (`O_CREAT|O_EXCL`) and renamed over the old one, replacing a symlink instead of following it
//! (an image whose `/etc/ld.so.conf` pointed at the mounted `libcuda.so.*` would otherwise have written the
//! host's library). It all lands in the run's writable layer, never in the image; the mounts vanish with the
//! child.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fstatat, Mode};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult};

use super::GpuError;
use crate::image::unpack::{open_dir, open_in_root, parent_dir};

const CONF_DIR: &str = "/etc/ld.so.conf.d";
const CONF_NAME: &str = "000-drun-nvidia.conf";
/// The most of the image's `/etc/ld.so.conf` drun reads (a real one is a few lines).
const LD_SO_CONF_CAP: u64 = 1 << 20;
/// How long `ldconfig` may take: a FIFO the image names in its ld.so.conf includes would block it forever.
const LDCONFIG_TIMEOUT: Duration = Duration::from_secs(60);
/// The address space `ldconfig` may use: it maps one library at a time, but a hostile configuration file of
/// gigabytes in one line would otherwise be read into memory whole.
const LDCONFIG_MAX_ADDRESS_SPACE: u64 = 4 << 30;

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
fn remount(fd: BorrowedFd<'_>, extra: MsFlags) -> Result<(), Errno> {
    let flags = kept_flags(fd)? | extra | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    let via = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(None::<&str>, via.as_str(), None::<&str>, flags, None::<&str>)
}

/// Makes `name` in `parent` a regular file to mount over: an existing regular file is used as it is; a symlink,
/// FIFO, device or socket the image has there is replaced (never opened), a directory refused.
fn mount_point(parent: BorrowedFd<'_>, name: &OsStr, ctr: &str) -> Result<(), String> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => return Ok(()),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            return Err(format!("{ctr} is a directory in the image"));
        }
        Ok(_) => nix::unistd::unlinkat(parent, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(|e| format!("remove the image's {ctr}: {e}"))?,
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(format!("{ctr}: {e}")),
    }
    nix::fcntl::openat(
        parent,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map(drop)
    .map_err(|e| format!("create {ctr}: {e}"))
}

/// Writes `data` to `path` of the root `root` (resolved inside it, missing directories created) without
/// following a symlink at `path`: written under a fresh name, then renamed over whatever `path` was. An error
/// comes with its errno where there is one.
fn write_in_root(root: BorrowedFd<'_>, path: &str, data: &[u8]) -> Result<(), (String, Option<Errno>)> {
    let c = comps(path);
    let Some((name, parents)) = c.split_last() else {
        return Err((format!("{path}: no file name"), None));
    };
    let parent = parent_dir(root, parents).map_err(|e| {
        let errno = e.raw_os_error().map(Errno::from_raw);
        (format!("{path}: {e}"), errno)
    })?;
    let tmp = format!(".{}.drun-{}", name.to_string_lossy(), std::process::id());
    let _ = nix::unistd::unlinkat(&parent, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    let fd = nix::fcntl::openat(
        &parent,
        tmp.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| (format!("create {path}: {e}"), Some(e)))?;
    let written = std::fs::File::from(fd)
        .write_all(data)
        .map_err(|e| (format!("write {path}: {e}"), None))
        .and_then(|()| {
            nix::fcntl::renameat(&parent, tmp.as_str(), &parent, *name)
                .map_err(|e| (format!("replace {path}: {e}"), Some(e)))
        });
    if written.is_err() {
        let _ = nix::unistd::unlinkat(&parent, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// Runs the host's ldconfig (`exe`) chrooted in `root`, within [`LDCONFIG_TIMEOUT`].
fn run_ldconfig(root: BorrowedFd<'_>, exe: i32) -> Result<(), String> {
    // SAFETY: as in `refresh`; the grandchild only makes system calls and execs.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let argv = [CString::new("ldconfig").expect("no NUL")];
            let env: [CString; 0] = [];
            let limit = LDCONFIG_MAX_ADDRESS_SPACE;
            let e = nix::unistd::fchdir(root)
                .and_then(|()| nix::unistd::chroot("."))
                .and_then(|()| nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, limit, limit))
                .and_then(|()| drop_privileges())
                .and_then(|()| {
                    // SAFETY: exe is an open descriptor of the host's static ldconfig, inherited across fork.
                    let fd = unsafe { BorrowedFd::borrow_raw(exe) };
                    nix::unistd::fexecve(fd, &argv, &env).map(drop)
                })
                .err();
            let _ = writeln!(std::io::stderr(), "drun: cannot run ldconfig: {e:?}");
            // SAFETY: see `refresh`.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            let start = Instant::now();
            let mut pause = Duration::from_millis(1);
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                    other => return Err(format!("ldconfig failed: {other:?}")),
                }
                if start.elapsed() > LDCONFIG_TIMEOUT {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    return Err(format!(
                        "ldconfig did not finish within {} s (does the image's ld.so.conf include a FIFO?)",
                        LDCONFIG_TIMEOUT.as_secs()
                    ));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        }
    }
}

/// Leaves ldconfig, which parses the image's configuration and ELF files, only what it needs: uid 0 in the image's
/// root (its files are root's), without any capability, and unable to gain one (no_new_privs clamps what exec
/// would give root). A parser bug in ldconfig then cannot reach beyond the chroot as a capable root could.
/// Plain system calls only: this runs in a forked child.
fn drop_privileges() -> nix::Result<()> {
    // SAFETY: prctl(2) and capset(2) on this process only; the header and data live on the stack for the calls.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(nix::errno::Errno::last());
        }
        // Bounding set first (needs CAP_SETPCAP, which is dropped last with the rest); EINVAL past the kernel's
        // last capability ends the loop.
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                break;
            }
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    Ok(())
}

/// Adds `DIR/STEM.so -> SONAME` for the library at `ctr` when the image has no `STEM.so`, SONAME being the
/// `STEM.so.N` symlink ldconfig made in DIR.
fn dev_link(root: BorrowedFd<'_>, ctr: &str) {
    let c = comps(ctr);
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

fn child(rootfs: &Path, libs: &[(PathBuf, String)], exe: i32) -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    // What it creates is for every user of the container to read, whatever drun's own umask.
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    // The root through a mount of this namespace only, where nosuid and nodev are harmless: ldconfig opens what
    // the image's configuration names, and a device there (/dev/zero) must not be readable.
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind {}: {e}", rootfs.display()))?;
    // Opened only now: a descriptor from before names the other namespace's mount (or the one below the bind).
    let root_fd = open_dir(rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    remount(root_fd.as_fd(), MsFlags::empty())
        .map_err(|e| format!("remount {} nosuid,nodev: {e}", rootfs.display()))?;
    let root = root_fd.as_fd();
    // The host's libraries, each read-only before anything in the root is written.
    let mut dirs: Vec<String> = Vec::new();
    for (host, ctr) in libs {
        let c = comps(ctr);
        let Some((name, parents)) = c.split_last() else {
            continue;
        };
        let parent = parent_dir(root, parents).map_err(|e| format!("{ctr}: {e}"))?;
        mount_point(parent.as_fd(), name, ctr)?;
        let open = || -> Result<OwnedFd, String> {
            nix::fcntl::openat(
                &parent,
                *name,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("open {ctr}: {e}"))
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
        .map_err(|e| format!("bind {} at {ctr}: {e}", host.display()))?;
        // Looked up again, the name is the new mount's root.
        let mounted = open()?;
        remount(mounted.as_fd(), MsFlags::MS_RDONLY).map_err(|e| format!("make {ctr} read-only: {e}"))?;
        let ro = nix::sys::statvfs::fstatvfs(&mounted)
            .is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
        if !ro {
            return Err(format!("{ctr} is still writable after its read-only remount"));
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
    let listed = dirs.join("\n") + "\n";
    // An image whose /etc/ld.so.conf.d is no directory (a symlink to nothing or out of the root, a file) or has
    // one of drun's file's name gets the directories in /etc/ld.so.conf itself.
    let in_conf_d = match write_in_root(root, &format!("{CONF_DIR}/{CONF_NAME}"), listed.as_bytes()) {
        Ok(()) => true,
        Err((
            _,
            Some(Errno::ENOENT | Errno::ENOTDIR | Errno::EEXIST | Errno::ELOOP | Errno::EXDEV | Errno::EISDIR),
        )) => false,
        Err(e) => return Err(e.0),
    };
    // The image's own configuration, if it is a regular file of a sane size (a symlink is followed inside the
    // root only, and never onto a mounted host file): anything else is replaced.
    let conf = crate::run::rootfs::read_regular_at(root, "/etc/ld.so.conf", LD_SO_CONF_CAP)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let includes = conf
        .lines()
        .any(|l| l.trim_start().starts_with("include") && l.contains("ld.so.conf.d"));
    if !includes || !in_conf_d {
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
        write_in_root(root, "/etc/ld.so.conf", text.as_bytes()).map_err(|e| e.0)?;
    }
    run_ldconfig(root, exe)?;
    // `.so` development links to the SONAME links ldconfig made (libcuda.so -> libcuda.so.1), as the toolkit does.
    for (_, ctr) in libs {
        dev_link(root, ctr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ldconfig_runs_without_any_capability_and_cannot_gain_one() {
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new("cat");
        c.arg("/proc/self/status");
        // SAFETY: drop_privileges makes plain system calls only, as a pre-exec hook must.
        unsafe { c.pre_exec(|| super::drop_privileges().map_err(std::io::Error::from)) };
        let out = c.output().unwrap();
        assert!(out.status.success());
        let status = String::from_utf8_lossy(&out.stdout);
        for (key, want) in [
            ("CapEff:", "0000000000000000"),
            ("CapPrm:", "0000000000000000"),
            ("CapBnd:", "0000000000000000"),
            ("NoNewPrivs:", "1"),
        ] {
            let got = status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
            assert_eq!(got, Some(want), "{key} in\n{status}");
        }
    }
}
