//! `drun pull`, and `drun pull --squash`: the image kept as one squashfs file in the store
//! (`squash/<manifest hex>.sqsh`, what `drun export -o FILE.sqsh` writes), its layers unpacked only into a
//! private staging store under `tmp/` that is removed once the file is written.

use anyhow::{Context, Result};

use crate::cli::{GlobalArgs, PullArgs};
use crate::image::pull::{pull, PullOptions};
use crate::image::registry::config::Config;
use crate::image::source::ImageSource;
use crate::image::store::{ImageRecord, Store};
use crate::units::ByteSize;

pub fn execute(global: &GlobalArgs, args: PullArgs) -> Result<i32> {
    let source = ImageSource::parse(&args.image)?;
    let platform = args.platform.as_deref().map(str::parse).transpose()?;
    let cfg = Config::load()?;
    let store = super::open_store(global)?;
    if args.squash {
        return pull_squash(&store, &cfg, &source, &args, platform);
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

/// `--squash`: pulled into a staging store of its own (its layers verified and unpacked there as any pull's),
/// merged by the run path's overlay into `mksquashfs`, the file renamed into the store, then the staging store
/// removed and the image recorded with no layers.
fn pull_squash(
    store: &Store,
    cfg: &Config,
    source: &ImageSource,
    args: &PullArgs,
    platform: Option<crate::image::platform::Platform>,
) -> Result<i32> {
    let started = std::time::Instant::now();
    // Held all along: garbage collection (which removes squash files no record names) waits for the record.
    let _shared = store.lock_shared()?;
    let work = crate::image::squash::export::work_dir(store)?;
    let staging = Store::open(&work.0.join("store"))?.with_blob_cache(store.blob_cache().map(Into::into));
    let report = pull(
        &staging,
        cfg,
        source,
        &PullOptions {
            platform,
            quiet: args.quiet,
        },
    )?;
    let Some(first) = report.records.first() else {
        anyhow::bail!("cannot pull {:?}: it holds no image", source.canonical_name());
    };
    let file = store.squash_file(&first.manifest_digest);
    crate::sys::safe_fs::create_dir_all_mode(file.parent().expect("a parent"), 0o700)?;
    let layers: Vec<std::path::PathBuf> = first
        .layers
        .iter()
        .map(|l| staging.layer_root(staging.idmap(), &l.key()))
        .collect();
    let meta = super::export::write_squash(store, &staging, first, &layers, &file, None)
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
    for rec in &report.records {
        store.save_image(&ImageRecord {
            layers: vec![],
            size: meta.squashfs_size,
            squash: true,
            pulled_at: time::OffsetDateTime::now_utc(),
            ..rec.clone()
        })?;
    }
    drop(staging);
    drop(work);
    for rec in &report.records {
        if !args.quiet {
            eprintln!(
                "{}: pulled as a squashfs image file ({} layers; {} in {:.2}s)",
                rec.name,
                rec.layers.len(),
                ByteSize(meta.squashfs_size),
                started.elapsed().as_secs_f64()
            );
        }
        println!("{}", rec.manifest_digest);
    }
    Ok(0)
}
