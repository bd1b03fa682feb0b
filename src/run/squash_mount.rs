//! A squashfs image file (`drun run FILE.sqsh`) mounted read-only at `<run dir>/squash`, the only lower layer of
//! the run's overlay: nothing is unpacked.
//!
//! The kernel parses what it mounts, so it is given only files drun published itself: as real root, a file owned
//! by root that no one else can write, whose squashfs data has a digest this store's `drun export`/`pull
//! --squash` recorded, and whose digest is checked (once per node and file: `image/squash/verified.rs`). It is
//! mounted from a loop device set up from the file descriptor drun opened without following symlinks, read-only
//! and limited to the squashfs data. That mount is shared by every run of the image on the node and unmounted after
//! the last (`shared_mount.rs`). Every other file, and
//! every file of an ordinary user (who cannot mount squashfs in a user namespace), is mounted with `squashfuse`, a
//! process of drun's in its user namespace, reading the same descriptor, with `allow_other` so that the
//! container's other users can read it: one per run, at `<run dir>/squash`, since the process lives and dies
//! with the run's drun (and a rootless drun's mounts are in a mount namespace of its own, which goes with it).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use crate::image::squash::verified::CheckError;
use crate::image::squash::{published_dir, SquashImage};
use crate::image::store::Store;

/// How the file was mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquashMount {
    Kernel,
    Fuse,
}

/// A mounted image file: the mount point and, for FUSE, the squashfuse process (killed when this is dropped,
/// after the run's clean-up has unmounted it).
#[derive(Debug)]
pub struct Mounted {
    pub dir: PathBuf,
    pub how: SquashMount,
    fuse: Option<Child>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.fuse.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SquashMountError {
    #[error("cannot open the image file {path:?}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot share the node's mount of the image file")]
    Shared(#[from] io::Error),
    #[error("the image file {path:?} is damaged: its squashfs data does not match the digest in its trailer")]
    Digest { path: PathBuf },
    #[error("cannot set up a loop device for {path:?}")]
    Loop { path: PathBuf, source: io::Error },
    #[error("cannot mount the image file {path:?}")]
    Mount { path: PathBuf, source: io::Error },
    #[error(
        "cannot mount the image file {path:?} with squashfuse (install squashfuse: apt install squashfuse): {detail}"
    )]
    Fuse { path: PathBuf, detail: String },
}

/// Mounts `image` for the run whose directory is `run_dir` (in the state directory `state`): the kernel's mount
/// shared by the node's runs of the same image (`shared_mount.rs`), or a squashfuse mount of the run's own at
/// `run_dir/squash`.
pub fn mount_image(
    image: &SquashImage,
    store: &Store,
    state: &Path,
    run_dir: &Path,
) -> Result<Mounted, SquashMountError> {
    let path = &image.file;
    let open_err = |source| SquashMountError::Open {
        path: path.clone(),
        source,
    };
    let file = crate::sys::safe_fs::open_regular(path, false).map_err(open_err)?;
    let md = file.metadata().map_err(open_err)?;
    if (md.dev(), md.ino()) != image.identity {
        return Err(open_err(io::Error::other(
            "it is not the file whose metadata was read (its path changed meanwhile)",
        )));
    }
    if trusted_for_the_kernel(image, store, &md) && !crate::sys::fs_type::is_fuse(&file) {
        let run_id = run_dir.file_name().unwrap_or_default().to_string_lossy();
        let mut file = Some(file);
        let dir = crate::run::shared_mount::acquire(
            state,
            image.meta.squashfs_digest.hex(),
            &run_id,
            |mnt, already| -> Result<(), SquashMountError> {
                let mut file = file.take().expect("called once");
                // Checked even when mounted: that another file with this digest was good says nothing of this one.
                verify_once(image, store, &mut file, &md)?;
                if !already {
                    kernel_mount(image, OwnedFd::from(file), mnt)?;
                    tracing::debug!(file = %path.display(), "squashfs image mounted by the kernel");
                } else {
                    tracing::debug!(file = %path.display(), "squashfs image already mounted by the kernel: shared");
                }
                Ok(())
            },
        )?;
        return Ok(Mounted {
            dir,
            how: SquashMount::Kernel,
            fuse: None,
        });
    }
    let dir = run_dir.join("squash");
    crate::sys::safe_fs::create_dir_mode(&dir, 0o755).map_err(open_err)?;
    let child = fuse_mount(image, OwnedFd::from(file), &dir)?;
    tracing::debug!(file = %path.display(), "squashfs image mounted with squashfuse");
    Ok(Mounted {
        dir,
        how: SquashMount::Fuse,
        fuse: Some(child),
    })
}

fn trusted_for_the_kernel(image: &SquashImage, store: &Store, md: &std::fs::Metadata) -> bool {
    if std::env::var_os("DRUN_SQUASH").is_some_and(|v| v == "fuse") {
        return false;
    }
    let real_root = nix::unistd::geteuid().is_root() && crate::sys::userns::current().is_none();
    real_root
        && md.uid() == 0
        && md.mode() & 0o022 == 0
        && published_dir(store).join(image.meta.squashfs_digest.hex()).is_file()
}

