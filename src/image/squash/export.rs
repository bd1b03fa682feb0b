//! Writing image files, two ways, each through a temporary file drun created, then the trailer of [`super`],
//! then an atomic rename into place:
//! - `drun export IMAGE -o FILE.sqsh` of an unpacked image: its merged root file system (the run path's own
//!   overlay of the store's layers, mounted read-only in a mount namespace private to one thread, so nothing is
//!   left mounted if drun dies) written by `mksquashfs` ([`write_image_file`]);
//! - `drun pull --squash` and image-directory conversions: the layers merged into one tar stream as they are
//!   downloaded (`image/unpack/merge.rs`) and written by `tar2sqfs` ([`StreamedImageFile`]): the image is
//!   written once, never unpacked. A layer that cannot be streamed (a hardlink into another layer) makes the
//!   caller fall back to unpacking and the first way.
//!
//! Why these writers: `mksquashfs` (squashfs-tools) is the reference writer, in every distribution, and keeps
//! owners, modes, xattrs, hardlinks, symlinks and device nodes; reading the merged overlay gives it exactly the
//! tree a container sees. Its tar reader (`sqfstar`, squashfs-tools 4.5.1 in Debian 12) ignores compressor options
//! (zstd stays at level 15, ~10 MB/s on the scale image), so streams go to squashfs-tools-ng's `tar2sqfs`, which
//! takes them, writes the same format and holds ~10 MiB where mksquashfs held 255 MiB (hack/bench-scale). The
//! `backhand` crate does not write device nodes and xattrs as completely.

