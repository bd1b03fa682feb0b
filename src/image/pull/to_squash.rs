//! Pulling straight into a squashfs image file (`pull --squash`, image-directory conversions): the source
//! resolved as for any pull, then each layer, from the top one down, downloaded (or read from the blob cache or a
//! local file), verified and merged into one tar stream (`image/unpack/merge.rs`) that `tar2sqfs` writes into the
//! file (`image/squash/export.rs`). Nothing is unpacked and no layer enters the store; the image's index,
//! manifest and config do. A blob that fails its digest check fails the conversion, and the unfinished file is
//! removed.
//!
//! Layers are read one at a time, top first, as the merge needs; their downloads are not concurrent. A layer the
//! merge cannot stream ends the attempt with [`Streamed::NotStreamable`], and the caller converts through an
//! unpacked copy.

use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Duration;

use super::download::read_layer;
use super::record::ImageDocuments;
use super::{resolve_source, runtime, LayerError, PullError, PullOptions, Resolved};
use crate::digest::Digest;
use crate::image::platform::Platform;
use crate::image::registry::config::Config;
use crate::image::source::ImageSource;
use crate::image::squash::export::{ExportError, ImageIds, StreamedImageFile, Written};
use crate::image::store::{ImageRecord, Store};
use crate::image::unpack::{LayerMerge, MergeError};
use crate::progress::Progress;

/// How a streamed pull ended.
pub enum Streamed {
    Written {
        /// The image's records, for the caller to save or not (`squash: true`, no layers).
        records: Vec<ImageRecord>,
        file: Box<Written>,
        layers: usize,
    },
    /// A layer cannot be streamed (see `image/unpack/merge.rs`); nothing was written.
    NotStreamable(MergeError),
}

/// Pulls `source` into the image file `out(manifest digest)`, which names it (and may make its directory).
/// `queue_bytes` bounds tar2sqfs's queue (see [`StreamedImageFile::start`]). The caller holds the store's lock
/// shared.
pub fn pull_to_squash(
    store: &Store,
    cfg: &Config,
    source: &ImageSource,
    opts: &PullOptions,
    out: &dyn Fn(&Digest) -> Result<PathBuf, ExportError>,
    queue_bytes: Option<u64>,
) -> Result<Streamed, PullError> {
    let name = source.canonical_name();
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let progress = Progress::new(opts.quiet);
    let rt = runtime(&name)?;
    let res = rt.block_on(async {
        let resolved = resolve_source(cfg, store, source, &platform, &name).await?;
        stream(store, resolved, out, queue_bytes, &progress, &name).await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    res
}

async fn stream(
    store: &Store,
    resolved: Resolved,
    out: &dyn Fn(&Digest) -> Result<PathBuf, ExportError>,
    queue_bytes: Option<u64>,
    progress: &Progress,
    name: &str,
) -> Result<Streamed, PullError> {
    let (image, layers) = ImageDocuments::of(resolved);
    let squash_err = |source| PullError::Squash {
        name: name.to_string(),
        source,
    };
    let path = out(&image.manifest.1).map_err(squash_err)?;
    // Parsed by the resolver already (it read the layers' diff_ids there).
    let config: serde_json::Value = serde_json::from_slice(&image.config.0).map_err(|e| {
        squash_err(ExportError::Write {
            path: path.clone(),
            source: std::io::Error::other(format!("the image config is not JSON: {e}")),
        })
    })?;
    let mut writer = StreamedImageFile::start(&path, queue_bytes).map_err(squash_err)?;
    // The writer stopped reading: what it said is the reason.
    let writer_failed = |writer: &mut StreamedImageFile, source: std::io::Error| {
        squash_err(writer.failure().unwrap_or(ExportError::Write {
            path: path.clone(),
            source,
        }))
    };
    let mut merge = LayerMerge::new(BufWriter::with_capacity(1 << 20, writer.take_input()));
    let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
    for (i, layer) in layers.iter().enumerate().rev() {
        let bar = progress.bar(layer.diff_id.short(), layer.size);
        let read = read_layer(store, layer, &cancel, &bar, move |tar| {
            merge.add_layer(tar)?;
            Ok(merge)
        })
        .await;
        bar.finish_and_clear();
        merge = match read {
            Ok(m) => m,
            Err(LayerError::Merge(e @ MergeError::NotStreamable { .. })) => return Ok(Streamed::NotStreamable(e)),
            Err(LayerError::Merge(MergeError::Write(e))) => return Err(writer_failed(&mut writer, e)),
            Err(e) => {
                return Err(PullError::Layer {
                    name: name.to_string(),
                    digest: layer.digest.clone().unwrap_or_else(|| layer.diff_id.clone()),
                    source: Box::new(e),
                })
            }
        };
        if i + 1 == layers.len() {
            // Mid-conversion: the writer has part of the image (the Slurm test kills a producer here).
            crate::failpoint::hit("squash-streaming");
            crate::failpoint::pause("squash-streaming");
        }
    }
    // The end of the stream, and of the writer's input.
    if let Err(e) = merge
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| MergeError::Write(e.into_error())))
    {
        return Err(writer_failed(&mut writer, std::io::Error::other(e)));
    }
    let file = writer
        .finish(ImageIds {
            name,
            manifest_digest: &image.manifest.1,
            config_digest: &image.config.1,
            config,
        })
        .map_err(squash_err)?;
    image.write(store, name)?;
    let records = image
        .names
        .iter()
        .map(|n| image.record(n.clone(), vec![], file.meta.squashfs_size, true))
        .collect();
    Ok(Streamed::Written {
        records,
        file: Box::new(file),
        layers: layers.len(),
    })
}