/// Checks the squashfs data's digest, unless this very file was checked on this node before
/// (`image/squash/verified.rs`).
fn verify_once(
    image: &SquashImage,
    store: &Store,
    file: &mut std::fs::File,
    md: &std::fs::Metadata,
) -> Result<(), SquashMountError> {
    let m = &image.meta;
    crate::image::squash::verified::check_once(store, file, md, &m.squashfs_digest, m.squashfs_size).map_err(
        |e| match e {
            CheckError::Io(source) => SquashMountError::Open {
                path: image.file.clone(),
                source,
            },
            CheckError::Digest(_) => SquashMountError::Digest {
                path: image.file.clone(),
            },
        },
    )
}

// The kernel's loop-device interface (linux/loop.h), which neither nix nor libc wraps.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Takes the I/O scheduler off the loop device `n` drun just configured. Its requests go to the backing file, whose
/// own device schedules them; a scheduler on the loop device only adds latency, and BFQ (which some systems give
/// every block device) idles up to 8 ms after each read waiting for more from the same process: a busybox start
/// from its squashfs file took 34 ms with it and 19.5 ms without (hack/bench-scale's warm starts; 15.6 ms
/// unpacked). A failure leaves the system's choice.
fn no_io_scheduler(n: libc::c_int) {
    let path = format!("/sys/block/loop{n}/queue/scheduler");
    // Switching costs more than the idling (the queue is frozen meanwhile): only where it is not off already (a
    // freed loop device keeps it).
    if crate::sys::safe_fs::read_system(&path).is_ok_and(|s| s.contains("[none]")) {
        return;
    }
    if let Err(e) = crate::sys::safe_fs::write_system(&path, "none") {
        tracing::debug!(path, error = %e, "cannot take the loop device's I/O scheduler off");
    }
}

/// A loop device over `file` (read-only, limited to the squashfs data, freed by the kernel at the last unmount),
/// then the squashfs mount.
fn kernel_mount(image: &SquashImage, file: OwnedFd, dir: &Path) -> Result<(), SquashMountError> {
    let loop_err = |source| SquashMountError::Loop {
        path: image.file.clone(),
        source,
    };
    #[allow(clippy::disallowed_methods)] // the kernel's device
    let control = std::fs::File::open("/dev/loop-control").map_err(loop_err)?;
    // Another process may take the free device between the two calls: then ask again.
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1; the descriptor is open.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(loop_err(io::Error::last_os_error()));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let device = nix::fcntl::open(
            &dev,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| loop_err(e.into()))?;
        let config = LoopConfig {
            fd: u32::try_from(file.as_raw_fd()).expect("a descriptor is not negative"),
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: image.meta.squashfs_size,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `LoopConfig` lays out as linux/loop.h does;
        // `config` lives across the call and both descriptors are open.
        let r = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config as *const LoopConfig) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(loop_err(e));
        }
        no_io_scheduler(n);
        let mounted = mount(
            Some(&dev),
            dir,
            Some("squashfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            None::<&str>,
        );
        // With AUTOCLEAR the device goes with its last user: the mount, or now if the mount failed.
        drop(device);
        return mounted.map_err(|e| SquashMountError::Mount {
            path: image.file.clone(),
            source: e.into(),
        });
    }
    Err(loop_err(io::Error::from_raw_os_error(libc::EBUSY)))
}

/// squashfuse in the foreground, as drun's child (killed if drun dies), reading the descriptor drun opened.
fn fuse_mount(image: &SquashImage, file: OwnedFd, dir: &Path) -> Result<Child, SquashMountError> {
    use std::os::unix::process::CommandExt;
    let fuse_err = |detail: String| SquashMountError::Fuse {
        path: image.file.clone(),
        detail,
    };
    let raw = file.as_raw_fd();
    let log_path = dir.with_file_name("squashfuse.log");
    let log = crate::sys::safe_fs::create_new(&log_path, 0o600)
        .map_err(|e| fuse_err(format!("cannot create its log: {e}")))?;
    let mut cmd = Command::new("squashfuse");
    cmd.args(["-f", "-o", "ro,allow_other"])
        .arg(format!("/proc/self/fd/{raw}"))
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls (fcntl, prctl) and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The descriptor crosses exec (drun opens everything close-on-exec).
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| fuse_err(format!("cannot start it: {e}")))?;
    drop(file);
    let start = Instant::now();
    loop {
        if nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC) {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let err = crate::sys::safe_fs::read_bounded(&log_path, 4096).unwrap_or_default();
            let err = String::from_utf8_lossy(&err);
            return Err(fuse_err(format!("it exited with {status}: {}", err.trim())));
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fuse_err("it did not mount within 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
