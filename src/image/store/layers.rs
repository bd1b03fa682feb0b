//! Unpacked layers in `layers/<idmap>/<key>/`: where a layer is staged while it is produced, how it is published
//! (one rename of a complete directory, [`LAYER_META`] written last inside it), and how a published one is found.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keys::layer_key;
use super::{io_err, remove_tree, unique, Store, StoreError};
use crate::digest::Digest;

/// Metadata kept beside an unpacked layer ([`LAYER_META`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: Digest,
    /// Set when the tree depends on the layers below (it is stored under this ChainID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<Digest>,
    pub blob_digest: Digest,
    pub blob_size: u64,
    pub unpacked_bytes: u64,
    pub entries: u64,
}

/// The file beside a layer's `root/` that holds its [`LayerMeta`]; written last, before the rename that publishes
/// the layer, so a layer with it is complete. (Layers published before ChainID keys have `meta.json`.)
pub const LAYER_META: &str = "layer.json";
/// Largest [`LAYER_META`] read back (it is a few hundred bytes).
const LAYER_META_MAX: u64 = 64 << 10;

impl Store {
    /// The staging directory of the layer `key` (see [`layer_key`]); only the holder of its lock uses it.
    pub fn layer_staging_path(&self, idmap: &str, key: &str) -> PathBuf {
        self.root.join("tmp").join(format!("layer-{idmap}-{key}"))
    }

    /// A fresh staging directory for the layer `key`; the caller holds the layer's lock, so anything already there
    /// is debris of a producer that died and is removed.
    pub fn layer_staging(&self, idmap: &str, key: &str) -> Result<PathBuf, StoreError> {
        let dir = self.layer_staging_path(idmap, key);
        remove_tree(&dir)?;
        let tree = dir.join("root");
        crate::sys::safe_fs::create_dir_all_mode(&dir, 0o700).map_err(io_err("create", &dir))?;
        // The layer's root directory: 0755 unless the layer's own `./` entry says otherwise.
        crate::sys::safe_fs::create_dir_mode(&tree, 0o755).map_err(io_err("create", &tree))?;
        Ok(dir)
    }

    /// Publishes a staged layer as `key` by renaming it into place (the caller holds the key's lock). A tree
    /// already there without [`LAYER_META`] (from before ChainID keys, see the store's notes) is moved to `tmp/`
    /// first, left for garbage collection.
    pub fn publish_layer(&self, idmap: &str, key: &str, staging: &Path, meta: &LayerMeta) -> Result<(), StoreError> {
        let meta_path = staging.join(LAYER_META);
        crate::sys::safe_fs::write_new(
            &meta_path,
            &serde_json::to_vec_pretty(meta).expect("layer metadata serialises"),
            0o600,
        )
        .map_err(io_err("write", &meta_path))?;
        let parent = self.root.join("layers").join(idmap);
        crate::sys::safe_fs::create_dir_all_mode(&parent, 0o700).map_err(io_err("create", &parent))?;
        let dest = self.layer_dir(idmap, key);
        if fs::symlink_metadata(&dest).is_ok() {
            let old =
                self.root
                    .join("tmp")
                    .join(format!("old-layer-{idmap}-{key}.{}.{}", std::process::id(), unique()));
            fs::rename(&dest, &old).map_err(io_err("move aside", &dest))?;
        }
        // Durable before it is visible: a power cut must not leave a published layer with files missing or
        // short (the kernel may write the rename before the data; see docs/store.md, Crash safety).
        super::sync_file_system(staging)?;
        crate::failpoint::hit("layer-before-publish");
        fs::rename(staging, &dest).map_err(io_err("publish", &dest))?;
        super::sync_parent(&dest)?;
        crate::failpoint::hit("layer-after-publish");
        Ok(())
    }

    /// The metadata of the published layer `key`.
    pub fn layer_meta(&self, idmap: &str, key: &str) -> Option<LayerMeta> {
        let data =
            crate::sys::safe_fs::read_bounded(&self.layer_dir(idmap, key).join(LAYER_META), LAYER_META_MAX).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// The directory of the layer `key` (see [`layer_key`]).
    pub fn layer_dir(&self, idmap: &str, key: &str) -> PathBuf {
        self.root.join("layers").join(idmap).join(key)
    }

    /// The unpacked tree of a published layer.
    pub fn layer_root(&self, idmap: &str, key: &str) -> PathBuf {
        self.layer_dir(idmap, key).join("root")
    }

    /// Whether the layer `key` is published (complete) for this ID mapping.
    pub fn has_layer(&self, idmap: &str, key: &str) -> bool {
        self.layer_dir(idmap, key).join(LAYER_META).is_file()
    }

    /// The key under which the layer `diff_id`, with ChainID `chain_id` in the image being pulled, is published:
    /// its diff_id when its tree depends on its own tar alone, else its ChainID; `None` if neither is there.
    pub fn find_layer(&self, idmap: &str, diff_id: &Digest, chain_id: &Digest) -> Option<String> {
        [layer_key(diff_id, None), layer_key(diff_id, Some(chain_id))]
            .into_iter()
            .find(|k| self.has_layer(idmap, k))
    }
}
