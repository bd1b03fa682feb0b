//! `drun export IMAGE -o oci-archive:FILE[:TAG]` and `-o docker-archive:FILE`: an image of the store as one
//! tarball that `drun pull`, skopeo, podman and docker read, so images move between hosts without a registry.
//!
//! ```text
//! blobs/sha256/<hex>   the layers (bottom first), then the config, then the manifest
//! index.json           the OCI index: one manifest, named by org.opencontainers.image.ref.name
//! manifest.json        docker-archive only: [{"Config": …, "RepoTags": […], "Layers": [blobs/sha256/…]}]
//! oci-layout           {"imageLayoutVersion": "1.0.0"}
//! ```
//!
//! This is the layout `docker save` writes since Docker 25 (an OCI layout with Docker's `manifest.json`); an
//! `oci-archive:` has no `manifest.json`. The store keeps unpacked layers, not their compressed blobs (see
//! `image/store/`): a layer whose original blob is in the `--blob-cache` is copied as it is (the image then keeps
//! its manifest digest and ID); any other is written back from its unpacked tree as an uncompressed tar
//! (`layer_tar.rs`), which changes its digest and so the config's `diff_ids` and the image ID, not its content.
//!
//! The file is written as a new temporary file beside the output (mode 0600, like `docker save -o`), synced and
//! renamed into place, so a reader never sees half an archive. Layer members are streamed: each member's header is
//! written as a placeholder and filled in once the member's size and digest are known, so nothing is staged.

pub mod layer_tar;

