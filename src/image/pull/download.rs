//! Where a layer's bytes come from, streamed into the verifying unpacker: a verified copy in the shared blob
//! cache, a registry download (resumed on faults by the registry client, and copied into the blob cache), or a
//! byte range of a local file. Never publishes anything into the store.

use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::verify::{check_identity, check_measured, read_verified, unpack_verified, Measured, VerifiedLayer};
use super::{LayerError, LayerFetch, PendingLayer};
use crate::image::store::{remove_tree, Store};
use crate::image::unpack::{MergeError, UnpackOptions};

/// Downloaded chunks queued for a layer's unpacker at most (see [`fetch_layer`]).
const DOWNLOAD_QUEUE: usize = 4;

/// Unpacks the layer into `tree`, from a verified copy in the shared blob cache when there is one (one that fails
/// verification is ignored and the source asked instead), and checks its identity.
pub(super) async fn unpack_into(
    store: &Store,
    layer: &PendingLayer,
    tree: &Path,
    cancel: &tokio::sync::watch::Receiver<bool>,
    bar: &indicatif::ProgressBar,
) -> Result<VerifiedLayer, LayerError> {
    let opts = UnpackOptions::for_process();
    let cached = match (&layer.fetch, &layer.digest) {
        (LayerFetch::Registry(_), Some(d)) => store.cached_blob(d, layer.size),
        _ => None,
    };
    if let Some((path, file)) = cached {
        tracing::debug!(blob = %path.display(), "layer blob found in the blob cache");
        let r = unpack_open(file, layer.size, tree.to_path_buf(), opts, bar.clone()).await;
        match r.and_then(|v| check_identity(layer, v)) {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(blob = %path.display(), error = %e, "ignoring a bad blob in the blob cache");
                let _ = remove_tree(tree);
                let _ = crate::sys::safe_fs::create_dir_mode(tree, 0o755);
            }
        }
    }
    fetch_layer(store, layer, tree, opts, cancel, bar).await
}

/// Downloads (or reads) a layer blob and unpacks it into `tree` in one pass, and checks its identity; a
/// registry download is also copied into the blob cache, published there once verified.
async fn fetch_layer(
    store: &Store,
    layer: &PendingLayer,
    tree: &Path,
    opts: UnpackOptions,
    cancel: &tokio::sync::watch::Receiver<bool>,
    bar: &indicatif::ProgressBar,
) -> Result<VerifiedLayer, LayerError> {
    let t = tree.to_path_buf();
    let v = fetch_blob(store, layer, cancel, bar, move |blob| {
        let v = unpack_verified(blob, &t, opts)?;
        Ok((measured(&v), v))
    })
    .await?;
    Ok(v)
}

/// Reads a layer's tar stream through `use_tar` in one pass from wherever its blob is (the blob cache, the
/// registry, a local file; see [`fetch_blob`]), and checks the layer's identity. Nothing is retried:
/// `use_tar` may have used part of a stream that then failed.
pub(super) async fn read_layer<T: Send + 'static>(
    store: &Store,
    layer: &PendingLayer,
    cancel: &tokio::sync::watch::Receiver<bool>,
    bar: &indicatif::ProgressBar,
    use_tar: impl FnOnce(&mut dyn Read) -> Result<T, LayerError> + Send + 'static,
) -> Result<T, LayerError> {
    let cached = match (&layer.fetch, &layer.digest) {
        (LayerFetch::Registry(_), Some(d)) => store.cached_blob(d, layer.size),
        _ => None,
    }
    // Read twice (checked, then streamed), so only a copy no one else can change in between: the caller's or root's,
    // writable by its owner only. (The unpacker re-downloads a copy that fails the second read; a stream cannot.)
    .filter(|(_, f)| {
        f.metadata()
            .is_ok_and(|m| (m.uid() == nix::unistd::geteuid().as_raw() || m.uid() == 0) && m.mode() & 0o022 == 0)
    });
    if let Some((path, file)) = cached {
        tracing::debug!(blob = %path.display(), "layer blob found in the blob cache");
        let (size, b) = (layer.size, bar.clone());
        let (m, made) = tokio::task::spawn_blocking(move || {
            read_verified(
                ProgressReader {
                    inner: file.take(size),
                    bar: b,
                },
                use_tar,
            )
        })
        .await
        .map_err(LayerError::Task)??;
        check_measured(layer, m)?;
        return Ok(made);
    }
    fetch_blob(store, layer, cancel, bar, move |blob| read_verified(blob, use_tar)).await
}

