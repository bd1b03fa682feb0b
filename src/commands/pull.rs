//! `drun pull`, and `drun pull --squash`: the image kept as one squashfs file in the store
//! (`squash/<manifest hex>.sqsh`, what `drun export -o FILE.sqsh` writes), its layers unpacked only into a
//! private staging store under `tmp/` that is removed once the file is written.

use anyhow::{Context, Result};

use crate::cli::{GlobalArgs, PullArgs};
use crate::image::image_dir::ImageDir;
use crate::image::pull::{pull, pull_to_squash, PullOptions, Streamed};
use crate::image::registry::config::Config;
use crate::image::source::ImageSource;
use crate::image::squash::export::ExportError;
use crate::image::store::{ImageRecord, Store};
use crate::units::ByteSize;

pub fn execute(global: &GlobalArgs, args: PullArgs) -> Result<i32> {
    let source = ImageSource::parse(&args.image)?;
    let platform = args.platform.as_deref().map(str::parse).transpose()?;
    let cfg = Config::load()?;
    let store = super::open_store(global)?;
    if args.squash {
        return pull_squash(global, &store, &cfg, &source, &args, platform);
    }
    let report = pull(
        &store,
        &cfg,
        &source,
        &PullOptions {
            platform,
            quiet: args.quiet,
        },
    )?;
    if !args.quiet {
        for rec in &report.records {
            let state = if report.up_to_date { "up to date" } else { "pulled" };
            eprintln!(
                "{}: {state} ({} layers: {} fetched, {} reused; {} in {:.2}s)",
                rec.name,
                rec.layers.len(),
                report.layers_fetched,
                report.layers_reused,
                ByteSize(report.bytes_fetched),
                report.elapsed.as_secs_f64()
            );
        }
    }
    for rec in &report.records {
        println!("{}", rec.manifest_digest);
    }
    Ok(0)
}

/// `--squash`: the image kept as `squash/<manifest hex>.sqsh` in the store, or in the `--image-dir`.
fn pull_squash(
    global: &GlobalArgs,
    store: &Store,
    cfg: &Config,
    source: &ImageSource,
    args: &PullArgs,
    platform: Option<crate::image::platform::Platform>,
) -> Result<i32> {
    let opts = PullOptions {
        platform,
        quiet: args.quiet,
    };
    if let Some(dir) = image_dir(global, cfg) {
        let file = ensure_in_image_dir(&dir, store, cfg, source, &opts)?;
        if !args.quiet {
            eprintln!(
                "{}: in the image directory as {}",
                source.canonical_name(),
                file.display()
            );
        }
        println!(
            "{}",
            crate::image::squash::SquashImage::open(&file)?.meta.manifest_digest
        );
        return Ok(0);
    }
    let started = std::time::Instant::now();
    // Held all along: garbage collection (which removes squash files no record names) waits for the record.
    let _shared = store.lock_shared()?;
    let (records, meta) = convert(store, cfg, source, &opts, &|m| store.squash_file(m))?;
    for rec in &records {
        store.save_image(&ImageRecord {
            layers: vec![],
            size: meta.squashfs_size,
            squash: true,
            pulled_at: time::OffsetDateTime::now_utc(),
            ..rec.clone()
        })?;
        if !args.quiet {
            eprintln!(
                "{}: pulled as a squashfs image file ({} in {:.2}s)",
                rec.name,
                ByteSize(meta.squashfs_size),
                started.elapsed().as_secs_f64()
            );
        }
        println!("{}", rec.manifest_digest);
    }
    Ok(0)
}

/// `--image-dir`, or the config's `image_dir`.
pub(super) fn image_dir(global: &GlobalArgs, cfg: &Config) -> Option<std::path::PathBuf> {
    global.image_dir.clone().or_else(|| cfg.image_dir.clone())
}

/// The image's file in the image directory `dir`: the published one (checked against its record, no lock
/// taken), or converted here under the name's lock when no node has published it yet.
pub(super) fn ensure_in_image_dir(
    dir: &std::path::Path,
    store: &Store,
    cfg: &Config,
    source: &ImageSource,
    opts: &PullOptions,
) -> Result<std::path::PathBuf> {
    let name = source.canonical_name();
    let images = ImageDir::open(dir)?;
    if let Some(file) = images.lookup(&name, store)? {
        return Ok(file);
    }
    let _lock = images.lock(&name)?;
    // Another node may have published it while this one waited.
    if let Some(file) = images.lookup(&name, store)? {
        return Ok(file);
    }
    crate::failpoint::pause("image-dir-producing");
    let started = std::time::Instant::now();
    let _shared = store.lock_shared()?;
    let (_, meta) = convert(store, cfg, source, opts, &|m| {
        let file = images.file_for(m);
        images.remove_stale_partials(&file);
        file
    })?;
    let file = images.file_for(&meta.manifest_digest);
    crate::failpoint::hit("image-dir-before-publish");
    images.publish(&name, &file, &meta)?;
    tracing::info!(image = %name, file = %file.display(), "converted into the image directory");
    if !opts.quiet {
        eprintln!(
            "{name}: converted into the image directory ({} in {:.2}s)",
            ByteSize(meta.squashfs_size),
            started.elapsed().as_secs_f64()
        );
    }
    images
        .lookup(&name, store)?
        .context("the image file just published is gone")
}