use std::io::{self, Read};
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
    #[error("cannot read /dev/urandom")]
    NoRandom(#[source] io::Error),
    #[error("cannot run tar2sqfs (install squashfs-tools-ng: apt install squashfs-tools-ng)")]
    NoTar2sqfs(#[source] io::Error),
    #[error("tar2sqfs failed ({status}): {stderr}")]
    Tar2sqfs {
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

/// A finished image file: its trailer's metadata, and the file's own (from the descriptor drun wrote it through).
pub struct Written {
    pub meta: Metadata,
    pub file: std::fs::Metadata,
}

/// A new image file being written: a temporary file beside `out` (created by drun, never a path an other user
/// could have put there), renamed into place once complete; removed if dropped before.
pub struct NewImageFile {
    file: std::fs::File,
    tmp: PathBuf,
    out: PathBuf,
}

impl NewImageFile {
    pub fn create(out: &Path) -> Result<NewImageFile, ExportError> {
        let dir = out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A random name, not a PID: in a shared image directory two nodes' PIDs may be the same.
        let tmp = dir.join(format!(
            ".{name}.drun-tmp-{}",
            random_hex().map_err(ExportError::NoRandom)?
        ));
        let create = |source| ExportError::Create {
            path: tmp.clone(),
            source,
        };
        // Read and written: the writer writes it, drun then hashes it and appends the trailer.
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
        Ok(NewImageFile {
            file: std::fs::File::from(fd),
            tmp,
            out: out.to_path_buf(),
        })
    }

    /// `cmd`, given the file as `/proc/self/fd/N` (its descriptor left open across exec for it): the writer writes
    /// through the descriptor drun created.
    fn pass_to(&self, cmd: &mut Command) -> String {
        let raw = self.file.as_raw_fd();
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
        format!("/proc/self/fd/{raw}")
    }

    /// Hashes the squashfs data the writer left, appends the trailer, syncs and renames the file into place.
    /// Returns also the file's metadata after the rename, from drun's own descriptor.
    pub fn finish(mut self, ids: ImageIds) -> Result<Written, ExportError> {
        let write = |source| ExportError::Write {
            path: self.tmp.clone(),
            source,
        };
        let size = self.file.metadata().map_err(write)?.len();
        let meta = Metadata {
            version: VERSION,
            name: ids.name.to_string(),
            manifest_digest: ids.manifest_digest.clone(),
            config_digest: ids.config_digest.clone(),
            squashfs_size: size,
            squashfs_digest: digest_prefix(&mut self.file, size).map_err(write)?,
            config: ids.config,
        };
        write_trailer(&mut self.file, &meta).map_err(write)?;
        self.file.sync_all().map_err(write)?;
        std::fs::rename(&self.tmp, &self.out).map_err(|source| ExportError::Write {
            path: self.out.clone(),
            source,
        })?;
        self.tmp = PathBuf::new();
        let file = self.file.metadata().map_err(|source| ExportError::Write {
            path: self.out.clone(),
            source,
        })?;
        Ok(Written { meta, file })
    }
}

impl Drop for NewImageFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `tree` as a squashfs image file at `out` (through a new temporary file beside it, renamed into place;
/// readable by everyone, as images are). `mem` bounds mksquashfs's cache (`-mem`; [`DEFAULT_MEM`] unless given).
pub fn write_image_file(tree: &Path, ids: ImageIds, out: &Path, mem: Option<&str>) -> Result<Written, ExportError> {
    let new = NewImageFile::create(out)?;
    let mut cmd = Command::new("mksquashfs");
    let target = new.pass_to(&mut cmd);
    cmd.arg(tree)
        .arg(target)
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
    let out_err = cmd.output().map_err(ExportError::NoMksquashfs)?;
    if !out_err.status.success() {
        return Err(ExportError::Mksquashfs {
            status: out_err.status,
            stderr: stderr_text(&out_err.stderr),
        });
    }
    new.finish(ids)
}

fn stderr_text(raw: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(raw).into_owned();
    text.truncate(4000);
    text.trim().to_string()
}

/// An image file written from a tar stream of the image's merged tree (see `image/unpack/merge.rs`) by
/// `tar2sqfs` (squashfs-tools-ng): nothing of the image is unpacked on the way. Dropped before
/// [`Self::finish`], the writer is killed and the file removed.
pub struct StreamedImageFile {
    new: Option<NewImageFile>,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl StreamedImageFile {
    /// Starts `tar2sqfs` writing `out` (through a temporary file), reading the tar from [`Self::take_input`].
    /// `queue_bytes` bounds the data blocks it holds (its `-Q`); its own default is ten per compressor thread.
    pub fn start(out: &Path, queue_bytes: Option<u64>) -> Result<StreamedImageFile, ExportError> {
        let new = NewImageFile::create(out)?;
        // One compressor per CPU drun may use (a Slurm step's cpuset, a cgroup's quota).
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut cmd = Command::new("tar2sqfs");
        let target = new.pass_to(&mut cmd);
        // SAFETY: prctl(2) is async-signal-safe and the closure allocates nothing. The writer dies with drun (its
        // input would end anyway; this also stops it mid-block).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.args(["--quiet", "--force", "--no-skip", "--compressor", "zstd"])
            // zstd level 3 (its own default), not squashfs-tools-ng's 15, for the reason `write_image_file` gives.
            .args(["--comp-extra", "level=3"])
            .args(["--num-jobs", &jobs.to_string()])
            // Parents no layer names: root's, 0755, as the unpacker makes them (and the image root).
            .args(["--defaults", "uid=0,gid=0,mode=0755,mtime=0"]);
        if let Some(bytes) = queue_bytes {
            // A queued block is 128 KiB of input and up to as much compressed.
            let blocks = (bytes / (256 << 10)).clamp(jobs as u64, 1 << 20);
            cmd.args(["--queue-backlog", &blocks.to_string()]);
        }
        cmd.arg(target)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tracing::debug!(command = ?cmd, "writing the image file from the merged layers");
        let mut child = cmd.spawn().map_err(ExportError::NoTar2sqfs)?;
        let stdin = child.stdin.take();
        Ok(StreamedImageFile {
            new: Some(new),
            child,
            stdin,
        })
    }

    /// Where the tar stream goes: the writer's input, closed when dropped (the end of the stream).
    pub fn take_input(&mut self) -> std::process::ChildStdin {
        self.stdin.take().expect("taken once")
    }

    /// Waits for the writer to end the file (the tar stream complete), then [`NewImageFile::finish`].
    pub fn finish(mut self, ids: ImageIds) -> Result<Written, ExportError> {
        let (status, stderr) = self.wait().map_err(ExportError::NoTar2sqfs)?;
        if !status.success() {
            return Err(ExportError::Tar2sqfs { status, stderr });
        }
        self.new.take().expect("finished once").finish(ids)
    }

    /// The writer's complaint, once it has stopped early (its input closed under it).
    pub fn failure(&mut self) -> Option<ExportError> {
        let (status, stderr) = self.wait().ok()?;
        (!status.success()).then_some(ExportError::Tar2sqfs { status, stderr })
    }

    /// Closes the writer's input and waits for it; its status and what it said (the first 64 KiB).
    fn wait(&mut self) -> io::Result<(std::process::ExitStatus, String)> {
        drop(self.stdin.take());
        let mut stderr = Vec::new();
        if let Some(e) = self.child.stderr.take() {
            let _ = e.take(64 << 10).read_to_end(&mut stderr);
        }
        let status = self.child.wait()?;
        Ok((status, stderr_text(&stderr)))
    }
}

impl Drop for StreamedImageFile {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
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
    let dir = store.root().join("tmp").join(format!("export-{}", random_hex()?));
    crate::sys::safe_fs::create_dir_mode(&dir, 0o700)?;
    Ok(WorkDir(dir))
}

/// 16 random hex digits.
fn random_hex() -> io::Result<String> {
    let mut b = [0u8; 8];
    #[allow(clippy::disallowed_methods)] // the kernel's device
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
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

/// Records that drun wrote and hashed this file (`image/squash/verified.rs`), and, as real root, that drun made a
/// file with this squashfs digest: only such files are given to the kernel to mount (see `run/squash_mount.rs`).
pub fn record_written(store: &crate::image::store::Store, written: &Written) {
    super::verified::record_written(store, &written.file, &written.meta.squashfs_digest);
    record_published(store, &written.meta);
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
