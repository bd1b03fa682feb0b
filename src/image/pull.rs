//! Pulling: resolve a source to one manifest for the platform, fetch its config, and make sure every layer is
//! unpacked in the store — downloading, verifying and unpacking each layer in one streaming pass, layers
//! concurrently — then record the image.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use oci_client::Reference;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::digest::{Digest, HashingReader};
use crate::image::local::{self, LocalError};
use crate::image::platform::Platform;
use crate::image::registry::{Registry, RegistryError};
use crate::image::source::ImageSource;
use crate::image::store::{
    chain_ids, layer_key, remove_tree, ImageRecord, LayerMeta, LayerRecord, Lock, Store, StoreError,
};
use crate::image::unpack::{link_from_lower, unpack_layer, LowerLink, UnpackError, UnpackOptions, UnpackStats};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("failed to pull {name}")]
    Registry { name: String, source: Box<RegistryError> },
    #[error("failed to pull {name}")]
    Local { name: String, source: LocalError },
    #[error("failed to pull {name}")]
    Store { name: String, source: StoreError },
    #[error("failed to pull {name}: {message}")]
    Invalid { name: String, message: String },
    #[error("failed to pull {name}: layer {digest}")]
    Layer {
        name: String,
        digest: String,
        source: Box<LayerError>,
    },
    #[error("failed to pull {name}: no manifest for platform {platform} in the index (available: {available})")]
    NoPlatform {
        name: String,
        platform: Platform,
        available: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("digest mismatch: the blob's content hashes to {actual}, expected {expected}")]
    Digest { expected: Digest, actual: Digest },
    #[error("uncompressed content hashes to {actual}, but the image config's diff_id is {expected}")]
    DiffId { expected: Digest, actual: Digest },
    #[error("size mismatch: got {actual} bytes, the manifest says {expected}")]
    Size { expected: u64, actual: u64 },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("failed to decompress")]
    Decompress(#[source] io::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to read {path}")]
    File { path: PathBuf, source: io::Error },
    #[error("unpack task failed: {0}")]
    Task(String),
    #[error("cancelled because another layer failed")]
    Cancelled,
}

#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    pub platform: Option<Platform>,
    pub quiet: bool,
}

/// What a pull did.
#[derive(Debug)]
pub struct PullReport {
    pub records: Vec<ImageRecord>,
    pub layers_fetched: usize,
    pub layers_reused: usize,
    pub bytes_fetched: u64,
    /// Every name already pointed at this manifest and nothing had to be fetched.
    pub up_to_date: bool,
    pub elapsed: Duration,
}

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

/// The parts of an OCI descriptor drun uses, with its digest validated.
#[derive(Debug, Clone)]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<DescPlatform>,
    pub annotations: std::collections::HashMap<String, String>,
}

#[derive(Clone, Debug)]
pub(crate) struct DescPlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl TryFrom<&oci_spec::image::Descriptor> for Descriptor {
    type Error = String;
    fn try_from(d: &oci_spec::image::Descriptor) -> Result<Self, String> {
        Ok(Descriptor {
            media_type: d.media_type().to_string(),
            digest: d.digest().to_string().parse().map_err(|e| format!("{e}"))?,
            size: d.size(),
            platform: d.platform().as_ref().map(|p| DescPlatform {
                os: p.os().to_string(),
                architecture: p.architecture().to_string(),
                variant: p.variant().clone(),
            }),
            annotations: d.annotations().clone().unwrap_or_default(),
        })
    }
}

