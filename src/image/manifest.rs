//! Reading manifests and indexes: OCI's and Docker schema-2's (same shape, other media types), with oci-spec's
//! types, into the few fields drun uses, every digest validated. Never fetches anything (registries:
//! `registry/manifests.rs`; local sources: `local.rs`); choosing a platform's entry: `platform.rs`.

use std::collections::HashMap;

use serde::Deserialize;

use crate::digest::{Digest, DigestParseError};

/// Why a manifest, index or image config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid manifest: expected JSON")]
    Json(#[source] serde_json::Error),
    #[error("invalid {what}")]
    Document {
        what: &'static str,
        source: oci_spec::OciSpecError,
    },
    #[error("invalid digest in a descriptor")]
    Digest(#[source] DigestParseError),
    #[error("invalid diff_id in the image config")]
    DiffId(#[source] DigestParseError),
    #[error("Docker schema-1 manifests are not supported (re-push the image with a current client)")]
    Schema1,
    #[error("unsupported manifest (media type {media_type:?}): expected an OCI or Docker schema-2 manifest or index")]
    Unsupported { media_type: String },
    #[error("an index points to another index: expected an image manifest")]
    NestedIndex,
    #[error("the manifest lists {layers} layers but the config has {diff_ids} diff_ids")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    LayerMediaType { digest: Digest, media_type: String },
}

/// The parts of an OCI descriptor drun uses, with its digest validated.
#[derive(Debug, Clone)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<DescriptorPlatform>,
    pub annotations: HashMap<String, String>,
}

/// The platform an index entry is for.
#[derive(Clone, Debug)]
pub struct DescriptorPlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl TryFrom<&oci_spec::image::Descriptor> for Descriptor {
    type Error = ManifestError;
    fn try_from(d: &oci_spec::image::Descriptor) -> Result<Self, ManifestError> {
        Ok(Descriptor {
            media_type: d.media_type().to_string(),
            digest: d.digest().to_string().parse().map_err(ManifestError::Digest)?,
            size: d.size(),
            platform: d.platform().as_ref().map(|p| DescriptorPlatform {
                os: p.os().to_string(),
                architecture: p.architecture().to_string(),
                variant: p.variant().clone(),
            }),
            annotations: d.annotations().clone().unwrap_or_default(),
        })
    }
}

/// Either an index (list of platform manifests) or an image manifest.
pub enum ParsedManifest {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Parses an OCI index or manifest, or their Docker schema-2 equivalents.
pub fn parse_manifest(data: &[u8]) -> Result<ParsedManifest, ManifestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
    }
    let shape: Shape = serde_json::from_slice(data).map_err(ManifestError::Json)?;
    if shape.schema_version == Some(1) {
        return Err(ManifestError::Schema1);
    }
    let descs =
        |list: &[oci_spec::image::Descriptor]| list.iter().map(Descriptor::try_from).collect::<Result<Vec<_>, _>>();
    if shape.manifests.is_some() {
        let index = oci_spec::image::ImageIndex::from_reader(data).map_err(|source| ManifestError::Document {
            what: "image index",
            source,
        })?;
        return Ok(ParsedManifest::Index(descs(index.manifests())?));
    }
    if shape.layers.is_some() {
        let m = oci_spec::image::ImageManifest::from_reader(data).map_err(|source| ManifestError::Document {
            what: "manifest",
            source,
        })?;
        return Ok(ParsedManifest::Image {
            config: Descriptor::try_from(m.config())?,
            layers: descs(m.layers())?,
        });
    }
    Err(ManifestError::Unsupported {
        media_type: shape.media_type.unwrap_or_else(|| "unknown".into()),
    })
}

/// What an image config says about its layers and platform.
pub struct ConfigLayers {
    /// The digests of the layers' uncompressed tar streams, bottom first.
    pub diff_ids: Vec<Digest>,
    /// `os/architecture[/variant]`.
    pub platform: String,
}

/// Reads an image config's diff_ids and platform, and checks them against its manifest's `layers`: one diff_id
/// per layer, and layers that are tarballs drun can read.
pub fn config_layers(config: &[u8], layers: &[Descriptor]) -> Result<ConfigLayers, ManifestError> {
    let cfg = oci_spec::image::ImageConfiguration::from_reader(config).map_err(|source| ManifestError::Document {
        what: "image config",
        source,
    })?;
    let diff_ids = cfg
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse::<Digest>().map_err(ManifestError::DiffId))
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != layers.len() {
        return Err(ManifestError::LayerCount {
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    for d in layers {
        let unreadable = (!d.media_type.is_empty() && !d.media_type.contains("tar"))
            || d.media_type.contains("encrypted")
            || d.media_type.contains("foreign");
        if unreadable {
            return Err(ManifestError::LayerMediaType {
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
            });
        }
    }
    let platform = match cfg.variant() {
        Some(v) => format!("{}/{}/{v}", cfg.os(), cfg.architecture()),
        None => format!("{}/{}", cfg.os(), cfg.architecture()),
    };
    Ok(ConfigLayers { diff_ids, platform })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_schema1_and_mismatched_configs() {
        assert!(matches!(
            parse_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(ManifestError::Schema1)
        ));
        let cfg = br#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}}"#;
        let err = config_layers(cfg, &[]).err().unwrap();
        assert!(err.to_string().contains("lists 0 layers"), "{err}");
    }
}

/// Property tests: whatever a registry sends as a manifest or config (random bytes, a valid document with bytes
/// deleted, inserted or flipped), a parsed value or an error, never a panic.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":10},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":20}]}"#;
    const CONFIG: &str = r#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}}"#;

    fn mutated(doc: &'static str) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6).prop_map(move |edits| {
            let mut b = doc.as_bytes().to_vec();
            for (at, byte, op) in edits {
                let i = at % b.len().max(1);
                match op {
                    0 if !b.is_empty() => {
                        b.remove(i);
                    }
                    1 => b.insert(i.min(b.len()), byte),
                    _ if !b.is_empty() => b[i] = byte,
                    _ => {}
                }
            }
            b
        })
    }

    proptest! {
        #![proptest_config(crate::props::config())]

        #[test]
        fn any_manifest_bytes_parse_or_fail(data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            mutated(MANIFEST),
        ]) {
            let r = std::panic::catch_unwind(|| parse_manifest(&data).map(|_| ()).map_err(|e| e.to_string()));
            prop_assert!(r.is_ok());
            if let Err(e) = r.unwrap() {
                prop_assert!(!e.is_empty());
            }
        }

        #[test]
        fn any_config_bytes_parse_or_fail(data in mutated(CONFIG)) {
            let layers = match parse_manifest(MANIFEST.as_bytes()) {
                Ok(ParsedManifest::Image { layers, .. }) => layers,
                _ => unreachable!("the sample manifest parses"),
            };
            let r = std::panic::catch_unwind(|| config_layers(&data, &layers).map(|_| ()).map_err(|e| e.to_string()));
            prop_assert!(r.is_ok());
        }
    }
}