use std::collections::HashSet;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::digest::{Digest, Hasher};
use crate::image::store::{ImageRecord, Store, StoreError};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The two archive formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout in a tarball; `tag` names the image in its index.
    Oci { tag: Option<String> },
    /// `docker save`'s format (with the OCI layout beside `manifest.json`, as Docker 25 writes it).
    Docker,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot create {path:?}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write {path:?}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read layer {key} of image {image:?} from the store")]
    Layer {
        image: String,
        key: String,
        source: io::Error,
    },
    #[error("layer {key} of image {image:?} is missing from the store; pull the image again")]
    LayerMissing { image: String, key: String },
    #[error("the config of image {image:?} is missing from the store; pull the image again")]
    ConfigMissing { image: String },
    #[error("invalid config in image {image:?}: {reason}")]
    Config { image: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What was written.
#[derive(Debug)]
pub struct Exported {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Layers copied from their original blob, and layers written back from their unpacked tree.
    pub layers_copied: usize,
    pub layers_rebuilt: usize,
    pub bytes: u64,
}

/// Writes the image `record` (its layers present in `store` for this ID mapping; the caller holds the store's
/// lock shared) as an archive of `format` at `out`.
pub fn write_archive(
    store: &Store,
    record: &ImageRecord,
    format: &ArchiveFormat,
    out: &Path,
) -> Result<Exported, ArchiveError> {
    let config = store
        .read_blob(&record.config_digest)?
        .ok_or_else(|| ArchiveError::ConfigMissing {
            image: record.name.clone(),
        })?;
    let tmp = temp_name(out);
    let mut archive = Archive::create(&tmp)?;
    let removed = Remove(&tmp);
    let write_err = |source| ArchiveError::Write {
        path: tmp.clone(),
        source,
    };
    let mut written = HashSet::new();
    let mut links = layer_tar::Links::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let (mut copied, mut rebuilt) = (0, 0);
    for l in &record.layers {
        let layer_err = |source| ArchiveError::Layer {
            image: record.name.clone(),
            key: l.key(),
            source,
        };
        let start = archive.position().map_err(write_err)?;
        let (digest, size, media_type, diff_id) = if let Some((_, mut blob)) = store.cached_blob(&l.digest, l.size) {
            let (d, n) = archive
                .stream(|w| io::copy(&mut blob, w).map(drop))
                .map_err(write_err)?;
            copied += 1;
            (d, n, l.media_type.clone(), l.diff_id.clone())
        } else {
            let dir = store.layer_dir(store.idmap(), &l.key());
            if !store.has_layer(store.idmap(), &l.key()) {
                return Err(ArchiveError::LayerMissing {
                    image: record.name.clone(),
                    key: l.key(),
                });
            }
            let (d, n) = archive
                .stream(|w| layer_tar::write_layer_tar(&dir, w, &mut links).map(drop))
                .map_err(layer_err)?;
            rebuilt += 1;
            (d.clone(), n, OCI_LAYER_TAR.to_string(), d)
        };
        // An image may list one layer twice: its blob is stored once.
        if !written.insert(digest.clone()) {
            archive.truncate(start).map_err(write_err)?;
        }
        layers.push(json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
        diff_ids.push(diff_id);
    }
    let unchanged = record.layers.iter().map(|l| &l.diff_id).eq(diff_ids.iter());
    let config = if unchanged {
        config
    } else {
        with_diff_ids(&config, &diff_ids).map_err(|reason| ArchiveError::Config {
            image: record.name.clone(),
            reason,
        })?
    };
    let config_digest = Digest::of(&config);
    // The stored manifest, when it still describes the blobs written; otherwise an OCI manifest for them.
    let stored = store.read_blob(&record.manifest_digest)?;
    let (manifest, manifest_type) = match stored.filter(|_| rebuilt == 0) {
        Some(m) => {
            let media_type = serde_json::from_slice::<serde_json::Value>(&m)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| OCI_MANIFEST.to_string());
            (m, media_type)
        }
        None => {
            let m = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
                "layers": layers,
            });
            (serde_json::to_vec(&m).expect("serialises"), OCI_MANIFEST.to_string())
        }
    };
    let manifest_digest = Digest::of(&manifest);
    archive.blob(&config).map_err(write_err)?;
    archive.blob(&manifest).map_err(write_err)?;
    let name = registry_name(&record.name);
    let ref_name = match format {
        ArchiveFormat::Oci { tag: Some(t) } => Some(t.clone()),
        _ => name.clone(),
    };
    let mut entry = json!({"mediaType": manifest_type, "digest": manifest_digest.to_string(), "size": manifest.len()});
    if let Some(r) = ref_name {
        entry["annotations"] = json!({ REF_NAME: r });
    }
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry]});
    archive
        .file("index.json", &serde_json::to_vec(&index).expect("serialises"))
        .map_err(write_err)?;
    if *format == ArchiveFormat::Docker {
        let layer_names: Vec<String> = layers
            .iter()
            .map(|l| {
                format!(
                    "blobs/sha256/{}",
                    l["digest"].as_str().unwrap_or("").trim_start_matches("sha256:")
                )
            })
            .collect();
        let docker = json!([{
            "Config": format!("blobs/sha256/{}", config_digest.hex()),
            "RepoTags": name.into_iter().collect::<Vec<_>>(),
            "Layers": layer_names,
        }]);
        archive
            .file("manifest.json", &serde_json::to_vec(&docker).expect("serialises"))
            .map_err(write_err)?;
    }
    archive
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(write_err)?;
    let bytes = archive.finish().map_err(write_err)?;
    std::fs::rename(&tmp, out).map_err(|source| ArchiveError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    std::mem::forget(removed);
    // The rename survives a power cut once the directory is synced.
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::sys::safe_fs::open_dir_nofollow(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ArchiveError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    Ok(Exported {
        manifest_digest,
        config_digest,
        layers_copied: copied,
        layers_rebuilt: rebuilt,
        bytes,
    })
}

/// The record's name when it is a registry reference (what `RepoTags` and the index name the image by).
fn registry_name(name: &str) -> Option<String> {
    match crate::image::source::ImageSource::parse(name) {
        Ok(crate::image::source::ImageSource::Registry(r)) => Some(r.whole()),
        _ => None,
    }
}

/// The config with its `rootfs.diff_ids` replaced.
fn with_diff_ids(config: &[u8], diff_ids: &[Digest]) -> Result<Vec<u8>, String> {
    let mut v: serde_json::Value = serde_json::from_slice(config).map_err(|e| e.to_string())?;
    let rootfs = v
        .get_mut("rootfs")
        .and_then(|r| r.as_object_mut())
        .ok_or("it has no rootfs")?;
    rootfs.insert(
        "diff_ids".into(),
        diff_ids
            .iter()
            .map(|d| json!(d.to_string()))
            .collect::<serde_json::Value>(),
    );
    Ok(serde_json::to_vec(&v).expect("serialises"))
}

/// `.NAME.drun-tmp-PID` beside `out`.
fn temp_name(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.drun-tmp-{}", std::process::id()))
}

/// The outer tarball, written member by member.
struct Archive {
    file: std::fs::File,
}

impl Archive {
    /// A new file (never one someone placed there: `O_EXCL`, not following a symlink), private to the caller.
    fn create(path: &Path) -> Result<Archive, ArchiveError> {
        let create = |source| ArchiveError::Create {
            path: path.to_path_buf(),
            source,
        };
        // Debris of an export of this process id that was killed.
        let _ = std::fs::remove_file(path);
        let file = crate::sys::safe_fs::create_new(path, 0o600).map_err(create)?;
        Ok(Archive { file })
    }

    fn position(&mut self) -> io::Result<u64> {
        self.file.stream_position()
    }

    /// Drops everything from `at` on (a member written twice).
    fn truncate(&mut self, at: u64) -> io::Result<()> {
        self.file.set_len(at)?;
        self.file.seek(SeekFrom::Start(at)).map(drop)
    }

    /// A member `blobs/sha256/<digest>` whose content `fill` writes; its header is filled in afterwards.
    fn stream(&mut self, fill: impl FnOnce(&mut HashCount) -> io::Result<()>) -> io::Result<(Digest, u64)> {
        let start = self.file.stream_position()?;
        self.file.write_all(&[0u8; 512])?;
        // The same open file (and file offset) through a second descriptor.
        let mut w = HashCount {
            file: io::BufWriter::with_capacity(1 << 20, self.file.try_clone()?),
            hasher: Hasher::default(),
            size: 0,
        };
        fill(&mut w)?;
        let HashCount { file, hasher, size } = w;
        file.into_inner().map_err(|e| e.into_error())?;
        let digest = hasher.finish();
        self.pad(size)?;
        let end = self.file.stream_position()?;
        self.file.seek(SeekFrom::Start(start))?;
        self.file
            .write_all(member_header(&format!("blobs/sha256/{}", digest.hex()), size)?.as_bytes())?;
        self.file.seek(SeekFrom::Start(end))?;
        Ok((digest, size))
    }

    /// A small blob, named by its digest.
    fn blob(&mut self, data: &[u8]) -> io::Result<()> {
        self.file(&format!("blobs/sha256/{}", Digest::of(data).hex()), data)
    }

    fn file(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.file
            .write_all(member_header(name, data.len() as u64)?.as_bytes())?;
        self.file.write_all(data)?;
        self.pad(data.len() as u64)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = usize::try_from(size % 512).expect("below 512");
        if rem != 0 {
            self.file.write_all(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    /// The end of the archive (two zero blocks), synced; returns its size.
    fn finish(mut self) -> io::Result<u64> {
        self.file.write_all(&[0u8; 1024])?;
        self.file.sync_all()?;
        self.file.stream_position()
    }
}

fn member_header(name: &str, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Counts and hashes what goes into a member.
struct HashCount {
    file: io::BufWriter<std::fs::File>,
    hasher: Hasher,
    size: u64,
}

impl Write for HashCount {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Removes the temporary file unless forgotten.
struct Remove<'a>(&'a Path);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}
