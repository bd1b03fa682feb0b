//! Making every layer of a resolved image present in the store: a layer already published is reused, the others
//! are produced concurrently (at most [`CONCURRENT_LAYERS`] at once), and the first failure cancels the rest.

use std::sync::Arc;

use super::produce_layer::ensure_layer;
use super::{PendingLayer, PullError};
use crate::digest::Digest;
use crate::image::store::{chain_ids, LayerMeta, LayerRecord, Store};
use crate::progress::Progress;

/// Layers downloaded and unpacked at once.
const CONCURRENT_LAYERS: usize = 6;

/// The layers of an image, all present in the store.
pub(super) struct PresentLayers {
    /// Bottom first, as the image record lists them.
    pub records: Vec<LayerRecord>,
    /// Unpacked size of all layers, in bytes.
    pub unpacked_bytes: u64,
    pub fetched: usize,
    pub reused: usize,
    pub bytes_fetched: u64,
}

/// Makes every layer of `layers` (bottom first) present in `store`; `name` is the image's, for errors.
pub(super) async fn make_layers_present(
    store: &Store,
    layers: Vec<PendingLayer>,
    progress: &Progress,
    name: &str,
) -> Result<PresentLayers, PullError> {
    let mut tasks = tokio::task::JoinSet::new();
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LAYERS));
    let mut reused = 0;
    let mut order = Vec::new();
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let chains = chain_ids(&diff_ids);
    let mut metas: Vec<Option<LayerMeta>> = vec![None; diff_ids.len()];
    for (i, layer) in layers.into_iter().enumerate() {
        order.push(layer.media_type.clone());
        if let Some(meta) = store
            .find_layer(store.idmap(), &layer.diff_id, &chains[i])
            .and_then(|k| store.layer_meta(store.idmap(), &k))
        {
            reused += 1;
            metas[i] = Some(meta);
            continue;
        }
        let store = store.clone();
        let bar = progress.bar(layer.diff_id.short(), layer.size);
        let limit = limit.clone();
        let lowers: Vec<(Digest, Digest)> = (0..i).rev().map(|j| (diff_ids[j].clone(), chains[j].clone())).collect();
        let chain_id = chains[i].clone();
        let cancel = cancel_rx.clone();
        tasks.spawn(async move {
            let permit = limit.acquire_owned().await.expect("semaphore is never closed");
            let label = layer.digest.clone().unwrap_or_else(|| layer.diff_id.clone());
            let res = ensure_layer(&store, layer, chain_id, lowers, permit, cancel, bar.clone()).await;
            bar.finish_and_clear();
            (i, label, res)
        });
    }
    let mut fetched = 0;
    let mut bytes_fetched = 0;
    let mut first_err = None;
    while let Some(joined) = tasks.join_next().await {
        let (i, label, res) = joined.map_err(|source| PullError::Task {
            name: name.to_string(),
            source,
        })?;
        match res {
            Ok((meta, did_fetch)) => {
                if did_fetch {
                    fetched += 1;
                    bytes_fetched += meta.blob_size;
                } else {
                    reused += 1;
                }
                metas[i] = Some(meta);
            }
            Err(source) if first_err.is_none() => {
                first_err = Some(PullError::Layer {
                    name: name.to_string(),
                    digest: label,
                    source: Box::new(source),
                });
                // Siblings stop at their next chunk and clean up their own staging directories.
                let _ = cancel_tx.send(true);
            }
            Err(_) => {}
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let mut records = Vec::new();
    let mut unpacked_bytes = 0;
    for ((meta, media_type), diff_id) in metas.into_iter().zip(order).zip(diff_ids) {
        // Every layer was either reused or produced by a task; a failed task returned above.
        let meta = meta.expect("every layer has a result");
        unpacked_bytes += meta.unpacked_bytes;
        records.push(LayerRecord {
            digest: meta.blob_digest,
            diff_id,
            media_type,
            size: meta.blob_size,
            chain_id: meta.chain_id,
        });
    }
    Ok(PresentLayers {
        records,
        unpacked_bytes,
        fetched,
        reused,
        bytes_fetched,
    })
}
