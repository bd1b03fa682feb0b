//! Resolving a registry reference to one image for one platform: its manifest (chosen from an index for the
//! platform), its config, and the layers to make present, each with its expected identity and where its bytes
//! come from. Nothing is written to the store here.

use std::path::PathBuf;
use std::sync::Arc;

use oci_client::Reference;

use super::PullError;
use crate::digest::Digest;
use crate::image::manifest::{config_layers, parse_manifest, Descriptor, ManifestError, ParsedManifest};
use crate::image::platform::{select_platform, Platform};
use crate::image::registry::config::Config;
use crate::image::registry::{Registry, RegistryError};
use crate::image::store::Store;

/// Where a layer's bytes come from.
#[derive(Clone)]
pub enum LayerFetch {
    Registry(Arc<Registry>),
    /// A byte range of a local file (a blob in an OCI layout, or a member of a docker archive).
    File {
        path: PathBuf,
        offset: u64,
    },
}

/// A layer to make present: its expected identity and where to get it.
pub struct PendingLayer {
    /// Expected blob digest, when the source names one (a docker archive's legacy layout does not).
    pub digest: Option<Digest>,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
    pub fetch: LayerFetch,
}

/// A source resolved to one image for one platform, ready to be fetched.
pub struct Resolved {
    pub names: Vec<String>,
    pub index: Option<(Vec<u8>, Digest)>,
    pub manifest: (Vec<u8>, Digest),
    pub config: (Vec<u8>, Digest),
    pub platform: String,
    pub layers: Vec<PendingLayer>,
}

/// Checks a config against its manifest's layers and pairs them up; returns the layers and the config's platform.
pub(crate) fn pending_layers(
    config: &[u8],
    layers: &[Descriptor],
    fetch: impl Fn(&Descriptor) -> LayerFetch,
) -> Result<(Vec<PendingLayer>, String), ManifestError> {
    let found = config_layers(config, layers)?;
    let pending = layers
        .iter()
        .zip(found.diff_ids)
        .map(|(d, diff_id)| PendingLayer {
            digest: Some(d.digest.clone()),
            diff_id,
            size: d.size,
            media_type: d.media_type.clone(),
            fetch: fetch(d),
        })
        .collect();
    Ok((pending, found.platform))
}

/// Resolves `reference` (recorded as `name`) against its registry.
pub(super) async fn resolve_registry(
    cfg: &Config,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    name: &str,
) -> Result<Resolved, PullError> {
    let reg_err = |source: RegistryError| PullError::Registry {
        name: name.to_string(),
        source: Box::new(source),
    };
    let invalid = |source: ManifestError| PullError::Manifest {
        name: name.to_string(),
        source: Box::new(source),
    };
    let registry = Arc::new(Registry::connect(cfg, reference).await.map_err(reg_err)?);
    let (data, digest) = registry.manifest(reference).await.map_err(reg_err)?;
    let mut index = None;
    let (manifest, mdigest) = match parse_manifest(&data).map_err(invalid)? {
        ParsedManifest::Index(list) => {
            let chosen = select_platform(&list, platform).map_err(|source| PullError::NoPlatform {
                name: name.to_string(),
                source: Box::new(source),
            })?;
            let by_digest = Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                chosen.digest.to_string(),
            );
            let (m, md) = registry.manifest(&by_digest).await.map_err(reg_err)?;
            if md != chosen.digest {
                return Err(PullError::ManifestDigest {
                    name: name.to_string(),
                    expected: chosen.digest.clone(),
                    actual: md,
                });
            }
            index = Some((data.to_vec(), digest));
            (m, md)
        }
        ParsedManifest::Image { .. } => (data, digest),
    };
    let ParsedManifest::Image { config, layers } = parse_manifest(&manifest).map_err(invalid)? else {
        return Err(invalid(ManifestError::NestedIndex));
    };
    // The stored config if it is there and sound; a damaged one (see `Store::write_blob`) is fetched again.
    let stored = match store.read_blob(&config.digest) {
        Ok(b) => b,
        Err(crate::image::store::StoreError::DigestMismatch { path }) => {
            tracing::warn!(path = %path.display(), "the stored config does not match its digest: fetching it again");
            None
        }
        Err(source) => {
            return Err(PullError::Store {
                name: name.to_string(),
                source,
            })
        }
    };
    let config_bytes = match stored {
        Some(b) => b,
        None => registry.blob(&config.digest, config.size).await.map_err(reg_err)?,
    };
    let (layers, plat) =
        pending_layers(&config_bytes, &layers, |_| LayerFetch::Registry(registry.clone())).map_err(invalid)?;
    Ok(Resolved {
        names: vec![name.to_string()],
        index,
        manifest: (manifest.to_vec(), mdigest),
        config: (config_bytes, config.digest),
        platform: plat,
        layers,
    })
}
