//! Single-file images: an image's flattened root file system as one read-only squashfs file, with the image's
//! config in a trailer after the squashfs data, so that one file is all a cluster's nodes need.
//!
//! ```text
//! [squashfs image: SIZE bytes, 4 KiB-padded by mksquashfs][metadata JSON: LEN bytes][LEN: u64 LE]["DRUNSQFS"]
//! ```
//!
//! The kernel and squashfuse read a squashfs from its superblock and ignore what follows its `bytes_used`; drun
//! limits the loop device to SIZE anyway. The metadata names the image (manifest and config digests, the
//! name it was exported from), holds its config verbatim and the sha256 of the SIZE bytes of squashfs data, which
//! drun checks before the kernel is given the file (see `run/squash_mount.rs`).
//!
//! Where things are: `export.rs` (building the file from the store), this file (the trailer's format).

pub mod export;
pub mod verified;

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The last 8 bytes of a drun squashfs image.
pub const MAGIC: &[u8; 8] = b"DRUNSQFS";
/// The format version written in the metadata.
pub const VERSION: u32 = 1;
/// The most metadata drun reads: the image config (capped at [`crate::image::limits::MAX_CONFIG`]) and a little.
const MAX_METADATA: u64 = crate::image::limits::MAX_CONFIG + (64 << 10);

/// What the trailer says about the image in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub version: u32,
    /// The name the image was exported from (for `ps` and error messages).
    pub name: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Size and sha256 of the squashfs data before the trailer.
    pub squashfs_size: u64,
    pub squashfs_digest: Digest,
    /// The image config, verbatim (its digest is `config_digest`).
    pub config: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    #[error("cannot read {path:?}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path:?} is not a drun squashfs image (no drun trailer at its end; make one with `drun export IMAGE -o FILE.sqsh`)")]
    NoTrailer { path: PathBuf },
    #[error("invalid drun squashfs image {path:?}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A squashfs image file and its metadata, as found (not yet verified: see [`verify`]).
#[derive(Debug, Clone)]
pub struct SquashImage {
    pub file: PathBuf,
    pub meta: Metadata,
    /// The device and inode of the file the trailer was read from: what is mounted must be that file, not one a
    /// path swapped in since.
    pub identity: (u64, u64),
}

impl SquashImage {
    /// Reads the trailer of `file` (a regular file, opened without blocking; at most [`MAX_METADATA`] read).
    pub fn open(file: &Path) -> Result<SquashImage, SquashError> {
        let rd = |source| SquashError::Read {
            path: file.to_path_buf(),
            source,
        };
        let invalid = |reason: String| SquashError::Invalid {
            path: file.to_path_buf(),
            reason,
        };
        let mut f = crate::sys::safe_fs::open_regular(file, true).map_err(rd)?;
        let md = f.metadata().map_err(rd)?;
        let (total, identity) = (md.len(), (md.dev(), md.ino()));
        if total < 16 {
            return Err(SquashError::NoTrailer { path: file.into() });
        }
        let mut tail = [0u8; 16];
        f.seek(SeekFrom::Start(total - 16)).map_err(rd)?;
        f.read_exact(&mut tail).map_err(rd)?;
        if &tail[8..] != MAGIC {
            return Err(SquashError::NoTrailer { path: file.into() });
        }
        let len = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
        if len > MAX_METADATA || len > total - 16 {
            return Err(invalid(format!("its metadata claims {len} bytes")));
        }
        let start = total - 16 - len;
        f.seek(SeekFrom::Start(start)).map_err(rd)?;
        let mut buf = Vec::new();
        (&mut f).take(len).read_to_end(&mut buf).map_err(rd)?;
        let meta: Metadata =
            serde_json::from_slice(&buf).map_err(|e| invalid(format!("its metadata is not valid: {e}")))?;
        if meta.version != VERSION {
            return Err(invalid(format!(
                "format version {} (this drun reads version {VERSION}: upgrade drun)",
                meta.version
            )));
        }
        if meta.squashfs_size != start {
            return Err(invalid(format!(
                "its squashfs data is {start} bytes, the metadata says {}",
                meta.squashfs_size
            )));
        }
        Ok(SquashImage {
            file: file.to_path_buf(),
            meta,
            identity,
        })
    }

    /// The image's config (`config` of the image configuration; empty when it has none).
    pub fn config(&self) -> Result<oci_spec::image::Config, SquashError> {
        let c: oci_spec::image::ImageConfiguration =
            serde_json::from_value(self.meta.config.clone()).map_err(|e| SquashError::Invalid {
                path: self.file.clone(),
                reason: format!("its image config is not valid: {e}"),
            })?;
        Ok(c.config().clone().unwrap_or_default())
    }
}

/// Where drun records the squashfs digests it published as real root (one empty file per digest): only such files
/// are given to the kernel to mount.
pub fn published_dir(store: &crate::image::store::Store) -> PathBuf {
    store.cache_dir("squash-published")
}

/// The sha256 of the first `size` bytes of `f` (read from its start).
pub fn digest_prefix(f: &mut std::fs::File, size: u64) -> io::Result<Digest> {
    f.seek(SeekFrom::Start(0))?;
    let mut h = crate::digest::Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).expect("at most the buffer's length");
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than its metadata says",
            ));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finish())
}

/// Appends the trailer for `meta` to `f` (positioned at the end of the squashfs data).
pub fn write_trailer(f: &mut std::fs::File, meta: &Metadata) -> io::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    f.seek(SeekFrom::Start(meta.squashfs_size))?;
    f.write_all(&json)?;
    f.write_all(&(json.len() as u64).to_le_bytes())?;
    f.write_all(MAGIC)?;
    Ok(())
}

/// Whether `input` names a squashfs image file rather than a registry reference: `sqsh:FILE`, or an existing
/// file whose name ends in `.sqsh` or `.squashfs`.
pub fn is_squash_path(input: &str) -> Option<PathBuf> {
    if let Some(rest) = input.strip_prefix("sqsh:") {
        return Some(PathBuf::from(rest));
    }
    let named = input.ends_with(".sqsh") || input.ends_with(".squashfs");
    (named && std::fs::symlink_metadata(input).is_ok()).then(|| PathBuf::from(input))
}
