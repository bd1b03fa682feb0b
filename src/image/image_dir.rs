//! The shared image directory (`--image-dir DIR`, `DRUN_IMAGE_DIR`, config `image_dir`): squashfs image files on a
//! file system many nodes mount, each image converted once by one producer and used by every node.
//!
//! ```text
//! DIR/<manifest hex>.sqsh          the image file (drun's squashfs format, `image/squash/`), 0644
//! DIR/images/<sha256(name)>.json   its publish record: name, file, size, squashfs size and digest; written last
//! DIR/locks/<sha256(name)>.lock    flock(2) held by the producer of that name
//! DIR/locks/<sha256(name)>.lease   the fallback where flock fails (a lock file with a lease, below)
//! ```
//!
//! Readers take no lock: a record exists only once its file was renamed into place, and a reader checks the file
//! against the record (size, and the sha256 of its squashfs data: once per node and file, cached by device,
//! inode, size and times in the local store) before it is used. A producer takes the name's lock, looks again,
//! and converts; the others wait for the lock and then find the record. `flock` is released by the kernel when a
//! producer dies. Where the file system refuses `flock` (Lustre mounted `noflock`: `ENOSYS`/`EOPNOTSUPP`; NFS
//! without a lock manager: `ENOLCK`), the producer creates the lease file instead (`O_EXCL`) and renews its
//! modification time while it works; a lease not renewed for `DRUN_IMAGE_DIR_LEASE` seconds (default 60) is
//! taken over. A lease taken over by two waiters at once can let both convert: both publish the same verified
//! file by rename, so that costs time, never correctness. (NFS mounted `nolock` makes `flock` local to a node
//! without an error: no program can notice; such a site must not share an image directory that way.)

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::squash::verified::{check_once, CheckError};
use crate::image::squash::{Metadata, SquashImage};
use crate::image::store::Store;

/// The largest publish record read.
const RECORD_MAX: u64 = 64 << 10;

/// What a producer recorded about the file it published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    pub name: String,
    pub manifest_digest: Digest,
    /// The file's name in the directory.
    pub file: String,
    /// The whole file's size.
    pub size: u64,
    pub squashfs_size: u64,
    pub squashfs_digest: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageDirError {
    #[error("cannot use the image directory {path:?}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the image file {path:?} in the image directory is not what was published ({why}): remove it and its record {record:?} to convert the image again")]
    Mismatch {
        path: PathBuf,
        record: PathBuf,
        why: String,
    },
    #[error(transparent)]
    Squash(#[from] crate::image::squash::SquashError),
}

/// An image directory.
#[derive(Debug, Clone)]
pub struct ImageDir {
    dir: PathBuf,
}

impl ImageDir {
    /// Opens `dir`, creating it and its subdirectories (readable by everyone: nodes and users share it).
    pub fn open(dir: &Path) -> Result<ImageDir, ImageDirError> {
        for sub in ["images", "locks"] {
            let p = dir.join(sub);
            crate::sys::safe_fs::create_dir_all_mode(&p, 0o755).map_err(|source| ImageDirError::Io {
                path: p.clone(),
                source,
            })?;
        }
        Ok(ImageDir { dir: dir.to_path_buf() })
    }

    fn key(name: &str) -> String {
        Digest::of(name.as_bytes()).hex().to_string()
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join("images").join(format!("{}.json", Self::key(name)))
    }

    /// Where the file of the image with this manifest digest goes.
    pub fn file_for(&self, manifest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.sqsh", manifest.hex()))
    }

    /// The published file of `name`, checked against its record; `None` when nothing is published. As real root,
    /// a verified file's squashfs digest is recorded as published in `store`, so the kernel may mount it, only when
    /// the file, its record and the directories holding them are root's and no one else can write them (see
    /// `run/squash_mount.rs`).
    pub fn lookup(&self, name: &str, store: &Store) -> Result<Option<PathBuf>, ImageDirError> {
        let record = self.record_path(name);
        let io_err = |source| ImageDirError::Io {
            path: record.clone(),
            source,
        };
        let data = match crate::sys::safe_fs::read_bounded(&record, RECORD_MAX) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let rec: Published = serde_json::from_slice(&data).map_err(|e| io_err(io::Error::other(e)))?;
        let file = self.dir.join(Path::new(&rec.file).file_name().unwrap_or_default());
        let mismatch = |why: String| ImageDirError::Mismatch {
            path: file.clone(),
            record: record.clone(),
            why,
        };
        let mut f = crate::sys::safe_fs::open_regular(&file, false).map_err(|source| ImageDirError::Io {
            path: file.clone(),
            source,
        })?;
        let md = f.metadata().map_err(|source| ImageDirError::Io {
            path: file.clone(),
            source,
        })?;
        if md.len() != rec.size {
            return Err(mismatch(format!("{} bytes, {} published", md.len(), rec.size)));
        }
        let image = SquashImage::open(&file)?;
        if image.meta.squashfs_digest != rec.squashfs_digest || image.meta.squashfs_size != rec.squashfs_size {
            return Err(mismatch("its trailer names other squashfs data".into()));
        }
        // Once per node and file (`image/squash/verified.rs`).
        check_once(store, &mut f, &md, &rec.squashfs_digest, rec.squashfs_size).map_err(|e| match e {
            CheckError::Io(source) => ImageDirError::Io {
                path: file.clone(),
                source,
            },
            CheckError::Digest(actual) => mismatch(format!("its squashfs data hashes to {actual}")),
        })?;
        // Only a publication no one but root could have made counts as root's own: the file, its record, the
        // records' directory and the image directory root's and writable by no one else, on a file system whose
        // owners the kernel keeps (not FUSE, whose daemon reports them). (Any user who can write
        // the directory could otherwise have root's kernel parse bytes of theirs; such files go to squashfuse.)
        let root_only = |m: &std::fs::Metadata| m.uid() == 0 && m.mode() & 0o022 == 0;
        let dir_images = self.dir.join("images");
        let around = [&record, &dir_images, &self.dir];
        if root_only(&md)
            && !crate::sys::fs_type::is_fuse(&f)
            && around
                .iter()
                .all(|p| std::fs::symlink_metadata(p).is_ok_and(|m| root_only(&m)))
        {
            crate::image::squash::export::record_published(store, &image.meta);
        }
        Ok(Some(file))
    }

    /// Publishes the file `file` that a conversion of `name` wrote (already renamed into place and synced): the
    /// directory synced, then the record written through a temporary file, synced and renamed.
    pub fn publish(&self, name: &str, file: &Path, meta: &Metadata) -> Result<(), ImageDirError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageDirError::Io { path, source }
        };
        let size = std::fs::symlink_metadata(file).map_err(io_err(file))?.len();
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        let rec = Published {
            name: name.to_string(),
            manifest_digest: meta.manifest_digest.clone(),
            file: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size,
            squashfs_size: meta.squashfs_size,
            squashfs_digest: meta.squashfs_digest.clone(),
        };
        let path = self.record_path(name);
        let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = crate::sys::safe_fs::create_new(&tmp, 0o644).map_err(io_err(&tmp))?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io_err(&tmp))?;
        f.write_all(&serde_json::to_vec_pretty(&rec).expect("serialises"))
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&path.with_file_name("")).map_err(io_err(&path))
    }

    /// Removes what producers killed mid-conversion left of `file`: its temporary files (`.NAME.drun-tmp-*`, see
    /// `image/squash/export.rs`) not modified for ten lease times (ten minutes by default). A live writer
    /// modifies its file as the image streams in; one that stalled that long finds its file gone and fails, and
    /// the image is converted again. Called by the producer, under the lock.
    pub fn remove_stale_partials(&self, file: &Path) {
        let Some(name) = file.file_name() else { return };
        let prefix = format!(".{}.drun-tmp-", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let path = e.path();
            let stale = std::fs::symlink_metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| m.modified().ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > 10 * lease_time());
            if stale && std::fs::remove_file(&path).is_ok() {
                tracing::info!(file = %path.display(), "removed what a stopped conversion left");
            }
        }
    }

    /// The producer's lock for `name`: `flock`, or the lease where the file system refuses it.
    pub fn lock(&self, name: &str) -> Result<DirLock, ImageDirError> {
        let path = self.dir.join("locks").join(format!("{}.lock", Self::key(name)));
        let io_err = |source| ImageDirError::Io {
            path: path.clone(),
            source,
        };
        let f = crate::sys::safe_fs::open_or_create(&path, 0o644).map_err(io_err)?;
        let locked = if crate::failpoint::error("image-dir-flock") {
            Err(nix::errno::Errno::ENOLCK)
        } else {
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e)
        };
        match locked {
            Ok(l) => Ok(DirLock::Flock(l)),
            Err(e @ (nix::errno::Errno::ENOLCK | nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS)) => {
                tracing::debug!(error = %e, "flock refused in the image directory: using a lease file");
                Lease::take(&path.with_extension("lease"))
                    .map(DirLock::Lease)
                    .map_err(|source| ImageDirError::Io {
                        path: path.with_extension("lease"),
                        source,
                    })
            }
            Err(e) => Err(io_err(e.into())),
        }
    }
}

