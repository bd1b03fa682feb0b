//! The content-addressed image store shared by every drun process of one user.
//!
//! ```text
//! <root>/blobs/sha256/<hex>          manifests, indexes and configs, verified against their digest
//! <root>/layers/<idmap>/<key>/       an unpacked layer (overlay lower format) in `root/`, and `layer.json`
//! <root>/images/<sha256(name)>.json  one record per image name: manifest digest, config, layers
//! <root>/cache/<kind>/<key>          files derived from something else and kept for reuse (compiled seccomp
//!                                    filters); checked by their reader, rebuilt when missing or damaged
//! <root>/tmp/                        staging; an entry becomes visible only by rename(2) into place
//! <root>/locks/                      flock(2) files
//! ```
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The ID mapping of an unpacked tree: files owned as in the image.
pub const IDMAP_HOST: &str = "host";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("corrupt store entry {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no image {0:?} in the store (see `drun images`)")]
    UnknownImage(String),
    #[error("{name:?} matches several images: {candidates}")]
    Ambiguous { name: String, candidates: String },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One layer of a stored image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// Digest of the blob as the registry serves it (possibly compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar: the key of the unpacked layer, unless `chain_id` is set.
    pub diff_id: Digest,
    pub media_type: String,
    /// Size of the blob.
    pub size: u64,
    /// The layer's ChainID, when its unpacked tree depends on the layers below it (it has hardlinks to their
    /// files): it is then stored under this key (see the module's notes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<Digest>,
}

impl LayerRecord {
    /// The key of the unpacked layer in `layers/<idmap>/`.
    pub fn key(&self) -> String {
        layer_key(&self.diff_id, self.chain_id.as_ref())
    }
}

/// The key of an unpacked layer: its diff_id's hex, or `chain-<hex>` of its ChainID when it depends on its lowers.
pub fn layer_key(diff_id: &Digest, chain_id: Option<&Digest>) -> String {
    match chain_id {
        Some(c) => format!("chain-{}", c.hex()),
        None => diff_id.hex().to_string(),
    }
}

/// The ChainIDs of layers with these diff_ids, bottom first (containerd's definition: the bottom layer's is its
/// diff_id, the next one's `sha256(ChainID(n-1) + " " + diff_id(n))`).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(below) => Digest::of(format!("{below} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// What the store knows about one image name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Canonical name, e.g. `127.0.0.1:5000/drun-test/busybox:latest` or `oci:/abs/dir:tag`.
    pub name: String,
    /// Digest of the manifest that was chosen (for an index, the platform's manifest).
    pub manifest_digest: Digest,
    /// Digest of the index or manifest list the name pointed to, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub config_digest: Digest,
    pub platform: String,
    pub layers: Vec<LayerRecord>,
    /// Unpacked size of all layers, in bytes.
    pub size: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub pulled_at: time::OffsetDateTime,
}

impl ImageRecord {
    /// The image ID as Docker shows it: the config digest.
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }
}

/// Metadata kept beside an unpacked layer ([`LAYER_META`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: Digest,
    /// Set when the tree depends on the layers below (it is stored under this ChainID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<Digest>,
    pub blob_digest: Digest,
    pub blob_size: u64,
    pub unpacked_bytes: u64,
    pub entries: u64,
}

/// The file beside a layer's `root/` that holds its [`LayerMeta`]; written last, before the rename that publishes
/// the layer, so a layer with it is complete. (Layers published before ChainID keys have `meta.json`.)
pub const LAYER_META: &str = "layer.json";
/// Largest [`LAYER_META`] read back (it is a few hundred bytes).
const LAYER_META_MAX: u64 = 64 << 10;
/// Image records, aliases and stored manifests and configs (fetched within image::limits' caps).
const STORED_DOC_MAX: u64 = 64 << 20;

