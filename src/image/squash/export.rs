//! `drun export IMAGE -o FILE.sqsh`: the image's merged root file system (the run path's own overlay of the
//! store's layers, mounted read-only in a mount namespace private to one thread, so nothing is left mounted if drun
//! dies) written by `mksquashfs`, then the trailer of [`super`], then an atomic rename into place.
//!
//! Why `mksquashfs` (squashfs-tools): it is the reference writer, in every distribution, and keeps owners, modes,
//! xattrs, hardlinks, symlinks and device nodes; reading the merged overlay gives it exactly the tree a container
//! sees (whiteouts and opaque directories applied by overlayfs itself). squashfs-tools-ng's `tar2sqfs` could stream
//! a tar without the merged view, but no tar of the merged tree exists here, and the `backhand` crate does not
//! write device nodes and xattrs as completely.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{digest_prefix, write_trailer, Metadata, VERSION};
use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot create {path:?}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot run mksquashfs (install squashfs-tools: apt install squashfs-tools)")]
    NoMksquashfs(#[source] io::Error),
    #[error("mksquashfs failed ({status}): {stderr}")]
    Mksquashfs {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot write the image file {path:?}")]
    Write { path: PathBuf, source: io::Error },
}

/// What the file records about the image besides its tree.
#[derive(Debug)]
pub struct ImageIds<'a> {
    pub name: &'a str,
    pub manifest_digest: &'a Digest,
    pub config_digest: &'a Digest,
    pub config: serde_json::Value,
}

/// mksquashfs's cache size (`-mem`) unless the caller gives one.
pub const DEFAULT_MEM: &str = "256M";

/// Writes `tree` as a squashfs image file at `out` (through a new temporary file beside it, renamed into place;
/// readable by everyone, as images are). `mem` bounds mksquashfs's cache (`-mem`; [`DEFAULT_MEM`] unless given).
pub fn write_image_file(tree: &Path, ids: ImageIds, out: &Path, mem: Option<&str>) -> Result<Metadata, ExportError> {
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.drun-tmp-{}", std::process::id()));
    let create = |source| ExportError::Create {
        path: tmp.clone(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    // Read and written: mksquashfs writes it, drun then hashes it and appends the trailer.
    let fd = nix::fcntl::open(
        &tmp,
        nix::fcntl::OFlag::O_RDWR
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| create(e.into()))?;
    // Readable by everyone whatever drun's umask: images are.
    nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o644)).map_err(|e| create(e.into()))?;
    let mut file = std::fs::File::from(fd);
    let removed = Remove(&tmp);
    // mksquashfs writes through the descriptor drun created (never a path an other user could swap).
    let raw = file.as_raw_fd();
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(tree)
        .arg(format!("/proc/self/fd/{raw}"))
        // zstd at its own default level, 3, not mksquashfs's 15: on the 3.4 GB scale test image (hack/bench-scale)
        // level 15 compressed at ~10 MB/s, six minutes for the conversion, while level 3 writes a file 1% larger
        // at ~300 MB/s; incompressible blocks (most of a CUDA image's bytes) cost level 15 as much as any.
        .args([
            "-noappend",
            "-comp",
            "zstd",
            "-Xcompression-level",
            "3",
            "-quiet",
            "-no-progress",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // mksquashfs sizes its caches to a quarter of the machine's memory unless told: 1.7 GB of RSS for a 1.5 GB
    // tree here, and slower (9.8 s) than with 256 MiB (180 MiB of RSS, 3.9 s), measured on the scale test image.
    cmd.args(["-mem", mem.unwrap_or(DEFAULT_MEM)]);
    // SAFETY: between fork and exec the closure only calls fcntl(2), which is async-signal-safe, and allocates
    // nothing.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out_err = cmd.output().map_err(ExportError::NoMksquashfs)?;
    if !out_err.status.success() {
        let mut text = String::from_utf8_lossy(&out_err.stderr).into_owned();
        text.truncate(4000);
        return Err(ExportError::Mksquashfs {
            status: out_err.status,
            stderr: text.trim().to_string(),
        });
    }
    let write = |source| ExportError::Write {
        path: tmp.clone(),
        source,
    };
    let size = file.metadata().map_err(write)?.len();
    let meta = Metadata {
        version: VERSION,
        name: ids.name.to_string(),
        manifest_digest: ids.manifest_digest.clone(),
        config_digest: ids.config_digest.clone(),
        squashfs_size: size,
        squashfs_digest: digest_prefix(&mut file, size).map_err(write)?,
        config: ids.config,
    };
    write_trailer(&mut file, &meta).map_err(write)?;
    file.sync_all().map_err(write)?;
    std::fs::rename(&tmp, out).map_err(|source| ExportError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    std::mem::forget(removed);
    Ok(meta)
}

/// Removes the temporary file unless forgotten.
struct Remove<'a>(&'a Path);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// A private working directory under the store's `tmp/` (removed when dropped; a crashed export's is cleared
/// like any other leftover there).
pub struct WorkDir(pub PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = crate::image::store::remove_tree(&self.0);
    }
}

pub fn work_dir(store: &crate::image::store::Store) -> io::Result<WorkDir> {
    let mut b = [0u8; 8];
    #[allow(clippy::disallowed_methods)] // the kernel's device
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    let dir = store.root().join("tmp").join(format!("export-{}", hex::encode(b)));
    crate::sys::safe_fs::create_dir_mode(&dir, 0o700)?;
    Ok(WorkDir(dir))
}

/// Runs `f` on a thread of its own in a private mount namespace (`unshare(CLONE_NEWNS)` is per thread, and the
/// processes it starts inherit it): its mounts vanish with the thread, even if drun is killed.
pub fn in_private_mounts<T: Send>(f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::sys::userns::private_mounts()?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the export thread panicked")))
    })
}

/// As real root, records that drun made a file with this squashfs digest: only such files are given to the
/// kernel to mount (see `run/squash_mount.rs`).
pub fn record_published(store: &crate::image::store::Store, meta: &Metadata) {
    if !nix::unistd::geteuid().is_root() || crate::sys::userns::current().is_some() {
        return;
    }
    let dir = super::published_dir(store);
    if crate::sys::safe_fs::create_dir_all_mode(&dir, 0o700).is_ok() {
        let _ = crate::sys::safe_fs::write_replace(&dir.join(meta.squashfs_digest.hex()), b"", 0o600);
    }
}
