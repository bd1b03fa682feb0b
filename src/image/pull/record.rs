//! Recording a pulled image: its index, manifest and config go into the store's blobs, then one image record per
//! name, written last and atomically: a pull killed before this leaves no record of a half-pulled image.

use super::layers::PresentLayers;
use super::{PullError, PullReport};
use crate::digest::Digest;
use crate::image::store::{ImageRecord, LayerRecord, Store};

/// The documents of a resolved image and the names to record it under.
pub(super) struct ImageDocuments {
    pub names: Vec<String>,
    pub index: Option<(Vec<u8>, Digest)>,
    pub manifest: (Vec<u8>, Digest),
    pub config: (Vec<u8>, Digest),
    pub platform: String,
}

impl ImageDocuments {
    /// The documents of `resolved`, and its layers.
    pub(super) fn of(resolved: super::Resolved) -> (ImageDocuments, Vec<super::PendingLayer>) {
        let super::Resolved {
            names,
            index,
            manifest,
            config,
            platform,
            layers,
        } = resolved;
        let docs = ImageDocuments {
            names,
            index,
            manifest,
            config,
            platform,
        };
        (docs, layers)
    }

    /// Writes the index, manifest and config into the store's blobs. `name` is the image's, for errors.
    pub(super) fn write(&self, store: &Store, name: &str) -> Result<(), PullError> {
        let store_err = |source| PullError::Store {
            name: name.to_string(),
            source,
        };
        if let Some((data, digest)) = &self.index {
            store.write_blob(digest, data).map_err(store_err)?;
        }
        store
            .write_blob(&self.manifest.1, &self.manifest.0)
            .map_err(store_err)?;
        store.write_blob(&self.config.1, &self.config.0).map_err(store_err)
    }

    /// The record of this image under the name `name`, with `layers` (none for a squashfs image file) and `size`.
    pub(super) fn record(&self, name: String, layers: Vec<LayerRecord>, size: u64, squash: bool) -> ImageRecord {
        ImageRecord {
            squash,
            name,
            manifest_digest: self.manifest.1.clone(),
            index_digest: self.index.as_ref().map(|i| i.1.clone()),
            config_digest: self.config.1.clone(),
            platform: self.platform.clone(),
            layers,
            size,
            pulled_at: time::OffsetDateTime::now_utc(),
        }
    }
}

/// Writes the image's documents and records; the layers are already present. `name` is the image's, for errors.
pub(super) fn record_image(
    store: &Store,
    image: ImageDocuments,
    layers: PresentLayers,
    name: &str,
) -> Result<PullReport, PullError> {
    let store_err = |source| PullError::Store {
        name: name.to_string(),
        source,
    };
    image.write(store, name)?;
    crate::failpoint::hit("before-record");
    let mut records = Vec::new();
    let mut up_to_date = layers.fetched == 0;
    for n in &image.names {
        let previous = store.image(n).map_err(store_err)?;
        up_to_date &= previous.is_some_and(|p| p.manifest_digest == image.manifest.1);
        let rec = image.record(n.clone(), layers.records.clone(), layers.unpacked_bytes, false);
        store.save_image(&rec).map_err(store_err)?;
        records.push(rec);
    }
    Ok(PullReport {
        records,
        layers_fetched: layers.fetched,
        layers_reused: layers.reused,
        bytes_fetched: layers.bytes_fetched,
        up_to_date,
        elapsed: std::time::Duration::ZERO,
    })
}