/// A held lock; released on drop.
pub struct Lock(#[allow(dead_code)] Flock<File>);

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
            crate::safe_fs::create_dir_all_mode(&p, 0o700).map_err(io_err("create", &p))?;
        }
        // The store holds setuid binaries and root-owned trees from images: keep other users out of it. (The root
        // itself may be a symlink an administrator made, to a larger file system: followed.)
        if let Ok(dir) = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(root) {
            let _ = dir.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        }
        Ok(Store {
            root: root.to_path_buf(),
            idmap: crate::userns::current().map_or_else(|| IDMAP_HOST.to_string(), |r| r.idmap_key()),
            blob_cache: None,
        })
    }

    /// Uses `dir` as the shared blob cache: blobs found there are read instead of downloaded (and verified
    /// like a download), blobs downloaded are added when `dir` is writable.
    pub fn with_blob_cache(mut self, dir: Option<PathBuf>) -> Store {
        self.blob_cache = dir;
        self
    }

    /// The blob cache's copy of `digest`, if there is one that is what it claims: a regular file (not through a
    /// symlink) of `size` bytes whose sha256 is `digest`, checked before anything is decompressed. Another user
    /// may have written it, or planted something else under its name: the open never blocks (a FIFO would hang
    /// the pull) and anything but a regular file is ignored with a warning. Returns the file, verified and
    /// rewound, so that what is unpacked is what was checked.
    pub fn cached_blob(&self, digest: &Digest, size: u64) -> Option<(PathBuf, File)> {
        let p = self.blob_cache.as_ref()?.join("sha256").join(digest.hex());
        let mut f = match crate::safe_fs::open_regular(&p, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(blob = %p.display(), error = %e, "ignoring a bad blob in the blob cache");
                return None;
            }
        };
        let meta = f.metadata().ok()?;
        let verdict = if meta.len() != size {
            Err(format!("{} bytes, expected {size}", meta.len()))
        } else {
            match crate::digest::HashingReader::new(std::io::BufReader::with_capacity(1 << 20, &f)).finish() {
                Ok((d, _)) if d == *digest => Ok(()),
                Ok((d, _)) => Err(format!("its content is {d}")),
                Err(e) => Err(e.to_string()),
            }
        };
        match verdict.and_then(|()| {
            use std::io::Seek;
            f.rewind().map_err(|e| e.to_string())
        }) {
            Ok(()) => Some((p, f)),
            Err(why) => {
                tracing::warn!(blob = %p.display(), why, "ignoring a bad blob in the blob cache");
                None
            }
        }
    }

    /// A temporary file in the blob cache to copy a download of `digest` into, when the cache is writable.
    pub fn blob_cache_writer(&self, digest: &Digest) -> Option<(File, PathBuf)> {
        let dir = self.blob_cache.as_ref()?.join("sha256");
        // Readable by the cache's other users whatever drun's (private) umask.
        if let Err(e) = crate::safe_fs::create_dir_all_mode(&dir, 0o755) {
            tracing::debug!(dir = %dir.display(), error = %e, "blob cache not writable");
            return None;
        }
        let tmp = dir.join(format!(".tmp-{}-{}", digest.hex(), std::process::id()));
        // A new file only, never through a name someone else planted (the cache may be shared and writable).
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp);
        match created {
            Ok(f) => Some((f, tmp)),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "blob cache not writable");
                None
            }
        }
    }

    /// Publishes a verified download in the blob cache when the copy is complete (`size` bytes), readable by
    /// everyone. The mode is set on the open file, never through the name (the directory may be shared).
    pub fn publish_cached_blob(&self, file: &File, tmp: &Path, digest: &Digest, size: u64) {
        let Some(dir) = self.blob_cache.as_ref().map(|d| d.join("sha256")) else {
            return;
        };
        let complete = file.metadata().is_ok_and(|m| m.len() == size);
        let ok = complete
            && file
                .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .is_ok()
            && fs::rename(tmp, dir.join(digest.hex())).is_ok();
        if !ok {
            tracing::debug!(complete, "blob not added to the blob cache");
            let _ = fs::remove_file(tmp);
        }
    }

    /// The ID mapping this process unpacks layers for: [`IDMAP_HOST`] as real root, else the user namespace's.
    pub fn idmap(&self) -> &str {
        &self.idmap
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_file(&self, name: &str, arg: FlockArg) -> Result<Lock, StoreError> {
        let path = self.root.join("locks").join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        Flock::lock(f, arg).map(Lock).map_err(|(_, e)| StoreError::Io {
            action: "lock",
            path,
            source: e.into(),
        })
    }

    /// Shared lock held by every pull (and later every run) while it uses the store.
    pub fn lock_shared(&self) -> Result<Lock, StoreError> {
        self.lock_file("store.lock", FlockArg::LockShared)
    }

    /// Exclusive lock for removing things from the store.
    pub fn lock_exclusive(&self) -> Result<Lock, StoreError> {
        self.lock_file("store.lock", FlockArg::LockExclusive)
    }

    /// Exclusive lock for producing the layer `key` (see [`layer_key`]); `wait: false` returns `None` at once
    /// when another holds it.
    pub fn lock_layer(&self, idmap: &str, key: &str, wait: bool) -> Result<Option<Lock>, StoreError> {
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        match self.lock_file(&format!("layer-{idmap}-{key}.lock"), arg) {
            Ok(l) => Ok(Some(l)),
            Err(StoreError::Io { source, .. }) if !wait && source.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The directory of the layer `key` (see [`layer_key`]).
    pub fn layer_dir(&self, idmap: &str, key: &str) -> PathBuf {
        self.root.join("layers").join(idmap).join(key)
    }

    /// The unpacked tree of a published layer.
    pub fn layer_root(&self, idmap: &str, key: &str) -> PathBuf {
        self.layer_dir(idmap, key).join("root")
    }

    /// Whether the layer `key` is published (complete) for this ID mapping.
    pub fn has_layer(&self, idmap: &str, key: &str) -> bool {
        self.layer_dir(idmap, key).join(LAYER_META).is_file()
    }

    /// The key under which the layer `diff_id`, with ChainID `chain_id` in the image being pulled, is published:
    /// its diff_id when its tree depends on its own tar alone, else its ChainID; `None` if neither is there.
    pub fn find_layer(&self, idmap: &str, diff_id: &Digest, chain_id: &Digest) -> Option<String> {
        [layer_key(diff_id, None), layer_key(diff_id, Some(chain_id))]
            .into_iter()
            .find(|k| self.has_layer(idmap, k))
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.blob_path(digest);
        // Manifests and configs, capped when they were fetched (image::limits); the cap here only bounds a store
        // someone tampered with.
        match crate::safe_fs::read_bounded(&path, STORED_DOC_MAX) {
            Ok(data) if Digest::of(&data) == *digest => Ok(Some(data)),
            Ok(_) => Err(StoreError::Corrupt {
                path,
                reason: "content does not match its digest".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Stores a small verified blob (manifest, index, config).
    pub fn write_blob(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        self.write_atomic(&path, data)
    }

    /// The directory of the derived files of `kind` (see the module's layout), for a cache that keeps its own
    /// files there (the compiled seccomp filters: `run::seccomp::BpfCache`).
    pub fn cache_dir(&self, kind: &str) -> PathBuf {
        self.root.join("cache").join(kind)
    }

    /// Where the derived file `key` of `kind` is kept (see the module's layout).
    pub fn cache_path(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join("cache").join(kind).join(key)
    }

    /// Saves a derived file at [`cache_path`](Self::cache_path), atomically like everything in the store.
    pub fn write_cache(&self, kind: &str, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.cache_path(kind, key);
        if let Some(dir) = path.parent() {
            crate::safe_fs::create_dir_all_mode(dir, 0o700).map_err(io_err("create", dir))?;
        }
        self.write_atomic(&path, data)
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
            std::process::id(),
            unique()
        ));
        let mut f = crate::safe_fs::create_new(&tmp, 0o600).map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("publish", path)(e)
        })
    }

    /// The staging directory of the layer `key` (see [`layer_key`]); only the holder of its lock uses it.
    pub fn layer_staging_path(&self, idmap: &str, key: &str) -> PathBuf {
        self.root.join("tmp").join(format!("layer-{idmap}-{key}"))
    }

    /// A fresh staging directory for the layer `key`; the caller holds the layer's lock, so anything already there
    /// is debris of a producer that died and is removed.
    pub fn layer_staging(&self, idmap: &str, key: &str) -> Result<PathBuf, StoreError> {
        let dir = self.layer_staging_path(idmap, key);
        remove_tree(&dir)?;
        let tree = dir.join("root");
        crate::safe_fs::create_dir_all_mode(&dir, 0o700).map_err(io_err("create", &dir))?;
        // The layer's root directory: 0755 unless the layer's own `./` entry says otherwise.
        crate::safe_fs::create_dir_mode(&tree, 0o755).map_err(io_err("create", &tree))?;
        Ok(dir)
    }

    /// Publishes a staged layer as `key` by renaming it into place (the caller holds the key's lock). A tree
    /// already there without [`LAYER_META`] (from before ChainID keys, see the module's notes) is moved to `tmp/`
    /// first, left for garbage collection.
    pub fn publish_layer(&self, idmap: &str, key: &str, staging: &Path, meta: &LayerMeta) -> Result<(), StoreError> {
        let meta_path = staging.join(LAYER_META);
        crate::safe_fs::write_new(
            &meta_path,
            &serde_json::to_vec_pretty(meta).expect("layer metadata serialises"),
            0o600,
        )
        .map_err(io_err("write", &meta_path))?;
        let parent = self.root.join("layers").join(idmap);
        crate::safe_fs::create_dir_all_mode(&parent, 0o700).map_err(io_err("create", &parent))?;
        let dest = self.layer_dir(idmap, key);
        if fs::symlink_metadata(&dest).is_ok() {
            let old =
                self.root
                    .join("tmp")
                    .join(format!("old-layer-{idmap}-{key}.{}.{}", std::process::id(), unique()));
            fs::rename(&dest, &old).map_err(io_err("move aside", &dest))?;
        }
        crate::failpoint::hit("layer-before-publish");
        fs::rename(staging, &dest).map_err(io_err("publish", &dest))?;
        crate::failpoint::hit("layer-after-publish");
        Ok(())
    }

    /// The metadata of the published layer `key`.
    pub fn layer_meta(&self, idmap: &str, key: &str) -> Option<LayerMeta> {
        let data = crate::safe_fs::read_bounded(&self.layer_dir(idmap, key).join(LAYER_META), LAYER_META_MAX).ok()?;
        serde_json::from_slice(&data).ok()
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    pub fn save_image(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(rec).expect("image record serialises");
        self.write_atomic(&self.record_path(&rec.name), &data)
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(name);
        match crate::safe_fs::read_bounded(&path, STORED_DOC_MAX) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let e = e.map_err(io_err("list", &dir))?;
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                let data = crate::safe_fs::read_bounded(&path, STORED_DOC_MAX).map_err(io_err("read", &path))?;
                out.push(serde_json::from_slice(&data).map_err(|e| StoreError::Corrupt {
                    path,
                    reason: e.to_string(),
                })?);
            }
        }
        out.sort_by(|a: &ImageRecord, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Remembers that `typed` (e.g. `busybox`) names the image recorded as `name`, so later commands find it
    /// without normalising the reference again (oci-spec's reference regex costs ~45 ms per process to build).
    pub fn save_alias(&self, typed: &str, name: &str) -> Result<(), StoreError> {
        if typed == name {
            return Ok(());
        }
        let dir = self.root.join("images/aliases");
        crate::safe_fs::create_dir_all_mode(&dir, 0o700).map_err(io_err("create", &dir))?;
        self.write_atomic(&dir.join(Digest::of(typed.as_bytes()).hex()), name.as_bytes())
    }

    /// The image `typed` names, by exact record name or a saved alias; `None` if neither exists.
    pub fn image_by_alias(&self, typed: &str) -> Result<Option<ImageRecord>, StoreError> {
        if let Some(r) = self.image(typed)? {
            return Ok(Some(r));
        }
        let alias = self
            .root
            .join("images/aliases")
            .join(Digest::of(typed.as_bytes()).hex());
        match crate::safe_fs::read_bounded(&alias, 64 << 10) {
            Ok(name) => self.image(&String::from_utf8_lossy(&name)),
            Err(_) => Ok(None),
        }
    }

    /// Finds an image by exact name, by one of `candidates` (normalised forms of what the user typed), or by an
    /// ID prefix (at least 4 hex characters of the config digest, as `docker images` shows).
    pub fn find_image(&self, typed: &str, candidates: &[String]) -> Result<ImageRecord, StoreError> {
        for c in candidates.iter().map(String::as_str).chain([typed]) {
            if let Some(r) = self.image(c)? {
                return Ok(r);
            }
        }
        let prefix = typed.strip_prefix("sha256:").unwrap_or(typed);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let found: Vec<ImageRecord> = self
                .images()?
                .into_iter()
                .filter(|r| r.config_digest.hex().starts_with(prefix) || r.manifest_digest.hex().starts_with(prefix))
                .collect();
            let mut ids: Vec<&Digest> = found.iter().map(|r| &r.config_digest).collect();
            ids.dedup();
            match ids.len() {
                0 => {}
                1 => return Ok(found.into_iter().next().expect("one match")),
                _ => {
                    return Err(StoreError::Ambiguous {
                        name: typed.to_string(),
                        candidates: found.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
                    })
                }
            }
        }
        Err(StoreError::UnknownImage(typed.to_string()))
    }

    pub fn remove_image(&self, name: &str) -> Result<(), StoreError> {
        let path = self.record_path(name);
        fs::remove_file(&path).map_err(io_err("remove", &path))
    }

    /// Removes layers and blobs that no image references, and staging debris. Needs the exclusive store lock.
    /// Returns the bytes freed.
    /// `in_use`: keys of layers that running containers use (see [`LayerRecord::key`]; `sha256:<hex>` as run
    /// records before ChainID keys wrote them is a diff_id key too), kept whatever the image records say.
    pub fn collect_garbage(&self, _lock: &Lock, in_use: &[String]) -> Result<u64, StoreError> {
        use std::collections::HashSet;
        let images = self.images()?;
        let mut blobs: HashSet<String> = HashSet::new();
        let mut layers: HashSet<String> = HashSet::new();
        for r in &images {
            blobs.insert(r.manifest_digest.hex().to_string());
            blobs.insert(r.config_digest.hex().to_string());
            if let Some(i) = &r.index_digest {
                blobs.insert(i.hex().to_string());
            }
            layers.extend(r.layers.iter().map(LayerRecord::key));
        }
        layers.extend(in_use.iter().map(|d| d.trim_start_matches("sha256:").to_string()));
        let mut freed = 0;
        let blob_dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blob_dir).map_err(io_err("list", &blob_dir))?.flatten() {
            if !blobs.contains(e.file_name().to_string_lossy().as_ref()) {
                freed += tree_size(&e.path());
                remove_tree(&e.path())?;
            }
        }
        let layers_dir = self.root.join("layers");
        for idmap in fs::read_dir(&layers_dir)
            .map_err(io_err("list", &layers_dir))?
            .flatten()
        {
            for e in fs::read_dir(idmap.path())
                .map_err(io_err("list", &idmap.path()))?
                .flatten()
            {
                if !layers.contains(e.file_name().to_string_lossy().as_ref()) {
                    freed += tree_size(&e.path());
                    remove_tree(&e.path())?;
                }
            }
        }
        // Under the exclusive lock no pull is running, so everything in tmp/ is debris.
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("list", &tmp))?.flatten() {
            freed += tree_size(&e.path());
            remove_tree(&e.path())?;
        }
        Ok(freed)
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Removes a file or tree if present; a tree whose directories were made read-only by an image is made writable
/// first.
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
        Ok(m) if !m.is_dir() => fs::remove_file(path).map_err(io_err("remove", path)),
        Ok(_) => match fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(_) => {
                make_writable(path);
                fs::remove_dir_all(path).map_err(io_err("remove", path))
            }
        },
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(d) = crate::safe_fs::open_dir_nofollow(dir) {
        let _ = d.set_permissions(fs::Permissions::from_mode(0o700));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

/// Disk usage of a tree (apparent sizes of regular files; hardlinked files counted once).
pub fn tree_size(path: &Path) -> u64 {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = fs::symlink_metadata(p) else {
            return 0;
        };
        if m.is_dir() {
            fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path(), seen)).sum())
                .unwrap_or(0)
        } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
            m.len()
        } else {
            0
        }
    }
    walk(path, &mut HashSet::new())
}
