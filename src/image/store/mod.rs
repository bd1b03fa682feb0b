//! The content-addressed image store shared by every drun process of one user.
//!
//! ```text
//! <root>/store.json                  the layout's format (`FORMAT`): older ones are upgraded, newer refused
//! <root>/blobs/sha256/<hex>          manifests, indexes and configs, verified against their digest
//! <root>/layers/<idmap>/<key>/       an unpacked layer (overlay lower format) in `root/`, and `layer.json`
//! <root>/images/<sha256(name)>.json  one record per image name: manifest digest, config, layers
//! <root>/setup/<idmap>/<key>/       a workflow's setup kept as a layer (`root/`, `setup.json`): see setup_layers
//! <root>/cache/<kind>/<key>          files derived from something else and kept for reuse (compiled seccomp
//!                                    filters); checked by their reader, rebuilt when missing or damaged
//! <root>/tmp/                        staging; an entry becomes visible only by rename(2) into place
//! <root>/locks/                      flock(2) files
//! ```
//! (The whole layout, and the rules below at more length: `docs/store.md`.)
//!
//! Keys: an unpacked layer must be what its image's layers make it, whichever images were pulled before. Most
//! layers depend on their own tar stream alone, and are keyed by its digest, the diff_id (`<key>` = its hex), so
//! gzip and zstd variants of one layer, and images sharing it over different bases, share one entry. A layer with
//! hardlinks to files of the layers below it (rare: a `ln` of a file from the base image) depends on those too:
//! it is keyed by its ChainID (`<key>` = `chain-<hex>`, with containerd's definition: the ChainID of the bottom
//! layer is its diff_id, that of layer n is `sha256(ChainID(n-1) + " " + diff_id(n))`), so the same diff_id over
//! another chain is never reused. Whether a layer has such links is only known once it is unpacked, and is the
//! same for every unpacking of one tar stream: the image record says it (`chain_id` of its layer), a pull looks
//! for both keys ([`Store::find_layer`]), and run, rmi, prune and the running containers' layer lists
//! ([`crate::run::state::live_layers`]) all use the record's key. Keys are per ID mapping (`host` when files keep
//! the image's owners; another mapping, as a rootless user's, gets its own tree under the same keys). Compressed
//! layer blobs are not kept: the unpacked tree is what runs, and keeping both would double the disk used. A layer
//! written before layers were keyed this way has `meta.json` instead of `layer.json`: whether it depended on its
//! lowers is unknown, so it is unpacked again and the old tree moved to `tmp/` (freed by the next `rmi`/`prune`).
//!
//! Concurrency: every pull holds `locks/store.lock` shared, `rmi` and `prune` exclusive, so collection never removes
//! what a live pull is about to reference. A layer is produced under the lock of its diff_id and that of its
//! ChainID, the latter taken without waiting: held by another process, it means that process is producing the
//! same layer over the same chain, and it is waited for once the diff_id's lock is released. A layer that links
//! into its lowers waits for them holding only its ChainID's lock. So no lock is waited for while another is held;
//! a second process wanting the same layer waits for it and then finds it published. Nothing else is ever waited
//! for.
//!
//! Crash safety: nothing reads as complete before it is. Every file is written under `tmp/` and renamed into
//! place; a layer is published by renaming its fully written staging directory, with `layer.json` written last
//! inside it; an image record is written after everything it references. Whatever a killed process leaves is in
//! `tmp/` (or a lock file, released by the kernel), and is cleared by the next producer of the same layer or by
//! garbage collection.
//!
//! The files: `keys.rs` (layer keys, ChainIDs), `locks.rs`, `blobs.rs` (manifests, indexes, configs),
//! `blob_cache.rs` (the shared `--blob-cache` directory), `derived_cache.rs` (`cache/`), `layers.rs` (staging and
//! publishing unpacked layers), `records.rs` (image records and aliases: finding an image by name or ID), `gc.rs`
//! (what `rmi` and `prune` free), `setup_layers.rs` (workflows' setups kept as layers), `check.rs` (`drun check`).

mod blob_cache;
mod blobs;
mod check;
mod derived_cache;
mod gc;
mod keys;
mod layers;
mod locks;
mod records;
mod setup_layers;

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use check::{CheckReport, Problem};
pub use gc::{remove_tree, tree_size};
pub use keys::{chain_ids, layer_key};
pub use layers::{LayerMeta, LAYER_META};
pub use locks::StoreLock;
pub use records::{ImageRecord, LayerRecord};
pub use setup_layers::{SetupLayer, SetupMeta, SETUP_META};

/// The ID mapping of an unpacked tree: files owned as in the image.
pub const IDMAP_HOST: &str = "host";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path:?}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("corrupt store entry {path:?}")]
    Unreadable { path: PathBuf, source: serde_json::Error },
    #[error("corrupt store entry {path:?}: its content does not match its digest")]
    DigestMismatch { path: PathBuf },
    #[error("no image {0:?} in the store (see `drun images`)")]
    UnknownImage(String),
    #[error("{name:?} matches several images: {candidates}")]
    Ambiguous { name: String, candidates: String },
    #[error(
        "the store at {root:?} has layout format {found}, newer than this drun's ({FORMAT}): a newer drun wrote it; \
         run that drun, or give this one another store (--root)"
    )]
    TooNew { root: PathBuf, found: u32 },
}