/// Pulls `source` into the image file `out(manifest digest)`: streamed (`image/pull/to_squash.rs`), or, for an
/// image whose layers cannot be streamed, through an unpacked copy ([`convert_by_unpacking`]). The caller holds
/// the store's lock shared.
fn convert(
    store: &Store,
    cfg: &Config,
    source: &ImageSource,
    opts: &PullOptions,
    out: &dyn Fn(&crate::digest::Digest) -> std::path::PathBuf,
) -> Result<(Vec<ImageRecord>, crate::image::squash::Metadata)> {
    // A Slurm node's memory is the job's: bound the writer's buffers there. Without a setting, tar2sqfs holds ten
    // blocks per CPU and `export`'s mksquashfs 256M.
    let mem = std::env::var("DRUN_SQUASH_MEM")
        .ok()
        .filter(|m| !m.is_empty())
        .or_else(|| cfg.squash_mem.clone());
    let queue_bytes = mem
        .as_deref()
        .map(|m| {
            m.parse::<ByteSize>()
                .map(|b| b.0)
                .with_context(|| format!("invalid squash_mem (or DRUN_SQUASH_MEM) {m:?}"))
        })
        .transpose()?;
    // The directory of the file, made once the manifest is known; `out` only names it.
    let target = |m: &crate::digest::Digest| -> Result<std::path::PathBuf, ExportError> {
        let file = out(m);
        let dir = file.parent().expect("a parent");
        crate::sys::safe_fs::create_dir_all_mode(dir, 0o700).map_err(|source| ExportError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(file)
    };
    let streamed = pull_to_squash(store, cfg, source, opts, &target, queue_bytes);
    match streamed? {
        Streamed::Written {
            records, file, layers, ..
        } => {
            tracing::debug!(layers, "pulled into a squashfs image file, streamed");
            crate::image::squash::export::record_written(store, &file);
            Ok((records, file.meta))
        }
        Streamed::NotStreamable(why) => {
            tracing::info!(reason = %why, "converting through an unpacked copy");
            convert_by_unpacking(store, cfg, source, opts, &target, mem.as_deref())
        }
    }
}

/// Pulls `source` into a staging store of its own under the store's `tmp/` (its layers verified and unpacked
/// there as any pull's), merges them by the run path's overlay into `mksquashfs` writing `out(manifest digest)`,
/// and copies the image's manifest and config into the store; the staging store is removed on return. The
/// caller holds the store's lock shared.
fn convert_by_unpacking(
    store: &Store,
    cfg: &Config,
    source: &ImageSource,
    opts: &PullOptions,
    out: &dyn Fn(&crate::digest::Digest) -> Result<std::path::PathBuf, ExportError>,
    mem: Option<&str>,
) -> Result<(Vec<ImageRecord>, crate::image::squash::Metadata)> {
    let work = crate::image::squash::export::work_dir(store)?;
    let staging = Store::open(&work.0.join("store"))?.with_blob_cache(store.blob_cache().map(Into::into));
    let report = pull(&staging, cfg, source, opts)?;
    let Some(first) = report.records.first() else {
        anyhow::bail!("cannot pull {:?}: it holds no image", source.canonical_name());
    };
    let file = out(&first.manifest_digest)?;
    let layers: Vec<std::path::PathBuf> = first
        .layers
        .iter()
        .map(|l| staging.layer_root(staging.idmap(), &l.key()))
        .collect();
    let meta = super::export::write_squash(store, &staging, first, &layers, &file, mem)
        .with_context(|| format!("cannot pull {:?} as a squashfs image file", first.name))?;
    for digest in [
        Some(&first.manifest_digest),
        Some(&first.config_digest),
        first.index_digest.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(data) = staging.read_blob(digest)? {
            store.write_blob(digest, &data)?;
        }
    }
    Ok((report.records, meta))
}
