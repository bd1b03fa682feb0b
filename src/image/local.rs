//! Local image sources for hosts without registry access: OCI image layouts (`oci:DIR[:TAG]`), the same in a
//! tarball (`oci-archive:FILE[:TAG]`) and `docker save` archives (`docker-archive:FILE`). Their blobs go through
//! the same verification and store as a registry's; archives are read in place, never extracted.
//!
//! A layout or an archive may come from anyone: its files are opened only when they are regular files (without
//! blocking on a FIFO), and what is read into memory — `index.json`, `manifest.json`, manifests and configs —
//! within the caps of [`crate::image::limits`].

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::image::limits::{self, ReadError, TooLarge, MAX_CONFIG, MAX_MANIFEST};
use crate::image::manifest::{parse_manifest, Descriptor, ManifestError, ParsedManifest};
use crate::image::platform::{select_platform, NoPlatform, Platform};
use crate::image::pull::{pending_layers, LayerFetch, PendingLayer, Resolved};
use crate::image::source::{ImageSource, SourceError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read {path:?}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {what} is too large: {limit}")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        limit: TooLarge,
    },
    #[error("invalid {what} {path:?}")]
    Manifest {
        path: PathBuf,
        what: &'static str,
        source: ManifestError,
    },
    #[error("invalid image index {path:?}: expected an index, found an image manifest")]
    NotAnIndex { path: PathBuf },
    #[error("no image tagged {tag:?} in {path:?} (tags: {tags})")]
    NoTag { path: PathBuf, tag: String, tags: String },
    #[error("{path:?} holds several images: name one with oci:DIR:TAG (tags: {tags})")]
    SeveralImages { path: PathBuf, tags: String },
    #[error("invalid blob {path:?}: its content does not match its digest {digest}")]
    DigestMismatch { path: PathBuf, digest: Digest },
    #[error("cannot choose a manifest in {path:?}")]
    NoPlatform { path: PathBuf, source: NoPlatform },
    #[error("invalid docker archive {path:?}: it has no manifest.json (expected a `docker save` tarball)")]
    NotAnArchive { path: PathBuf },
    #[error("invalid manifest.json in {path:?}")]
    ArchiveManifest { path: PathBuf, source: serde_json::Error },
    #[error("invalid docker archive {path:?}: its manifest.json lists no image")]
    EmptyArchive { path: PathBuf },
    #[error("invalid docker archive {path:?}: it has no member {member:?}")]
    MissingMember { path: PathBuf, member: String },
    #[error("invalid OCI archive {path:?}: it has no member {member:?} (expected an OCI image layout in a tarball)")]
    MissingLayoutMember { path: PathBuf, member: String },
    #[error("invalid RepoTags entry in {path:?}")]
    RepoTag { path: PathBuf, source: SourceError },
}

impl LocalError {
    fn from_read(path: &Path, what: &'static str, e: ReadError) -> LocalError {
        match e {
            ReadError::Io(source) => LocalError::Read {
                path: path.to_path_buf(),
                source,
            },
            ReadError::TooLarge(limit) => LocalError::TooLarge {
                path: path.to_path_buf(),
                what,
                limit,
            },
        }
    }
}

/// Reads a regular file of at most `cap` bytes (`what` names it in errors).
fn read(path: &Path, cap: u64, what: &'static str) -> Result<Vec<u8>, LocalError> {
    limits::read_file_capped(path, cap, true).map_err(|e| LocalError::from_read(path, what, e))
}