/// The store's layout format, recorded in `<root>/store.json` ([`FORMAT_FILE`]). A store without that file was
/// written before formats were recorded (format 0, the same layout as 1): it is upgraded by writing the file. A
/// store of a higher format is refused, so an older drun never misreads a newer layout. A change of layout raises
/// this, with an upgrade step in [`Store::open`] from each older format.
pub const FORMAT: u32 = 1;
/// The file holding the store's format: `{"format": N}`.
pub const FORMAT_FILE: &str = "store.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct FormatRecord {
    format: u32,
}

/// The error for `action` on `path`, for `map_err`.
fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The store root: `--root`/`DRUN_ROOT`, else `/var/lib/drun` for root and `$XDG_DATA_HOME/drun` otherwise.
pub fn default_root() -> PathBuf {
    if !crate::sys::userns::is_rootless() {
        PathBuf::from("/var/lib/drun")
    } else {
        crate::image::xdg::xdg_dir("XDG_DATA_HOME", ".local/share")
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join("drun")
    }
}

/// An open store: its root, the ID mapping this process unpacks for, and the shared blob cache if any.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    idmap: String,
    /// `--blob-cache`: verified compressed blobs shared between users (`<dir>/sha256/<hex>`, 0644).
    blob_cache: Option<PathBuf>,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for sub in ["blobs/sha256", "layers", "images", "tmp", "locks"] {
            let p = root.join(sub);
            crate::sys::safe_fs::create_dir_all_mode(&p, 0o700).map_err(io_err("create", &p))?;
        }
        // The store holds setuid binaries and root-owned trees from images: keep other users out of it. (The root
        // itself may be a symlink an administrator made, to a larger file system: followed.)
        if let Ok(dir) = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(root) {
            let _ = dir.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        }
        let store = Store {
            root: root.to_path_buf(),
            idmap: crate::sys::userns::current().map_or_else(|| IDMAP_HOST.to_string(), |r| r.idmap_key()),
            blob_cache: None,
        };
        store.check_format()?;
        Ok(store)
    }

    /// Refuses a store of a newer format; records the current one in a store of an older format (or a new store).
    fn check_format(&self) -> Result<(), StoreError> {
        let path = self.root.join(FORMAT_FILE);
        let found = match crate::sys::safe_fs::read_bounded(&path, 4096) {
            Ok(data) => {
                serde_json::from_slice::<FormatRecord>(&data)
                    .map_err(|source| StoreError::Unreadable {
                        path: path.clone(),
                        source,
                    })?
                    .format
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        if found > FORMAT {
            return Err(StoreError::TooNew {
                root: self.root.clone(),
                found,
            });
        }
        if found < FORMAT {
            // Format 0 → 1: the layout is the same; only the record is new.
            tracing::debug!(from = found, to = FORMAT, "upgrading the store's format");
            let data = serde_json::to_vec(&FormatRecord { format: FORMAT }).expect("serialises");
            // A store on read-only storage (an image directory an administrator provides) is read as it is.
            if let Err(e) = self.write_atomic(&path, &data) {
                tracing::debug!(error = %e, "cannot record the store's format; reading it as it is");
            }
        }
        Ok(())
    }

    /// Uses `dir` as the shared blob cache: blobs found there are read instead of downloaded (and verified
    /// like a download), blobs downloaded are added when `dir` is writable.
    pub fn with_blob_cache(mut self, dir: Option<PathBuf>) -> Store {
        self.blob_cache = dir;
        self
    }

    /// The ID mapping this process unpacks layers for: [`IDMAP_HOST`] as real root, else the user namespace's.
    pub fn idmap(&self) -> &str {
        &self.idmap
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The shared blob cache it reads (see [`with_blob_cache`](Self::with_blob_cache)).
    pub fn blob_cache(&self) -> Option<&Path> {
        self.blob_cache.as_deref()
    }

    /// Writes `data` to `path` in the store: into a new file under `tmp/`, then renamed into place, so that
    /// `path` holds either its old content or all of `data`.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
            std::process::id(),
            unique()
        ));
        let mut f = crate::sys::safe_fs::create_new(&tmp, 0o600).map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        // Durable before it is visible: after a power cut a name holds all of its data or the old content.
        f.sync_all().map_err(io_err("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("publish", path)(e)
        })?;
        sync_parent(path)
    }
}

/// fsync(2) of the directory holding `path`: a rename into it survives a power cut once this returns, so that
/// what is published later (a record naming a layer) never outlives what it names.
fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(path);
    crate::sys::safe_fs::open_dir_nofollow(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// syncfs(2) of the file system holding `dir`: every file written there (a layer's tree, with its many small
/// files) is on disk once this returns. One call instead of an fsync per file.
fn sync_file_system(dir: &Path) -> Result<(), StoreError> {
    crate::sys::safe_fs::open_dir_nofollow(dir)
        .and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from))
        .map_err(io_err("sync", dir))
}

/// A number unique in this process, for names under `tmp/`.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
