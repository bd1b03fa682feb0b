//! The shared blob cache (`--blob-cache DIR`): verified compressed layer blobs in `DIR/sha256/<hex>`, readable by
//! every user of the cache. Another user may have written a blob there, or planted anything under its name:
//! a blob is used only if it is a regular file with the expected size and digest, checked before anything is
//! decompressed, and added only once the download it copies is verified.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::Store;
use crate::digest::{Digest, HashingReader};

/// Why a blob in the cache is not used.
#[derive(Debug, thiserror::Error)]
enum BadCachedBlob {
    #[error("{actual} bytes, expected {expected}")]
    Size { actual: u64, expected: u64 },
    #[error("its content is {0}")]
    Content(Digest),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Store {
    /// The blob cache's copy of `digest`, if there is one that is what it claims: a regular file (not through a
    /// symlink) of `size` bytes whose sha256 is `digest`, checked before anything is decompressed. Another user
    /// may have written it, or planted something else under its name: the open never blocks (a FIFO would hang
    /// the pull) and anything but a regular file is ignored with a warning. Returns the file, verified and
    /// rewound, so that what is unpacked is what was checked.
    pub fn cached_blob(&self, digest: &Digest, size: u64) -> Option<(PathBuf, File)> {
        let p = self.blob_cache.as_ref()?.join("sha256").join(digest.hex());
        let mut f = match crate::sys::safe_fs::open_regular(&p, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(blob = %p.display(), error = %e, "ignoring a bad blob in the blob cache");
                return None;
            }
        };
        let meta = f.metadata().ok()?;
        let verdict = if meta.len() != size {
            Err(BadCachedBlob::Size {
                actual: meta.len(),
                expected: size,
            })
        } else {
            match HashingReader::new(io::BufReader::with_capacity(1 << 20, &f)).finish() {
                Ok((d, _)) if d == *digest => Ok(()),
                Ok((d, _)) => Err(BadCachedBlob::Content(d)),
                Err(e) => Err(e.into()),
            }
        };
        match verdict.and_then(|()| f.rewind().map_err(BadCachedBlob::from)) {
            Ok(()) => Some((p, f)),
            Err(why) => {
                tracing::warn!(blob = %p.display(), %why, "ignoring a bad blob in the blob cache");
                None
            }
        }
    }

    /// A temporary file in the blob cache to copy a download of `digest` into, when the cache is writable.
    pub fn blob_cache_writer(&self, digest: &Digest) -> Option<(File, PathBuf)> {
        let dir = self.blob_cache.as_ref()?.join("sha256");
        // Readable by the cache's other users whatever drun's (private) umask.
        if let Err(e) = crate::sys::safe_fs::create_dir_all_mode(&dir, 0o755) {
            tracing::debug!(dir = %dir.display(), error = %e, "blob cache not writable");
            return None;
        }
        let tmp = dir.join(format!(".tmp-{}-{}", digest.hex(), std::process::id()));
        // A new file only, never through a name someone else planted (the cache may be shared and writable).
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp);
        match created {
            Ok(f) => Some((f, tmp)),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "blob cache not writable");
                None
            }
        }
    }

    /// Publishes a verified download in the blob cache when the copy is complete (`size` bytes), readable by
    /// everyone. The mode is set on the open file, never through the name (the directory may be shared).
    pub fn publish_cached_blob(&self, file: &File, tmp: &Path, digest: &Digest, size: u64) {
        let Some(dir) = self.blob_cache.as_ref().map(|d| d.join("sha256")) else {
            return;
        };
        let complete = file.metadata().is_ok_and(|m| m.len() == size);
        let ok = complete
            && file
                .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .is_ok()
            && fs::rename(tmp, dir.join(digest.hex())).is_ok();
        if !ok {
            tracing::debug!(complete, "blob not added to the blob cache");
            let _ = fs::remove_file(tmp);
        }
    }
}
