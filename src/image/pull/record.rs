//! Recording a pulled image: its index, manifest and config go into the store's blobs, then one image record per
//! name, written last and atomically: a pull killed before this leaves no record of a half-pulled image.

use super::layers::PresentLayers;
use super::{PullError, PullReport};
use crate::digest::Digest;
use crate::image::store::{ImageRecord, Store};

/// The documents of a resolved image and the names to record it under.
pub(super) struct ImageDocuments {
    pub names: Vec<String>,
    pub index: Option<(Vec<u8>, Digest)>,
    pub manifest: (Vec<u8>, Digest),
    pub config: (Vec<u8>, Digest),
    pub platform: String,
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
    if let Some((data, digest)) = &image.index {
        store.write_blob(digest, data).map_err(store_err)?;
    }
    store
        .write_blob(&image.manifest.1, &image.manifest.0)
        .map_err(store_err)?;
    store.write_blob(&image.config.1, &image.config.0).map_err(store_err)?;
    crate::failpoint::hit("before-record");
    let mut records = Vec::new();
    let mut up_to_date = layers.fetched == 0;
    for n in image.names {
        let previous = store.image(&n).map_err(store_err)?;
        up_to_date &= previous.is_some_and(|p| p.manifest_digest == image.manifest.1);
        let rec = ImageRecord {
            squash: false,
            name: n,
            manifest_digest: image.manifest.1.clone(),
            index_digest: image.index.as_ref().map(|i| i.1.clone()),
            config_digest: image.config.1.clone(),
            platform: image.platform.clone(),
            layers: layers.records.clone(),
            size: layers.unpacked_bytes,
            pulled_at: time::OffsetDateTime::now_utc(),
        };
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
