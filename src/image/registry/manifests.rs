//! Fetching a manifest or index from the registry, by tag or digest, within [`MAX_MANIFEST`] bytes and verified
//! against the reference's digest when it has one. What is in it: `image/manifest.rs`.

use bytes::Bytes;
use oci_client::Reference;

use super::{Registry, RegistryError};
use crate::digest::Digest;
use crate::image::limits::MAX_MANIFEST;

/// Media types drun accepts for manifests and indexes.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

impl Registry {
    /// Fetches a manifest or index (at most [`MAX_MANIFEST`] bytes) by tag or digest. Returns its bytes and
    /// digest, verified against the reference's digest when it has one.
    pub async fn manifest(&self, reference: &Reference) -> Result<(Bytes, Digest), RegistryError> {
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme,
            self.host,
            reference.repository(),
            reference.digest().or(reference.tag()).unwrap_or("latest")
        );
        let accept = MANIFEST_TYPES.join(", ");
        let what = format!("the manifest of {}", reference.whole());
        let data = self
            .with_retries("fetching the manifest", || {
                self.get_small(&url, Some(&accept), MAX_MANIFEST, &what)
            })
            .await?;
        let digest = Digest::of(&data);
        if let Some(want) = reference.digest() {
            if want != digest.to_string() {
                return Err(RegistryError::ManifestDigest {
                    registry: self.host.clone(),
                    reference: reference.whole(),
                    expected: want.to_string(),
                    actual: digest,
                });
            }
        }
        Ok((data, digest))
    }
}