/// A held producer lock (released when dropped).
pub enum DirLock {
    Flock(#[allow(dead_code)] nix::fcntl::Flock<File>),
    Lease(Lease),
}

/// A lease file: held while its modification time is renewed (a thread touches it every quarter of the lease).
pub struct Lease {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

/// How long a lease lasts without renewal: `DRUN_IMAGE_DIR_LEASE` seconds, 60 unless set.
fn lease_time() -> Duration {
    let secs = std::env::var("DRUN_IMAGE_DIR_LEASE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(60);
    Duration::from_secs(secs)
}

impl Lease {
    /// Waits until the lease at `path` is free or expired, then takes it.
    fn take(path: &Path) -> io::Result<Lease> {
        let ttl = lease_time();
        loop {
            match crate::sys::safe_fs::create_new(path, 0o644) {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    let stop = Arc::new(AtomicBool::new(false));
                    let renewer = {
                        let stop = stop.clone();
                        let every = (ttl / 4).max(Duration::from_millis(250));
                        std::thread::Builder::new()
                            .name("image-dir-lease".into())
                            .spawn(move || {
                                while !stop.load(Ordering::Relaxed) {
                                    std::thread::park_timeout(every);
                                    let _ = f.set_modified(SystemTime::now());
                                }
                            })?
                    };
                    return Ok(Lease {
                        path: path.to_path_buf(),
                        stop,
                        renewer: Some(renewer),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let age = std::fs::symlink_metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    if age.is_some_and(|a| a > ttl) {
                        // Moved aside, not removed: of several waiters, one rename succeeds.
                        let aside = path.with_extension(format!("stale-{}", std::process::id()));
                        if std::fs::rename(path, &aside).is_ok() {
                            let _ = std::fs::remove_file(&aside);
                            tracing::warn!(lease = %path.display(), "took over the lease of an image producer that stopped renewing it");
                        }
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.renewer.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    crate::sys::safe_fs::open_dir_nofollow(dir)?.sync_all()
}
