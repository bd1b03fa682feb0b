//! Making an image ready to run: found in the store (or pulled, per the pull policy), its layers unpacked for this
//! process's ID mapping, its config read. The run path asks here and never pulls itself.

use std::path::PathBuf;

use crate::image::platform::Platform;
use crate::image::pull::{pull, PullError, PullOptions};
use crate::image::registry::config::Config;
use crate::image::source::{lookup_names, ImageSource, SourceError};
use crate::image::store::{ImageRecord, Store, StoreError};

/// When an image is pulled before a run (`--pull`, whose spellings are clap's: the plan re-exports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum PullPolicy {
    /// Only when the store does not have it.
    #[default]
    Missing,
    /// Every time (a tag may have moved).
    Always,
    /// Never: a missing image is an error.
    Never,
}

/// The image a run asks for.
#[derive(Clone, Copy, Debug)]
pub struct ImageRequest<'a> {
    /// The image as typed.
    pub reference: &'a str,
    pub pull: PullPolicy,
    pub platform: Option<&'a Platform>,
    /// No progress output while pulling.
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image {0:?} is not in the store and --pull=never was given")]
    NotPulled(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the layers of image {image:?} are not unpacked for this ID mapping ({idmap}) and --pull=never was given")]
    NotUnpacked { image: String, idmap: String },
    #[error("layer {path:?} of image {image:?} is missing; pull the image again")]
    LayerMissing { image: String, path: PathBuf },
    #[error("cannot read the config of image {image:?}: its blob is missing from the store")]
    ConfigMissing { image: String },
    #[error(transparent)]
    Squash(#[from] crate::image::squash::SquashError),
    #[error("invalid config in image {image:?}")]
    ConfigInvalid {
        image: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// An image ready to run: its record (layers unpacked for this ID mapping) and its config.
#[derive(Debug)]
pub struct ReadyImage {
    pub record: ImageRecord,
    /// The image config's `config` (Entrypoint, Cmd, Env, User, WorkingDir); empty when the image has none.
    pub config: oci_spec::image::Config,
    /// A squashfs image file (`drun run FILE.sqsh`): mounted for the run instead of the store's layers (the
    /// record then has none).
    pub squash: Option<crate::image::squash::SquashImage>,
    /// The image config's `Healthcheck`, a Docker extension the typed config drops (read from the raw JSON).
    pub healthcheck: Option<crate::run::health::ImageHealthcheck>,
}

impl ReadyImage {
    /// The directories of the image's unpacked layers for this process's ID mapping, bottom first; every one must
    /// be there. Called under the store's shared lock by a run that is about to use them.
    pub fn layer_dirs(&self, store: &Store) -> Result<Vec<PathBuf>, ReadyError> {
        let dirs: Vec<PathBuf> = self
            .record
            .layers
            .iter()
            .map(|l| store.layer_root(store.idmap(), &l.key()))
            .collect();
        if let Some(missing) = dirs.iter().find(|p| !p.is_dir()) {
            return Err(ReadyError::LayerMissing {
                image: self.record.name.clone(),
                path: missing.clone(),
            });
        }
        Ok(dirs)
    }
}

/// [`ensure_image`], then the image's config read from the store.
pub fn ready_image(store: &Store, cfg: &Config, req: &ImageRequest) -> Result<ReadyImage, ReadyError> {
    if let Some(file) = crate::image::squash::is_squash_path(req.reference) {
        return squash_image(&file);
    }
    let record = ensure_image(store, cfg, req)?;
    if record.squash {
        // Pulled with --squash: the store's file of its manifest (its config is in the file's trailer too).
        let mut ready = squash_image(&store.squash_file(&record.manifest_digest))?;
        ready.record = record;
        return Ok(ready);
    }
    let bytes = store
        .read_blob(&record.config_digest)?
        .ok_or_else(|| ReadyError::ConfigMissing {
            image: record.name.clone(),
        })?;
    let image_config =
        oci_spec::image::ImageConfiguration::from_reader(&bytes[..]).map_err(|source| ReadyError::ConfigInvalid {
            image: record.name.clone(),
            source,
        })?;
    let config = image_config.config().clone().unwrap_or_default();
    Ok(ReadyImage {
        record,
        config,
        squash: None,
        healthcheck: crate::run::health::image_healthcheck(&bytes),
    })
}

/// A squashfs image file: its trailer read (the data is checked when it is mounted), a record made up for it.
fn squash_image(file: &std::path::Path) -> Result<ReadyImage, ReadyError> {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let image = crate::image::squash::SquashImage::open(&file)?;
    let config = image.config()?;
    let record = ImageRecord {
        name: format!("sqsh:{}", file.display()),
        manifest_digest: image.meta.manifest_digest.clone(),
        index_digest: None,
        config_digest: image.meta.config_digest.clone(),
        platform: String::new(),
        layers: vec![],
        size: image.meta.squashfs_size,
        pulled_at: time::OffsetDateTime::now_utc(),
        squash: true,
    };
    Ok(ReadyImage {
        record,
        config,
        squash: Some(image),
        healthcheck: None,
    })
}

/// Makes sure the image is in the store per the pull policy and returns its record, with its layers unpacked
/// for this process's ID mapping (a rootless `--userns keep-id` run needs its own copies: pulled again, from
/// `--blob-cache` when it has the blobs).
pub fn ensure_image(store: &Store, cfg: &Config, req: &ImageRequest) -> Result<ImageRecord, ReadyError> {
    // A squashfs image file (a workflow's `image: ./app.sqsh`) is all there is: nothing to pull or unpack.
    if let Some(file) = crate::image::squash::is_squash_path(req.reference) {
        return squash_image(&file).map(|r| r.record);
    }
    let record = ensure_record(store, cfg, req)?;
    if record.layers.iter().all(|l| store.has_layer(store.idmap(), &l.key())) {
        return Ok(record);
    }
    if req.pull == PullPolicy::Never {
        return Err(ReadyError::NotUnpacked {
            image: record.name.clone(),
            idmap: store.idmap().to_string(),
        });
    }
    tracing::debug!(image = %record.name, idmap = store.idmap(), "unpacking the image's layers for this ID mapping");
    let source = ImageSource::parse(&record.name)?;
    pull(store, cfg, &source, &pull_options(req))?;
    Ok(store.image(&record.name)?.unwrap_or(record))
}

fn ensure_record(store: &Store, cfg: &Config, req: &ImageRequest) -> Result<ImageRecord, ReadyError> {
    // The warm path: no reference parsing at all when the store already knows the name.
    if req.pull != PullPolicy::Always {
        if let Some(r) = store.image_by_alias(req.reference)? {
            return Ok(r);
        }
    }
    let source = ImageSource::parse(req.reference)?;
    let names = lookup_names(req.reference);
    let find = || {
        let r = store.find_image(req.reference, &names)?;
        store.save_alias(req.reference, &r.name)?;
        Ok::<_, StoreError>(r)
    };
    match req.pull {
        PullPolicy::Always => {
            pull(store, cfg, &source, &pull_options(req))?;
            Ok(find()?)
        }
        PullPolicy::Never => find().map_err(|_| ReadyError::NotPulled(req.reference.to_string())),
        PullPolicy::Missing => match find() {
            Ok(r) => Ok(r),
            Err(_) => {
                let report = pull(store, cfg, &source, &pull_options(req))?;
                // A docker archive records its own names; anything else is found under its canonical name.
                match report.records.into_iter().next() {
                    Some(r) if store.image(&source.canonical_name())?.is_none() => Ok(r),
                    _ => Ok(find()?),
                }
            }
        },
    }
}

fn pull_options(req: &ImageRequest) -> PullOptions {
    PullOptions {
        platform: req.platform.cloned(),
        quiet: req.quiet,
    }
}