/// Either an index (list of platform manifests) or an image manifest.
pub(crate) enum Parsed {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Parses an OCI index or manifest, or their Docker schema-2 equivalents (same shape, other media types), with
/// oci-spec's types.
pub(crate) fn parse_manifest(data: &[u8]) -> Result<Parsed, String> {
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
    let shape: Shape = serde_json::from_slice(data).map_err(|e| format!("unreadable manifest: {e}"))?;
    if shape.schema_version == Some(1) {
        return Err("Docker schema-1 manifests are not supported (re-push the image with a current client)".into());
    }
    let descs =
        |list: &[oci_spec::image::Descriptor]| list.iter().map(Descriptor::try_from).collect::<Result<Vec<_>, _>>();
    if shape.manifests.is_some() {
        let index =
            oci_spec::image::ImageIndex::from_reader(data).map_err(|e| format!("unreadable image index: {e}"))?;
        return Ok(Parsed::Index(descs(index.manifests())?));
    }
    if shape.layers.is_some() {
        let m = oci_spec::image::ImageManifest::from_reader(data).map_err(|e| format!("unreadable manifest: {e}"))?;
        return Ok(Parsed::Image {
            config: Descriptor::try_from(m.config())?,
            layers: descs(m.layers())?,
        });
    }
    Err(format!(
        "unsupported manifest (media type {})",
        shape.media_type.as_deref().unwrap_or("unknown")
    ))
}

/// Picks the platform's entry of an index.
pub(crate) fn select_platform<'a>(list: &'a [Descriptor], want: &Platform) -> Result<&'a Descriptor, String> {
    list.iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| want.matches(&p.os, &p.architecture, p.variant.as_deref()))
        })
        .ok_or_else(|| {
            list.iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
}

/// Checks a config against its manifest's layers and pairs them up.
pub(crate) fn pair_layers(
    config: &[u8],
    layers: &[Descriptor],
    fetch: impl Fn(&Descriptor) -> LayerFetch,
) -> Result<(Vec<PendingLayer>, String), String> {
    let cfg = oci_spec::image::ImageConfiguration::from_reader(config)
        .map_err(|e| format!("unreadable image config: {e}"))?;
    let diff_ids = cfg
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse::<Digest>().map_err(|e| format!("image config: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != layers.len() {
        return Err(format!(
            "the manifest lists {} layers but the config has {} diff_ids",
            layers.len(),
            diff_ids.len()
        ));
    }
    let mut out = Vec::new();
    for (d, diff_id) in layers.iter().zip(diff_ids) {
        if !d.media_type.is_empty() && !d.media_type.contains("tar") {
            return Err(format!(
                "layer {} has unsupported media type {}",
                d.digest, d.media_type
            ));
        }
        if d.media_type.contains("encrypted") || d.media_type.contains("foreign") {
            return Err(format!(
                "layer {} has unsupported media type {}",
                d.digest, d.media_type
            ));
        }
        out.push(PendingLayer {
            digest: Some(d.digest.clone()),
            diff_id,
            size: d.size,
            media_type: d.media_type.clone(),
            fetch: fetch(d),
        });
    }
    let platform = match cfg.variant() {
        Some(v) => format!("{}/{}/{v}", cfg.os(), cfg.architecture()),
        None => format!("{}/{}", cfg.os(), cfg.architecture()),
    };
    Ok((out, platform))
}

async fn resolve_registry(
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
    let invalid = |message: String| PullError::Invalid {
        name: name.to_string(),
        message,
    };
    let registry = Arc::new(Registry::connect(cfg, reference).await.map_err(reg_err)?);
    let (data, digest) = registry.manifest(reference).await.map_err(reg_err)?;
    let mut index = None;
    let (manifest, mdigest) = match parse_manifest(&data).map_err(invalid)? {
        Parsed::Index(list) => {
            let chosen = select_platform(&list, platform).map_err(|available| PullError::NoPlatform {
                name: name.to_string(),
                platform: platform.clone(),
                available,
            })?;
            let by_digest = Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                chosen.digest.to_string(),
            );
            let (m, md) = registry.manifest(&by_digest).await.map_err(reg_err)?;
            if md != chosen.digest {
                return Err(invalid(format!("manifest {} hashes to {md}", chosen.digest)));
            }
            index = Some((data.to_vec(), digest));
            (m, md)
        }
        Parsed::Image { .. } => (data, digest),
    };
    let Parsed::Image { config, layers } = parse_manifest(&manifest).map_err(invalid)? else {
        return Err(invalid("an index points to another index".into()));
    };
    let config_bytes = match store.read_blob(&config.digest).map_err(|source| PullError::Store {
        name: name.to_string(),
        source,
    })? {
        Some(b) => b,
        None => registry.blob(&config.digest, config.size).await.map_err(reg_err)?,
    };
    let (layers, plat) =
        pair_layers(&config_bytes, &layers, |_| LayerFetch::Registry(registry.clone())).map_err(invalid)?;
    Ok(Resolved {
        names: vec![name.to_string()],
        index,
        manifest: (manifest.to_vec(), mdigest),
        config: (config_bytes, config.digest),
        platform: plat,
        layers,
    })
}

/// Pulls `source` into `store`.
pub fn pull(store: &Store, cfg: &Config, source: &ImageSource, opts: &PullOptions) -> Result<PullReport, PullError> {
    let started = Instant::now();
    let name = source.canonical_name();
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let store_err = |source| PullError::Store {
        name: name.clone(),
        source,
    };
    let _shared = store.lock_shared().map_err(store_err)?;
    let progress = Progress::new(opts.quiet);
    // The runtime lives only for this call: later stages (libcontainer) must not run beside its threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(|e| PullError::Invalid {
            name: name.clone(),
            message: format!("cannot start the async runtime: {e}"),
        })?;
    let report = rt.block_on(async {
        let resolved = match source {
            ImageSource::Registry(r) => resolve_registry(cfg, store, r, &platform, &name).await?,
            ImageSource::OciLayout { dir, tag } => local::resolve_oci_layout(dir, tag.as_deref(), &platform, &name)
                .map_err(|source| PullError::Local {
                    name: name.clone(),
                    source,
                })?,
            ImageSource::DockerArchive { file } => {
                local::resolve_docker_archive(file, &name).map_err(|source| PullError::Local {
                    name: name.clone(),
                    source,
                })?
            }
        };
        fetch_resolved(store, resolved, &progress, &name).await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let mut report = report?;
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn fetch_resolved(
    store: &Store,
    resolved: Resolved,
    progress: &Progress,
    name: &str,
) -> Result<PullReport, PullError> {
    let store_err = |source| PullError::Store {
        name: name.to_string(),
        source,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let limit = Arc::new(tokio::sync::Semaphore::new(6));
    let mut layers_reused = 0;
    let mut order = Vec::new();
    let diff_ids: Vec<Digest> = resolved.layers.iter().map(|l| l.diff_id.clone()).collect();
    let chains = chain_ids(&diff_ids);
    let mut metas: Vec<Option<LayerMeta>> = vec![None; diff_ids.len()];
    for (i, layer) in resolved.layers.into_iter().enumerate() {
        order.push(layer.media_type.clone());
        if let Some(meta) = store
            .find_layer(store.idmap(), &layer.diff_id, &chains[i])
            .and_then(|k| store.layer_meta(store.idmap(), &k))
        {
            layers_reused += 1;
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
            let label = layer
                .digest
                .as_ref()
                .map_or_else(|| layer.diff_id.to_string(), Digest::to_string);
            let res = ensure_layer(&store, layer, chain_id, lowers, permit, cancel, bar.clone()).await;
            bar.finish_and_clear();
            (i, label, res)
        });
    }
    let mut fetched = 0;
    let mut bytes_fetched = 0;
    let mut first_err = None;
    while let Some(joined) = tasks.join_next().await {
        let (i, label, res) = joined.map_err(|e| PullError::Invalid {
            name: name.to_string(),
            message: format!("layer task failed: {e}"),
        })?;
        match res {
            Ok((meta, did_fetch)) => {
                if did_fetch {
                    fetched += 1;
                    bytes_fetched += meta.blob_size;
                } else {
                    layers_reused += 1;
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
    let mut layers = Vec::new();
    let mut size = 0;
    for (i, media_type) in order.into_iter().enumerate() {
        let meta = metas[i].take().ok_or_else(|| PullError::Invalid {
            name: name.to_string(),
            message: format!("layer {} has no result", diff_ids[i]),
        })?;
        size += meta.unpacked_bytes;
        layers.push(LayerRecord {
            digest: meta.blob_digest,
            diff_id: diff_ids[i].clone(),
            media_type,
            size: meta.blob_size,
            chain_id: meta.chain_id,
        });
    }
    if let Some((data, digest)) = &resolved.index {
        store.write_blob(digest, data).map_err(store_err)?;
    }
    store
        .write_blob(&resolved.manifest.1, &resolved.manifest.0)
        .map_err(store_err)?;
    store
        .write_blob(&resolved.config.1, &resolved.config.0)
        .map_err(store_err)?;
    crate::failpoint::hit("before-record");
    let mut records = Vec::new();
    let mut up_to_date = fetched == 0;
    for n in resolved.names {
        let previous = store.image(&n).map_err(store_err)?;
        up_to_date &= previous.is_some_and(|p| p.manifest_digest == resolved.manifest.1);
        let rec = ImageRecord {
            name: n,
            manifest_digest: resolved.manifest.1.clone(),
            index_digest: resolved.index.as_ref().map(|i| i.1.clone()),
            config_digest: resolved.config.1.clone(),
            platform: resolved.platform.clone(),
            layers: layers.clone(),
            size,
            pulled_at: time::OffsetDateTime::now_utc(),
        };
        store.save_image(&rec).map_err(store_err)?;
        records.push(rec);
    }
    Ok(PullReport {
        records,
        layers_fetched: fetched,
        layers_reused,
        bytes_fetched,
        up_to_date,
        elapsed: Duration::ZERO,
    })
}

/// Makes one layer present in the store. Returns its metadata and whether this process produced it.
///
/// The layer is produced under the lock of its diff_id and, taken without waiting, that of its ChainID. Without
/// hardlinks into lower layers it is published under its diff_id; with them it depends on the layers below and is
/// published under its ChainID (see the store's notes), after the diff_id's lock is released and the lower layers
/// are there. A ChainID lock held by another process means that process is producing this layer over this chain:
/// it is waited for, holding nothing. So no lock is ever waited for while another is held.
async fn ensure_layer(
    store: &Store,
    layer: PendingLayer,
    chain_id: Digest,
    lowers: Vec<(Digest, Digest)>,
    permit: tokio::sync::OwnedSemaphorePermit,
    cancel: tokio::sync::watch::Receiver<bool>,
    bar: indicatif::ProgressBar,
) -> Result<(LayerMeta, bool), LayerError> {
    let diff_id = layer.diff_id.clone();
    let idmap = store.idmap().to_string();
    let own_key = layer_key(&diff_id, None);
    let chain_key = layer_key(&diff_id, Some(&chain_id));
    let lock = lock_layer(store, &own_key).await?;
    if let Some(meta) = store
        .find_layer(&idmap, &diff_id, &chain_id)
        .and_then(|k| store.layer_meta(&idmap, &k))
    {
        return Ok((meta, false));
    }
    let (chain_lock, staging, v) = match store.lock_layer(&idmap, &chain_key, false)? {
        Some(chain_lock) => {
            let staging = store.layer_staging(&idmap, &own_key)?;
            let v = match unpack_into(store, &layer, &staging.join("root"), &cancel, &bar).await {
                Ok(v) => v,
                Err(e) => {
                    let _ = remove_tree(&staging);
                    return Err(e);
                }
            };
            if v.lower_links.is_empty() {
                let meta = publish(store, &own_key, &staging, &v, &diff_id, None)?;
                return Ok((meta, true));
            }
            // It depends on its lowers: the staging tree moves on to the ChainID's key.
            let to = store.layer_staging_path(&idmap, &chain_key);
            let moved = remove_tree(&to).and_then(|()| {
                std::fs::rename(&staging, &to).map_err(|source| StoreError::Io {
                    action: "move",
                    path: staging.clone(),
                    source,
                })
            });
            if let Err(e) = moved {
                let _ = remove_tree(&staging);
                return Err(e.into());
            }
            drop(lock);
            (chain_lock, to, v)
        }
        None => {
            // Another process is producing this layer over this chain: wait for it, holding nothing else.
            drop(lock);
            let chain_lock = lock_layer(store, &chain_key).await?;
            if let Some(meta) = store.layer_meta(&idmap, &chain_key) {
                return Ok((meta, false));
            }
            // It died before publishing: produce the layer here, under the chain's lock.
            let staging = store.layer_staging(&idmap, &chain_key)?;
            match unpack_into(store, &layer, &staging.join("root"), &cancel, &bar).await {
                Ok(v) => (chain_lock, staging, v),
                Err(e) => {
                    let _ = remove_tree(&staging);
                    return Err(e);
                }
            }
        }
    };
    // Its lower layers are produced by sibling tasks (or other processes): give the slot back and wait.
    drop(permit);
    if let Err(e) = link_lowers(store, &staging.join("root"), &v.lower_links, &lowers, cancel).await {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    let meta = publish(store, &chain_key, &staging, &v, &diff_id, Some(&chain_id))?;
    drop(chain_lock);
    Ok((meta, true))
}

/// Takes the lock of the layer `key`, waiting for it.
async fn lock_layer(store: &Store, key: &str) -> Result<Lock, LayerError> {
    let (s, k) = (store.clone(), key.to_string());
    tokio::task::spawn_blocking(move || s.lock_layer(s.idmap(), &k, true))
        .await
        .map_err(|e| LayerError::Task(e.to_string()))??
        .ok_or_else(|| LayerError::Task("a waiting lock was not taken".into()))
}

/// Unpacks the layer into `tree`, from a verified copy in the shared blob cache when there is one (one that fails
/// verification is ignored and the source asked instead), and checks its identity.
async fn unpack_into(
    store: &Store,
    layer: &PendingLayer,
    tree: &Path,
    cancel: &tokio::sync::watch::Receiver<bool>,
    bar: &indicatif::ProgressBar,
) -> Result<Verified, LayerError> {
    let diff_id = &layer.diff_id;
    let opts = UnpackOptions::for_process();
    let cached = match (&layer.fetch, &layer.digest) {
        (LayerFetch::Registry(_), Some(d)) => store.cached_blob(d, layer.size),
        _ => None,
    };
    if let Some((path, file)) = cached {
        tracing::debug!(blob = %path.display(), "layer blob found in the blob cache");
        let r = unpack_open(file, layer.size, tree.to_path_buf(), opts, bar.clone()).await;
        match r.and_then(|v| check_identity(layer, diff_id, v)) {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(blob = %path.display(), error = %e, "ignoring a bad blob in the blob cache");
                let _ = remove_tree(tree);
                let _ = crate::safe_fs::create_dir_mode(tree, 0o755);
            }
        }
    }
    fetch_layer(store, layer, diff_id, tree, opts, cancel, bar).await
}

/// Waits for the lower layers (`(diff_id, ChainID)`, nearest first) to be published, then resolves the hardlinks
/// into them of the layer unpacked at `tree`.
async fn link_lowers(
    store: &Store,
    tree: &Path,
    links: &[LowerLink],
    lowers: &[(Digest, Digest)],
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<(), LayerError> {
    let roots = tokio::select! {
        r = wait_for_layers(store, lowers) => r,
        _ = cancel.wait_for(|v| *v) => return Err(LayerError::Cancelled),
    };
    let (t, links) = (tree.to_path_buf(), links.to_vec());
    tokio::task::spawn_blocking(move || link_from_lower(&t, &roots, &links))
        .await
        .map_err(|e| LayerError::Task(e.to_string()))?
        .map_err(LayerError::from)
}

/// Writes a staged layer's metadata (and markers) and publishes it as `key`; the staging tree is removed if that
/// fails.
fn publish(
    store: &Store,
    key: &str,
    staging: &Path,
    v: &Verified,
    diff_id: &Digest,
    chain_id: Option<&Digest>,
) -> Result<LayerMeta, LayerError> {
    tracing::debug!(%diff_id, key, entries = v.stats.entries, bytes = v.stats.bytes, whiteouts = v.stats.whiteouts,
        skipped_devices = v.stats.skipped_devices, lower_links = v.lower_links.len(), "layer unpacked");
    let meta = LayerMeta {
        diff_id: diff_id.clone(),
        chain_id: chain_id.cloned(),
        blob_digest: v.digest.clone(),
        blob_size: v.size,
        unpacked_bytes: v.stats.bytes,
        entries: v.stats.entries,
    };
    if !v.markers.is_empty() {
        let f = staging.join(crate::image::unpack::MARKERS_FILE);
        if let Err(e) =
            crate::safe_fs::write_new(&f, &serde_json::to_vec(&v.markers).expect("markers serialise"), 0o600)
        {
            let _ = remove_tree(staging);
            return Err(LayerError::File { path: f, source: e });
        }
    }
    if let Err(e) = store.publish_layer(store.idmap(), key, staging, &meta) {
        let _ = remove_tree(staging);
        return Err(e.into());
    }
    Ok(meta)
}

/// The verified identity of an unpacked layer against what the manifest promised.
fn check_identity(layer: &PendingLayer, diff_id: &Digest, v: Verified) -> Result<Verified, LayerError> {
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
    if v.diff_id != *diff_id {
        return Err(LayerError::DiffId {
            expected: diff_id.clone(),
            actual: v.diff_id,
        });
    }
    Ok(v)
}

/// Unpacks `size` bytes of a local file from `offset` into `tree`. The file is opened only if it is a regular
/// file, without blocking (a FIFO planted in an image directory would hang the pull).
async fn unpack_file(
    path: PathBuf,
    offset: u64,
    size: u64,
    tree: PathBuf,
    opts: UnpackOptions,
    bar: indicatif::ProgressBar,
) -> Result<Verified, LayerError> {
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LayerError::File { path, source }
    };
    let p = path.clone();
    let f = tokio::task::spawn_blocking(move || {
        use std::io::Seek;
        let mut f = crate::safe_fs::open_regular(&p, true).map_err(file_err(&p))?;
        f.seek(io::SeekFrom::Start(offset)).map_err(file_err(&p))?;
        Ok::<_, LayerError>(f)
    })
    .await
    .map_err(|e| LayerError::Task(e.to_string()))??;
    unpack_open(f, size, tree, opts, bar).await
}

/// Unpacks the next `size` bytes of an open file into `tree`.
async fn unpack_open(
    f: std::fs::File,
    size: u64,
    tree: PathBuf,
    opts: UnpackOptions,
    bar: indicatif::ProgressBar,
) -> Result<Verified, LayerError> {
    tokio::task::spawn_blocking(move || {
        unpack_verified(
            ProgressReader {
                inner: f.take(size),
                bar,
            },
            &tree,
            opts,
        )
    })
    .await
    .map_err(|e| LayerError::Task(e.to_string()))?
}

/// Downloads (or reads) a layer blob and unpacks it into `tree` in one pass, and checks its identity; a
/// registry download is also copied into the blob cache, published there once verified.
async fn fetch_layer(
    store: &Store,
    layer: &PendingLayer,
    diff_id: &Digest,
    tree: &Path,
    opts: UnpackOptions,
    cancel: &tokio::sync::watch::Receiver<bool>,
    bar: &indicatif::ProgressBar,
) -> Result<Verified, LayerError> {
    match layer.fetch.clone() {
        LayerFetch::Registry(registry) => {
            let digest = layer.digest.clone().expect("registry layers have a digest");
            let tee = store.blob_cache_writer(&digest);
            let (tx, rx) = mpsc::channel::<Bytes>(32);
            let t = tree.to_path_buf();
            let file = tee.as_ref().and_then(|(f, _)| f.try_clone().ok());
            let unpack = tokio::task::spawn_blocking(move || {
                unpack_verified(
                    ChannelReader {
                        rx,
                        cur: Bytes::new(),
                        tee: file,
                    },
                    &t,
                    opts,
                )
            });
            let b = bar.clone();
            let download = registry.stream_blob(&digest, layer.size, tx, move |n| b.inc(n));
            let mut c = cancel.clone();
            // Dropping the download (on cancellation) closes the channel, so the unpacker ends too.
            let download = async move {
                tokio::select! {
                    r = download => r.map_err(LayerError::from),
                    _ = c.wait_for(|v| *v) => Err(LayerError::Cancelled),
                }
            };
            let (dl, up) = tokio::join!(download, unpack);
            let up = up.map_err(|e| LayerError::Task(e.to_string()))?;
            // A download error explains a truncated stream better than the unpacker's complaint about it.
            let res = match dl {
                Err(e) => Err(e),
                Ok(()) => up,
            }
            .and_then(|v| check_identity(layer, diff_id, v));
            if let Some((file, tmp)) = tee {
                match &res {
                    Ok(_) => store.publish_cached_blob(&file, &tmp, &digest, layer.size),
                    Err(_) => {
                        let _ = std::fs::remove_file(&tmp);
                    }
                }
            }
            res
        }
        LayerFetch::File { path, offset } => {
            unpack_file(path, offset, layer.size, tree.to_path_buf(), opts, bar.clone())
                .await
                .and_then(|v| check_identity(layer, diff_id, v))
        }
    }
}

/// Waits until every layer in `layers` (`(diff_id, ChainID)`) is published and returns their trees. The pull
/// fails (and aborts this task) if one cannot be.
async fn wait_for_layers(store: &Store, layers: &[(Digest, Digest)]) -> Vec<PathBuf> {
    loop {
        let found: Option<Vec<PathBuf>> = layers
            .iter()
            .map(|(d, c)| {
                store
                    .find_layer(store.idmap(), d, c)
                    .map(|k| store.layer_root(store.idmap(), &k))
            })
            .collect();
        if let Some(roots) = found {
            return roots;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Verified {
    digest: Digest,
    size: u64,
    diff_id: Digest,
    stats: UnpackStats,
    lower_links: Vec<LowerLink>,
    markers: crate::image::unpack::Markers,
}

/// The single pass: hash the blob, detect and undo its compression, hash the tar, unpack it.
fn unpack_verified<R: Read>(src: R, dest: &Path, opts: UnpackOptions) -> Result<Verified, LayerError> {
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
    let unpacked = unpack_layer(&mut tar, dest, opts)?;
    let (diff_id, _) = tar.finish().map_err(LayerError::Decompress)?;
    io::copy(&mut blob, &mut io::sink()).map_err(LayerError::Decompress)?;
    let (digest, size) = blob.into_inner().finish().map_err(LayerError::Decompress)?;
    Ok(Verified {
        digest,
        size,
        diff_id,
        stats: unpacked.stats,
        lower_links: unpacked.lower_links,
        markers: unpacked.markers,
    })
}

/// Blocking reader over the chunks a download task sends.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
    /// A copy of the blob for the shared blob cache; dropped (and the copy abandoned) on a write error.
    tee: Option<std::fs::File>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => {
                    if let Some(f) = self.tee.as_mut() {
                        if let Err(e) = f.write_all(&b) {
                            tracing::debug!(error = %e, "cannot write to the blob cache; not caching this blob");
                            self.tee = None;
                        } else {
                            crate::failpoint::hit("blob-cache-copying");
                        }
                    }
                    self.cur = b
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

struct ProgressReader<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn selects_platform_from_index() {
        let idx = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#;
        let Parsed::Index(list) = parse_manifest(idx).unwrap() else {
            panic!("not an index")
        };
        let arm = select_platform(&list, &"linux/arm64".parse().unwrap()).unwrap();
        assert!(arm.digest.hex().starts_with("2222"));
        let err = select_platform(&list, &"linux/s390x".parse().unwrap()).unwrap_err();
        assert_eq!(err, "linux/amd64, linux/arm64/v8");
    }

    #[test]
    fn rejects_schema1_and_mismatched_configs() {
        assert!(parse_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        let layers = vec![];
        let cfg = br#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}}"#;
        let err = pair_layers(cfg, &layers, |_| LayerFetch::File {
            path: "/x".into(),
            offset: 0,
        })
        .err()
        .unwrap();
        assert!(err.contains("lists 0 layers"), "{err}");
    }
}
