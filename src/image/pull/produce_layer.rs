//! Producing one layer in the store: under its locks, unpacked into a staging directory, its hardlinks into
//! lower layers resolved, then published by a rename. A failure removes the staging directory; a layer is never
//! visible in the store until it is complete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::download::unpack_into;
use super::verify::VerifiedLayer;
use super::{LayerError, PendingLayer};
use crate::digest::Digest;
use crate::image::store::{layer_key, remove_tree, LayerMeta, Store, StoreError, StoreLock};
use crate::image::unpack::{link_from_lower, LowerLink, MARKERS_FILE};

/// Makes one layer present in the store. Returns its metadata and whether this process produced it.
///
/// The layer is produced under the lock of its diff_id and, taken without waiting, that of its ChainID. Without
/// hardlinks into lower layers it is published under its diff_id; with them it depends on the layers below and is
/// published under its ChainID (see the store's notes), after the diff_id's lock is released and the lower layers
/// are there. A ChainID lock held by another process means that process is producing this layer over this chain:
/// it is waited for, holding nothing. So no lock is ever waited for while another is held.
pub(super) async fn ensure_layer(
    store: &Store,
    layer: PendingLayer,
    chain_id: Digest,
    lowers: Vec<(Digest, Digest)>,
    permit: tokio::sync::OwnedSemaphorePermit,
    cancel: tokio::sync::watch::Receiver<bool>,
    bar: indicatif::ProgressBar,
) -> Result<(LayerMeta, bool), LayerError> {
    let diff_id = layer.diff_id.clone();
    let idmap = store.idmap().to_string();
    let own_key = layer_key(&diff_id, None);
    let chain_key = layer_key(&diff_id, Some(&chain_id));
    let lock = lock_layer(store, &own_key).await?;
    if let Some(meta) = store
        .find_layer(&idmap, &diff_id, &chain_id)
        .and_then(|k| store.layer_meta(&idmap, &k))
    {
        return Ok((meta, false));
    }
    let (chain_lock, staging, v) = match store.lock_layer(&idmap, &chain_key, false)? {
        Some(chain_lock) => {
            let staging = store.layer_staging(&idmap, &own_key)?;
            let v = match unpack_into(store, &layer, &staging.join("root"), &cancel, &bar).await {
                Ok(v) => v,
                Err(e) => {
                    let _ = remove_tree(&staging);
                    return Err(e);
                }
            };
            if v.lower_links.is_empty() {
                let meta = publish(store, &own_key, &staging, &v, &diff_id, None)?;
                return Ok((meta, true));
            }
            // It depends on its lowers: the staging tree moves on to the ChainID's key.
            let to = store.layer_staging_path(&idmap, &chain_key);
            let moved = remove_tree(&to).and_then(|()| {
                std::fs::rename(&staging, &to).map_err(|source| StoreError::Io {
                    action: "move",
                    path: staging.clone(),
                    source,
                })
            });
            if let Err(e) = moved {
                let _ = remove_tree(&staging);
                return Err(e.into());
            }
            drop(lock);
            (chain_lock, to, v)
        }
        None => {
            // Another process is producing this layer over this chain: wait for it, holding nothing else.
            drop(lock);
            let chain_lock = lock_layer(store, &chain_key).await?;
            if let Some(meta) = store.layer_meta(&idmap, &chain_key) {
                return Ok((meta, false));
            }
            // It died before publishing: produce the layer here, under the chain's lock.
            let staging = store.layer_staging(&idmap, &chain_key)?;
            match unpack_into(store, &layer, &staging.join("root"), &cancel, &bar).await {
                Ok(v) => (chain_lock, staging, v),
                Err(e) => {
                    let _ = remove_tree(&staging);
                    return Err(e);
                }
            }
        }
    };
    // Its lower layers are produced by sibling tasks (or other processes): give the slot back and wait.
    drop(permit);
    if let Err(e) = link_lowers(store, &staging.join("root"), &v.lower_links, &lowers, cancel).await {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    let meta = publish(store, &chain_key, &staging, &v, &diff_id, Some(&chain_id))?;
    drop(chain_lock);
    Ok((meta, true))
}

/// Takes the lock of the layer `key`, waiting for it.
async fn lock_layer(store: &Store, key: &str) -> Result<StoreLock, LayerError> {
    let (s, k) = (store.clone(), key.to_string());
    let taken = tokio::task::spawn_blocking(move || s.lock_layer(s.idmap(), &k, true))
        .await
        .map_err(LayerError::Task)??;
    Ok(taken.expect("a lock taken with waiting is always taken"))
}

/// Waits for the lower layers (`(diff_id, ChainID)`, nearest first) to be published, then resolves the hardlinks
/// into them of the layer unpacked at `tree`.
async fn link_lowers(
    store: &Store,
    tree: &Path,
    links: &[LowerLink],
    lowers: &[(Digest, Digest)],
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<(), LayerError> {
    let roots = tokio::select! {
        r = wait_for_layers(store, lowers) => r,
        _ = cancel.wait_for(|v| *v) => return Err(LayerError::Cancelled),
    };
    let (t, links) = (tree.to_path_buf(), links.to_vec());
    tokio::task::spawn_blocking(move || link_from_lower(&t, &roots, &links))
        .await
        .map_err(LayerError::Task)?
        .map_err(LayerError::from)
}

/// Waits until every layer in `layers` (`(diff_id, ChainID)`) is published and returns their trees. The pull
/// fails (and aborts this task) if one cannot be.
async fn wait_for_layers(store: &Store, layers: &[(Digest, Digest)]) -> Vec<PathBuf> {
    loop {
        let found: Option<Vec<PathBuf>> = layers
            .iter()
            .map(|(d, c)| {
                store
                    .find_layer(store.idmap(), d, c)
                    .map(|k| store.layer_root(store.idmap(), &k))
            })
            .collect();
        if let Some(roots) = found {
            return roots;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a staged layer's metadata (and markers) and publishes it as `key`; the staging tree is removed if that
/// fails.
fn publish(
    store: &Store,
    key: &str,
    staging: &Path,
    v: &VerifiedLayer,
    diff_id: &Digest,
    chain_id: Option<&Digest>,
) -> Result<LayerMeta, LayerError> {
    tracing::debug!(%diff_id, key, entries = v.stats.entries, bytes = v.stats.bytes, whiteouts = v.stats.whiteouts,
        skipped_devices = v.stats.skipped_devices, lower_links = v.lower_links.len(), "layer unpacked");
    let meta = LayerMeta {
        diff_id: diff_id.clone(),
        chain_id: chain_id.cloned(),
        blob_digest: v.digest.clone(),
        blob_size: v.size,
        unpacked_bytes: v.stats.bytes,
        entries: v.stats.entries,
    };
    if !v.markers.is_empty() {
        let f = staging.join(MARKERS_FILE);
        if let Err(e) =
            crate::sys::safe_fs::write_new(&f, &serde_json::to_vec(&v.markers).expect("markers serialise"), 0o600)
        {
            let _ = remove_tree(staging);
            return Err(LayerError::Write { path: f, source: e });
        }
    }
    if let Err(e) = store.publish_layer(store.idmap(), key, staging, &meta) {
        let _ = remove_tree(staging);
        return Err(e.into());
    }
    Ok(meta)
}
