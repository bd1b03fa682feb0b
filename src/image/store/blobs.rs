//! Small blobs in `blobs/sha256/`: manifests, indexes and configs, written atomically and checked against their
//! digest when read back. Layer blobs are never kept here (see the store's notes).

use std::io;
use std::path::PathBuf;

use super::{io_err, Store, StoreError};
use crate::digest::Digest;

/// Image records, aliases and stored manifests and configs (fetched within image::limits' caps).
pub(super) const STORED_DOC_MAX: u64 = 64 << 20;

impl Store {
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The stored blob `digest`, if it is there; one whose content does not match its digest is an error.
    pub fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.blob_path(digest);
        // Manifests and configs, capped when they were fetched (image::limits); the cap here only bounds a store
        // someone tampered with.
        match crate::sys::safe_fs::read_bounded(&path, STORED_DOC_MAX) {
            Ok(data) if Digest::of(&data) == *digest => Ok(Some(data)),
            Ok(_) => Err(StoreError::DigestMismatch { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Stores a small verified blob (manifest, index, config). One already there is kept only if it still
    /// matches its digest: a damaged one (a power cut on a file system that wrote the rename before the data, a
    /// bad disk) is replaced, so that pulling again repairs it.
    pub fn write_blob(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        match self.read_blob(digest) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}: replacing it with the blob just fetched"),
        }
        self.write_atomic(&path, data)
    }
}