/// The error for the document `what` at `path` that cannot be used.
fn bad_document<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(ManifestError) -> LocalError + 'a {
    move |source| LocalError::Manifest {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Where the files of an OCI image layout are: a directory, or the members of a tarball (offset and size of each
/// member's data, by name).
enum LayoutFiles<'a> {
    Dir(&'a Path),
    Archive {
        file: &'a Path,
        members: HashMap<String, (u64, u64)>,
    },
}

impl LayoutFiles<'_> {
    /// How errors name `rel`: the file, or `ARCHIVE/MEMBER`.
    fn path(&self, rel: &str) -> PathBuf {
        match self {
            LayoutFiles::Dir(dir) => dir.join(rel),
            LayoutFiles::Archive { file, .. } => file.join(rel),
        }
    }

    fn read(&self, rel: &str, cap: u64, what: &'static str) -> Result<Vec<u8>, LocalError> {
        match self {
            LayoutFiles::Dir(dir) => read(&dir.join(rel), cap, what),
            LayoutFiles::Archive { file, .. } => {
                let (offset, size) = self.member(rel)?;
                read_range(file, offset, size, cap, what)
            }
        }
    }

    fn member(&self, rel: &str) -> Result<(u64, u64), LocalError> {
        match self {
            LayoutFiles::Dir(_) => unreachable!("only archives have members"),
            LayoutFiles::Archive { file, members } => {
                members
                    .get(rel)
                    .copied()
                    .ok_or_else(|| LocalError::MissingLayoutMember {
                        path: file.to_path_buf(),
                        member: rel.to_string(),
                    })
            }
        }
    }

    fn read_verified(&self, d: &Digest, cap: u64, what: &'static str) -> Result<Vec<u8>, LocalError> {
        let rel = blob_name(d);
        let data = self.read(&rel, cap, what)?;
        if Digest::of(&data) != *d {
            return Err(LocalError::DigestMismatch {
                path: self.path(&rel),
                digest: d.clone(),
            });
        }
        Ok(data)
    }

    /// Where a layer blob is read from when it is unpacked.
    fn fetch(&self, d: &Digest) -> Result<LayerFetch, LocalError> {
        Ok(match self {
            LayoutFiles::Dir(dir) => LayerFetch::File {
                path: dir.join(blob_name(d)),
                offset: 0,
            },
            LayoutFiles::Archive { file, .. } => LayerFetch::File {
                path: file.to_path_buf(),
                offset: self.member(&blob_name(d))?.0,
            },
        })
    }
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The members of a tarball, by name (`./` stripped): where each one's data starts and its size.
fn archive_members(file: &Path) -> Result<HashMap<String, (u64, u64)>, LocalError> {
    let rd = |source| LocalError::Read {
        path: file.to_path_buf(),
        source,
    };
    let f = crate::sys::safe_fs::open_regular(file, true).map_err(rd)?;
    let mut archive = tar::Archive::new(f);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek().map_err(rd)? {
        let entry = entry.map_err(rd)?;
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        members.insert(path, (entry.raw_file_position(), entry.size()));
    }
    Ok(members)
}

/// Resolves an OCI image layout: the entry of `index.json` tagged `tag` (or its only entry), then the platform.
pub fn resolve_oci_layout(
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
    name: &str,
) -> Result<Resolved, LocalError> {
    resolve_layout(&LayoutFiles::Dir(dir), tag, platform, name)
}

/// Resolves an OCI image layout in a tarball, as [`resolve_oci_layout`]; layers are read in place.
pub fn resolve_oci_archive(
    file: &Path,
    tag: Option<&str>,
    platform: &Platform,
    name: &str,
) -> Result<Resolved, LocalError> {
    let members = archive_members(file)?;
    resolve_layout(&LayoutFiles::Archive { file, members }, tag, platform, name)
}

fn resolve_layout(
    files: &LayoutFiles,
    tag: Option<&str>,
    platform: &Platform,
    name: &str,
) -> Result<Resolved, LocalError> {
    let index_path = files.path("index.json");
    let data = files.read("index.json", MAX_MANIFEST, "the image index")?;
    let ParsedManifest::Index(entries) = parse_manifest(&data).map_err(bad_document(&index_path, "image index"))?
    else {
        return Err(LocalError::NotAnIndex { path: index_path });
    };
    let tags: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.annotations.get(REF_NAME).map(String::as_str))
        .collect();
    let entry = match tag {
        Some(t) => entries
            .iter()
            .find(|e| e.annotations.get(REF_NAME).is_some_and(|n| n == t))
            .ok_or_else(|| LocalError::NoTag {
                path: index_path.clone(),
                tag: t.to_string(),
                tags: if tags.is_empty() {
                    "none".into()
                } else {
                    tags.join(", ")
                },
            })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            return Err(LocalError::SeveralImages {
                path: index_path,
                tags: tags.join(", "),
            })
        }
    };
    let mut index = None;
    let mut digest = entry.digest.clone();
    let mut manifest = files.read_verified(&digest, MAX_MANIFEST, "the manifest")?;
    let manifest_path = files.path(&blob_name(&digest));
    if let ParsedManifest::Index(list) = parse_manifest(&manifest).map_err(bad_document(&manifest_path, "manifest"))? {
        let chosen = select_platform(&list, platform).map_err(|source| LocalError::NoPlatform {
            path: files.path(""),
            source,
        })?;
        index = Some((manifest, digest));
        digest = chosen.digest.clone();
        manifest = files.read_verified(&digest, MAX_MANIFEST, "the manifest")?;
    }
    let mpath = files.path(&blob_name(&digest));
    let ParsedManifest::Image { config, layers } =
        parse_manifest(&manifest).map_err(bad_document(&mpath, "manifest"))?
    else {
        return Err(bad_document(&mpath, "manifest")(ManifestError::NestedIndex));
    };
    let config_bytes = files.read_verified(&config.digest, MAX_CONFIG, "the image config")?;
    // Every layer must be there before anything is unpacked.
    let fetches = layers
        .iter()
        .map(|d| Ok((d.digest.clone(), files.fetch(&d.digest)?)))
        .collect::<Result<HashMap<_, _>, LocalError>>()?;
    let (layers, plat) = pending_layers(&config_bytes, &layers, |d| fetches[&d.digest].clone())
        .map_err(bad_document(&mpath, "manifest"))?;
    Ok(Resolved {
        names: vec![name.to_string()],
        index,
        manifest: (manifest, digest),
        config: (config_bytes, config.digest),
        platform: plat,
        layers,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Resolves a `docker save` archive (its first image). Layers are read in place from the tarball.
pub fn resolve_docker_archive(file: &Path, name: &str) -> Result<Resolved, LocalError> {
    let members = archive_members(file)?;
    let &(offset, size) = members.get("manifest.json").ok_or_else(|| LocalError::NotAnArchive {
        path: file.to_path_buf(),
    })?;
    let manifest_json = read_range(file, offset, size, MAX_MANIFEST, "its manifest.json")?;
    let entries: Vec<ArchiveEntry> =
        serde_json::from_slice(&manifest_json).map_err(|source| LocalError::ArchiveManifest {
            path: file.to_path_buf(),
            source,
        })?;
    let Some(entry) = entries.into_iter().next() else {
        return Err(LocalError::EmptyArchive {
            path: file.to_path_buf(),
        });
    };
    let missing = |member: &str| LocalError::MissingMember {
        path: file.to_path_buf(),
        member: member.to_string(),
    };
    // Legacy archives name the config <hex>.json, newer ones blobs/sha256/<hex>.
    let (off, size) = *members
        .get(entry.config.trim_start_matches("./"))
        .ok_or_else(|| missing(&entry.config))?;
    let config_bytes = read_range(file, off, size, MAX_CONFIG, "its image config")?;
    let config_digest = Digest::of(&config_bytes);
    let mut layers = Vec::new();
    for l in &entry.layers {
        let key = l.trim_start_matches("./");
        let (offset, size) = *members.get(key).ok_or_else(|| missing(l))?;
        // In the OCI-style archive layout the member name is the blob digest; in the legacy one it says nothing.
        let digest = key
            .strip_prefix("blobs/sha256/")
            .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok());
        layers.push((digest, offset, size));
    }
    // Pair with diff_ids through the same checks as a registry image, then fill in what the archive knows.
    let descs: Vec<Descriptor> = layers
        .iter()
        .map(|(digest, _, size)| Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: digest.clone().unwrap_or_else(|| Digest::of(b"")),
            size: *size,
            platform: None,
            annotations: HashMap::new(),
        })
        .collect();
    let (paired, plat) = pending_layers(&config_bytes, &descs, |_| LayerFetch::File {
        path: file.to_path_buf(),
        offset: 0,
    })
    .map_err(bad_document(file, "docker archive"))?;
    let mut pending = Vec::new();
    let mut manifest_layers = Vec::new();
    for (p, (digest, offset, size)) in paired.into_iter().zip(layers) {
        manifest_layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest.as_ref().unwrap_or(&p.diff_id).to_string(),
            "size": size,
        }));
        pending.push(PendingLayer {
            digest,
            diff_id: p.diff_id,
            size,
            media_type: p.media_type,
            fetch: LayerFetch::File {
                path: file.to_path_buf(),
                offset,
            },
        });
    }
    // The archive has no manifest of its own: record an equivalent OCI manifest so the image has a digest.
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": manifest_layers,
    }))
    .expect("manifest serialises");
    let mdigest = Digest::of(&manifest);
    let names: Vec<String> = match entry.repo_tags.filter(|t| !t.is_empty()) {
        Some(tags) => tags
            .iter()
            .map(|t| {
                ImageSource::parse(t)
                    .map(|s| s.canonical_name())
                    .map_err(|source| LocalError::RepoTag {
                        path: file.to_path_buf(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?,
        None => vec![name.to_string()],
    };
    Ok(Resolved {
        names,
        index: None,
        manifest: (manifest, mdigest),
        config: (config_bytes, config_digest),
        platform: plat,
        layers: pending,
    })
}

/// Reads `size` bytes at `offset` of `file`, if `size` is at most `cap`.
fn read_range(file: &Path, offset: u64, size: u64, cap: u64, what: &'static str) -> Result<Vec<u8>, LocalError> {
    use std::io::Seek;
    let err = |e: ReadError| LocalError::from_read(file, what, e);
    limits::check_declared(size, cap).map_err(|e| err(e.into()))?;
    let mut f = crate::sys::safe_fs::open_regular(file, true).map_err(|e| err(e.into()))?;
    f.seek(std::io::SeekFrom::Start(offset)).map_err(|e| err(e.into()))?;
    // At most `cap` (checked above): only a capacity hint.
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    f.take(size).read_to_end(&mut buf).map_err(|e| err(e.into()))?;
    Ok(buf)
}
