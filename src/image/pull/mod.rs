//! Pulling: resolve a source to one manifest for the platform, fetch its config, and make sure every layer is
//! unpacked in the store — downloading, verifying and unpacking each layer in one streaming pass, layers
//! concurrently — then record the image.
//!
//! The files, in the order a pull goes through them: `resolve.rs` (a registry reference to one manifest and its
//! layers; local sources: `image/local.rs`), `layers.rs` (every layer present, concurrently),
//! `produce_layer.rs` (one layer under its locks: staged, published), `download.rs` (where a layer's bytes come
//! from: blob cache, registry, local file), `verify.rs` (digest, size and diff_id checked while unpacking),
//! `record.rs` (the image record, written last).

mod download;
mod layers;
mod produce_layer;
mod record;
mod resolve;
mod to_squash;
mod verify;

use std::io;
use std::time::{Duration, Instant};

pub use resolve::{LayerFetch, PendingLayer, Resolved};
pub use to_squash::{pull_to_squash, Streamed};

pub(crate) use resolve::pending_layers;

use crate::digest::Digest;
use crate::image::local::{self, LocalError};
use crate::image::manifest::ManifestError;
use crate::image::platform::{NoPlatform, Platform};
use crate::image::registry::config::Config;
use crate::image::registry::RegistryError;
use crate::image::source::ImageSource;
use crate::image::store::{ImageRecord, Store, StoreError};
use crate::image::unpack::UnpackError;
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot pull {name:?}")]
    Registry { name: String, source: Box<RegistryError> },
    #[error("cannot pull {name:?}")]
    Local { name: String, source: Box<LocalError> },
    #[error("cannot pull {name:?}")]
    Store { name: String, source: StoreError },
    #[error("cannot pull {name:?}")]
    Manifest { name: String, source: Box<ManifestError> },
    #[error("cannot pull {name:?}")]
    NoPlatform { name: String, source: Box<NoPlatform> },
    #[error("cannot pull {name:?}: the index names manifest {expected}, which hashes to {actual}")]
    ManifestDigest {
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("cannot pull {name:?}: layer {digest}")]
    Layer {
        name: String,
        digest: Digest,
        source: Box<LayerError>,
    },
    #[error("cannot pull {name:?} into a squashfs image file")]
    Squash {
        name: String,
        source: crate::image::squash::export::ExportError,
    },
    #[error("cannot pull {name:?}: cannot start the async runtime")]
    Runtime { name: String, source: io::Error },
    #[error("cannot pull {name:?}: a layer task stopped")]
    Task {
        name: String,
        source: tokio::task::JoinError,
    },
}

/// Why one layer could not be made present.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("invalid blob: its content hashes to {actual}, expected {expected}")]
    Digest { expected: Digest, actual: Digest },
    #[error(
        "invalid layer: its uncompressed content hashes to {actual}, but the image config's diff_id is {expected}"
    )]
    DiffId { expected: Digest, actual: Digest },
    #[error("invalid blob: it has {actual} bytes, the manifest says {expected}")]
    Size { expected: u64, actual: u64 },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Merge(#[from] crate::image::unpack::MergeError),
    #[error("cannot decompress the layer")]
    Decompress(#[source] io::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path:?}")]
    File {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("cannot write {path:?}")]
    Write {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("a layer task stopped")]
    Task(#[source] tokio::task::JoinError),
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

/// Pulls `source` into `store`.
pub fn pull(store: &Store, cfg: &Config, source: &ImageSource, opts: &PullOptions) -> Result<PullReport, PullError> {
    let started = Instant::now();
    let name = source.canonical_name();
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let _shared = store.lock_shared().map_err(|source| PullError::Store {
        name: name.clone(),
        source,
    })?;
    let progress = Progress::new(opts.quiet);
    let rt = runtime(&name)?;
    let report = rt.block_on(async {
        let resolved = resolve_source(cfg, store, source, &platform, &name).await?;
        let (image, layers) = record::ImageDocuments::of(resolved);
        let present = layers::make_layers_present(store, layers, &progress, &name).await?;
        record::record_image(store, image, present, &name)
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let mut report = report?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The runtime for one pull: it lives only for the call, as later stages (libcontainer) must not run beside its
/// threads.
fn runtime(name: &str) -> Result<tokio::runtime::Runtime, PullError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(|source| PullError::Runtime {
            name: name.to_string(),
            source,
        })
}

/// `source` resolved to one image for `platform`.
async fn resolve_source(
    cfg: &Config,
    store: &Store,
    source: &ImageSource,
    platform: &Platform,
    name: &str,
) -> Result<Resolved, PullError> {
    let local_err = |source| PullError::Local {
        name: name.to_string(),
        source: Box::new(source),
    };
    Ok(match source {
        ImageSource::Registry(r) => resolve::resolve_registry(cfg, store, r, platform, name).await?,
        ImageSource::OciLayout { dir, tag } => {
            local::resolve_oci_layout(dir, tag.as_deref(), platform, name).map_err(local_err)?
        }
        ImageSource::OciArchive { file, tag } => {
            local::resolve_oci_archive(file, tag.as_deref(), platform, name).map_err(local_err)?
        }
        ImageSource::DockerArchive { file } => local::resolve_docker_archive(file, name).map_err(local_err)?,
    })
}
