//! `drun export IMAGE -o FILE.sqsh`: the image's merged root file system as a squashfs image file
//! (`image/squash/`), made from the run path's own overlay of its layers. `-o oci-archive:FILE[:TAG]` and
//! `-o docker-archive:FILE`: the image as a tarball (`image/archive/`).

use anyhow::{bail, Context, Result};

use crate::cli::{ExportArgs, GlobalArgs};
use crate::image::archive::{write_archive, ArchiveFormat};
use crate::image::ready::{ready_image, ImageRequest, PullPolicy, ReadyImage};
use crate::image::registry::config::Config;
use crate::image::source::ImageSource;
use crate::image::squash::export::{write_image_file, ImageIds};
use crate::image::squash::Metadata;
use crate::image::store::{ImageRecord, Store};

pub fn execute(global: &GlobalArgs, args: ExportArgs) -> Result<i32> {
    let out = args.output.to_string_lossy().into_owned();
    if out.starts_with("oci-archive:") || out.starts_with("docker-archive:") {
        return export_archive(global, &args, &out);
    }
    if !(out.ends_with(".sqsh") || out.ends_with(".squashfs")) {
        bail!(
            "invalid output {out:?}: expected FILE.sqsh, FILE.squashfs, oci-archive:FILE[:TAG] or docker-archive:FILE"
        );
    }
    let (store, image) = find_image(global, &args.image)?;
    if image.squash.is_some() {
        bail!("{:?} is already a squashfs image file", args.image);
    }
    let record = &image.record;
    let _shared = store.lock_shared()?;
    let layers = image.layer_dirs(&store)?;
    let started = std::time::Instant::now();
    let meta = write_squash(&store, &store, record, &layers, &args.output, args.mem.as_deref())
        .with_context(|| format!("cannot export {:?} to {:?}", record.name, args.output))?;
    eprintln!(
        "{}: exported to {} ({} in {:.1}s)",
        record.name,
        args.output.display(),
        crate::units::ByteSize(meta.squashfs_size),
        started.elapsed().as_secs_f64()
    );
    println!("{}", meta.squashfs_digest);
    Ok(0)
}

/// `-o oci-archive:FILE[:TAG]` or `-o docker-archive:FILE`.
fn export_archive(global: &GlobalArgs, args: &ExportArgs, out: &str) -> Result<i32> {
    let (file, format) = match ImageSource::parse(out)? {
        ImageSource::OciArchive { file, tag } => (file, ArchiveFormat::Oci { tag }),
        ImageSource::DockerArchive { file } => (file, ArchiveFormat::Docker),
        _ => unreachable!("the prefix was checked"),
    };
    if args.mem.is_some() {
        bail!("--mem is for squashfs image files (FILE.sqsh): archives need no mksquashfs");
    }
    let (store, image) = find_image(global, &args.image)?;
    if image.squash.is_some() {
        bail!(
            "{:?} is a squashfs image file: it has no layers to write into an archive",
            args.image
        );
    }
    let record = &image.record;
    let _shared = store.lock_shared()?;
    let started = std::time::Instant::now();
    let done = write_archive(&store, record, &format, &file)
        .with_context(|| format!("cannot export {:?} to {out:?}", record.name))?;
    eprintln!(
        "{}: exported to {} ({}; {} layers copied, {} written from the store; {:.1}s)",
        record.name,
        file.display(),
        crate::units::ByteSize(done.bytes),
        done.layers_copied,
        done.layers_rebuilt,
        started.elapsed().as_secs_f64()
    );
    println!("{}", done.manifest_digest);
    Ok(0)
}

/// Writes the squashfs image file of `record` at `out`, from `layers` (unpacked in `from`, whose blobs hold the
/// config) merged by the run path's own overlay in a private mount namespace, and records it as published in
/// `store` (as root: see `run/squash_mount.rs`). The caller holds the store's lock shared.
pub(super) fn write_squash(
    store: &Store,
    from: &Store,
    record: &ImageRecord,
    layers: &[std::path::PathBuf],
    out: &std::path::Path,
    mem: Option<&str>,
) -> Result<Metadata> {
    let config_bytes = from
        .read_blob(&record.config_digest)?
        .with_context(|| format!("the config of image {:?} is missing from the store", record.name))?;
    let config: serde_json::Value = serde_json::from_slice(&config_bytes)?;
    let work = crate::image::squash::export::work_dir(store)?;
    let ids = ImageIds {
        name: &record.name,
        manifest_digest: &record.manifest_digest,
        config_digest: &record.config_digest,
        config,
    };
    let made = crate::image::squash::export::in_private_mounts(|| {
        // (Its upper directory, on a tmpfs where the store's file system cannot hold one, goes with the private
        // mount namespace.)
        let mut scratch = crate::run::rootfs::Scratch::new(&work.0, None);
        let (merged, _) = crate::run::rootfs::prepare(&mut scratch, &work.0, layers)?;
        Ok(write_image_file(&merged, ids, out, mem)?)
    });
    drop(work);
    let written = made?;
    crate::image::squash::export::record_written(store, &written);
    Ok(written.meta)
}

/// The store and the image to export, pulled first if it is not there.
fn find_image(global: &GlobalArgs, reference: &str) -> Result<(Store, ReadyImage)> {
    let store = super::open_store(global)?;
    let cfg = Config::load()?;
    let image = ready_image(
        &store,
        &cfg,
        &ImageRequest {
            reference,
            pull: PullPolicy::Missing,
            platform: None,
            quiet: true,
        },
    )?;
    Ok((store, image))
}
