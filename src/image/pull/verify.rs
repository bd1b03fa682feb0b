//! Verifying a layer in the one pass that unpacks it: the blob is hashed as it comes, its compression detected
//! from its first bytes and undone, the tar stream hashed and unpacked; then the blob's digest and size and the
//! tar's digest (the diff_id) are checked against what the manifest and config promised. A layer that fails is
//! never published.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::{LayerError, PendingLayer};
use crate::digest::{Digest, HashingReader};
use crate::image::unpack::{unpack_layer, LowerLink, Markers, UnpackOptions, UnpackStats};

/// A layer unpacked in one pass, with the identities measured on the way.
pub(super) struct VerifiedLayer {
    /// The blob's digest, as it came (possibly compressed).
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
    /// The digest of the uncompressed tar stream.
    pub diff_id: Digest,
    pub stats: UnpackStats,
    pub lower_links: Vec<LowerLink>,
    pub markers: Markers,
}

/// The single pass: hash the blob, detect and undo its compression, hash the tar, unpack it into `dest`.
pub(super) fn unpack_verified<R: Read>(src: R, dest: &Path, opts: UnpackOptions) -> Result<VerifiedLayer, LayerError> {
    let (m, unpacked) = read_verified(src, |tar| Ok(unpack_layer(tar, dest, opts)?))?;
    Ok(VerifiedLayer {
        digest: m.digest,
        size: m.size,
        diff_id: m.diff_id,
        stats: unpacked.stats,
        lower_links: unpacked.lower_links,
        markers: unpacked.markers,
    })
}

/// A layer's identities, measured as it was read.
pub(super) struct Measured {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

/// Hashes the blob, detects and undoes its compression, hashes the tar stream while `use_tar` reads it, and drains
/// what it left. The caller checks the identities ([`check_measured`]) before trusting what `use_tar` made.
pub(super) fn read_verified<R: Read, T>(
    src: R,
    use_tar: impl FnOnce(&mut dyn Read) -> Result<T, LayerError>,
) -> Result<(Measured, T), LayerError> {
    let mut blob = BufReader::with_capacity(1 << 20, HashingReader::new(src));
    let head = blob.fill_buf().map_err(LayerError::Decompress)?.to_vec();
    let decoder: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(&mut blob))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(&mut blob).map_err(LayerError::Decompress)?)
    } else {
        Box::new(&mut blob)
    };
    let mut tar = HashingReader::new(decoder);
    let made = use_tar(&mut tar)?;
    let (diff_id, _) = tar.finish().map_err(LayerError::Decompress)?;
    io::copy(&mut blob, &mut io::sink()).map_err(LayerError::Decompress)?;
    let (digest, size) = blob.into_inner().finish().map_err(LayerError::Decompress)?;
    Ok((Measured { digest, size, diff_id }, made))
}

/// Checks an unpacked layer's measured identity against what the manifest and config promised.
pub(super) fn check_identity(layer: &PendingLayer, v: VerifiedLayer) -> Result<VerifiedLayer, LayerError> {
    check_measured(
        layer,
        Measured {
            digest: v.digest.clone(),
            size: v.size,
            diff_id: v.diff_id.clone(),
        },
    )?;
    Ok(v)
}

/// Checks a layer's measured identity against what the manifest and config promised.
pub(super) fn check_measured(layer: &PendingLayer, v: Measured) -> Result<(), LayerError> {
    if let Some(want) = &layer.digest {
        if *want != v.digest {
            return Err(LayerError::Digest {
                expected: want.clone(),
                actual: v.digest,
            });
        }
    }
    if v.size != layer.size {
        return Err(LayerError::Size {
            expected: layer.size,
            actual: v.size,
        });
    }
    if v.diff_id != layer.diff_id {
        return Err(LayerError::DiffId {
            expected: layer.diff_id.clone(),
            actual: v.diff_id,
        });
    }
    Ok(())
}