/// The identity measured while unpacking.
fn measured(v: &VerifiedLayer) -> Measured {
    Measured {
        digest: v.digest.clone(),
        size: v.size,
        diff_id: v.diff_id.clone(),
    }
}

/// Downloads (or reads) a layer blob through `consume` (which measures it) in one pass, and checks its identity;
/// a registry download is also copied into the blob cache, published there once verified.
async fn fetch_blob<T: Send + 'static>(
    store: &Store,
    layer: &PendingLayer,
    cancel: &tokio::sync::watch::Receiver<bool>,
    bar: &indicatif::ProgressBar,
    consume: impl FnOnce(&mut dyn Read) -> Result<(Measured, T), LayerError> + Send + 'static,
) -> Result<T, LayerError> {
    match layer.fetch.clone() {
        LayerFetch::Registry(registry) => {
            let digest = layer.digest.clone().expect("registry layers have a digest");
            let tee = store.blob_cache_writer(&digest);
            // Chunks in flight between the download and the unpacker, per layer. The network outruns the unpacker
            // on a fast link, so this queue stays full: hyper's chunks reach ~400 KiB, and 32 of them for each of
            // up to 6 layers held 100 MiB of RSS on the 3.4 GB scale image (hack/bench-scale). 4 keep the unpacker
            // fed (a chunk arrives in microseconds) within 1.6 MiB per layer.
            let (tx, rx) = mpsc::channel::<Bytes>(DOWNLOAD_QUEUE);
            let file = tee.as_ref().and_then(|(f, _)| f.try_clone().ok());
            let unpack = tokio::task::spawn_blocking(move || {
                consume(&mut ChannelReader {
                    rx,
                    cur: Bytes::new(),
                    tee: file,
                })
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
            let up = up.map_err(LayerError::Task)?;
            // A download error explains a truncated stream better than the unpacker's complaint about it, unless
            // the consumer stopped reading for a reason of its own (the download then fails for want of a reader).
            let res = match (dl, up) {
                (_, Err(e @ LayerError::Merge(MergeError::NotStreamable { .. } | MergeError::Write(_)))) => Err(e),
                (Err(e), _) => Err(e),
                (Ok(()), up) => up,
            }
            .and_then(|(m, made)| check_measured(layer, m).map(|()| made));
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
            let (size, b) = (layer.size, bar.clone());
            let (m, made) = tokio::task::spawn_blocking(move || {
                let file_err = |source| LayerError::File {
                    path: path.clone(),
                    source,
                };
                // Opened only if it is a regular file, without blocking (a FIFO planted in an image directory
                // would hang the pull).
                let mut f = crate::sys::safe_fs::open_regular(&path, true).map_err(file_err)?;
                f.seek(io::SeekFrom::Start(offset)).map_err(file_err)?;
                consume(&mut ProgressReader {
                    inner: f.take(size),
                    bar: b,
                })
            })
            .await
            .map_err(LayerError::Task)??;
            check_measured(layer, m)?;
            Ok(made)
        }
    }
}

/// Unpacks the next `size` bytes of an open file into `tree`.
async fn unpack_open(
    f: std::fs::File,
    size: u64,
    tree: PathBuf,
    opts: UnpackOptions,
    bar: indicatif::ProgressBar,
) -> Result<VerifiedLayer, LayerError> {
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
    .map_err(LayerError::Task)?
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

/// A reader that moves a progress bar by what is read through it.
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
