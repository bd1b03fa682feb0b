//! Image records in `images/`: one JSON file per image name (what `drun images` lists), written atomically and
//! last in a pull; aliases from what a user typed to a record's name; finding an image by name, alias or ID.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::blobs::STORED_DOC_MAX;
use super::keys::layer_key;
use super::{io_err, Store, StoreError};
use crate::digest::Digest;

/// The largest alias file read back (it holds one image name).
const ALIAS_MAX: u64 = 64 << 10;

/// One layer of a stored image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// Digest of the blob as the registry serves it (possibly compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar: the key of the unpacked layer, unless `chain_id` is set.
    pub diff_id: Digest,
    pub media_type: String,
    /// Size of the blob.
    pub size: u64,
    /// The layer's ChainID, when its unpacked tree depends on the layers below it (it has hardlinks to their
    /// files): it is then stored under this key (see the store's notes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<Digest>,
}

impl LayerRecord {
    /// The key of the unpacked layer in `layers/<idmap>/`.
    pub fn key(&self) -> String {
        layer_key(&self.diff_id, self.chain_id.as_ref())
    }
}

/// What the store knows about one image name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Canonical name, e.g. `127.0.0.1:5000/drun-test/busybox:latest` or `oci:/abs/dir:tag`.
    pub name: String,
    /// Digest of the manifest that was chosen (for an index, the platform's manifest).
    pub manifest_digest: Digest,
    /// Digest of the index or manifest list the name pointed to, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub config_digest: Digest,
    pub platform: String,
    pub layers: Vec<LayerRecord>,
    /// Unpacked size of all layers, in bytes.
    pub size: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub pulled_at: time::OffsetDateTime,
    /// Pulled with `--squash`: the image is the squashfs file [`Store::squash_file`] of its manifest digest, and
    /// `layers` is empty (nothing was unpacked into the store).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub squash: bool,
}

impl ImageRecord {
    /// The image ID as Docker shows it: the config digest.
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }
}

impl Store {
    /// Where `drun pull --squash` keeps an image's squashfs file: `squash/<manifest hex>.sqsh`.
    pub fn squash_file(&self, manifest_digest: &Digest) -> PathBuf {
        self.root.join("squash").join(format!("{}.sqsh", manifest_digest.hex()))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    /// Writes the record of `rec.name`, replacing the one there atomically.
    pub fn save_image(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(rec).expect("image record serialises");
        self.write_atomic(&self.record_path(&rec.name), &data)
    }

    /// The record of the image named exactly `name`, if there is one.
    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(name);
        match crate::sys::safe_fs::read_bounded(&path, STORED_DOC_MAX) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|source| StoreError::Unreadable { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Every image record, by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let e = e.map_err(io_err("list", &dir))?;
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                let data = crate::sys::safe_fs::read_bounded(&path, STORED_DOC_MAX).map_err(io_err("read", &path))?;
                out.push(serde_json::from_slice(&data).map_err(|source| StoreError::Unreadable { path, source })?);
            }
        }
        out.sort_by(|a: &ImageRecord, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Remembers that `typed` (e.g. `busybox`) names the image recorded as `name`, so later commands find it
    /// without normalising the reference again (oci-spec's reference regex costs ~45 ms per process to build).
    pub fn save_alias(&self, typed: &str, name: &str) -> Result<(), StoreError> {
        if typed == name {
            return Ok(());
        }
        let dir = self.root.join("images/aliases");
        crate::sys::safe_fs::create_dir_all_mode(&dir, 0o700).map_err(io_err("create", &dir))?;
        self.write_atomic(&dir.join(Digest::of(typed.as_bytes()).hex()), name.as_bytes())
    }

    /// The image `typed` names, by exact record name or a saved alias; `None` if neither exists.
    pub fn image_by_alias(&self, typed: &str) -> Result<Option<ImageRecord>, StoreError> {
        if let Some(r) = self.image(typed)? {
            return Ok(Some(r));
        }
        let alias = self
            .root
            .join("images/aliases")
            .join(Digest::of(typed.as_bytes()).hex());
        match crate::sys::safe_fs::read_bounded(&alias, ALIAS_MAX) {
            Ok(name) => self.image(&String::from_utf8_lossy(&name)),
            Err(_) => Ok(None),
        }
    }

    /// Finds an image by exact name, by one of `candidates` (normalised forms of what the user typed), or by an
    /// ID prefix (at least 4 hex characters of the config digest, as `docker images` shows).
    pub fn find_image(&self, typed: &str, candidates: &[String]) -> Result<ImageRecord, StoreError> {
        for c in candidates.iter().map(String::as_str).chain([typed]) {
            if let Some(r) = self.image(c)? {
                return Ok(r);
            }
        }
        let prefix = typed.strip_prefix("sha256:").unwrap_or(typed);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let found: Vec<ImageRecord> = self
                .images()?
                .into_iter()
                .filter(|r| r.config_digest.hex().starts_with(prefix) || r.manifest_digest.hex().starts_with(prefix))
                .collect();
            let mut ids: Vec<&Digest> = found.iter().map(|r| &r.config_digest).collect();
            ids.dedup();
            match ids.len() {
                0 => {}
                1 => return Ok(found.into_iter().next().expect("one match")),
                _ => {
                    return Err(StoreError::Ambiguous {
                        name: typed.to_string(),
                        candidates: found.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
                    })
                }
            }
        }
        Err(StoreError::UnknownImage(typed.to_string()))
    }

    /// Removes the record of the image named exactly `name` (its layers and blobs stay until garbage collection).
    pub fn remove_image(&self, name: &str) -> Result<(), StoreError> {
        let path = self.record_path(name);
        fs::remove_file(&path).map_err(io_err("remove", &path))
    }
}
