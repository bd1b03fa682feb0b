//! `drun check`: what in the store is damaged or left over, and its repair. Cheap by default (every record's
//! manifest and config hashed, every layer's and setup layer's metadata read, no tree walked), for a node's prolog;
//! `deep` also hashes every stored blob and walks every layer's tree against the bytes its unpacking wrote.
//!
//! Repair removes what is damaged and every image record that depends on it (a later pull fetches them again),
//! and the debris of interrupted producers in `tmp/`; it never rewrites anything. It needs the exclusive store
//! lock (as `prune`), which also makes `tmp/` debris certain: without it, `tmp/` may be a live pull's.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::blobs::STORED_DOC_MAX;
use super::layers::{LayerMeta, LAYER_META};
use super::setup_layers::SETUP_META;
use super::{remove_tree, ImageRecord, Store, StoreError};
use crate::digest::Digest;

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, for the user.
    pub what: String,
    /// What repair removes.
    pub remove: Vec<PathBuf>,
    /// Image records repair removes with it (their names).
    pub images: Vec<String>,
}

/// What a check looked at, and what it found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub images: usize,
    pub layers: usize,
    pub setup_layers: usize,
    pub blobs: usize,
    pub problems: Vec<Problem>,
}

impl Store {
    /// Checks the store. `exclusive`: the caller holds the exclusive lock, so `tmp/` holds only debris.
    pub fn check(&self, exclusive: bool, deep: bool) -> CheckReport {
        let mut r = CheckReport::default();
        let idmap = self.idmap().to_string();
        // Layers first: a record that needs a damaged one goes with it.
        let mut bad_layers: HashSet<String> = HashSet::new();
        let layers_dir = self.root.join("layers");
        for map in read_dir(&layers_dir).into_iter().filter(is_dir) {
            let map_name = map.file_name().to_string_lossy().into_owned();
            for e in read_dir(&map.path()) {
                r.layers += 1;
                let key = e.file_name().to_string_lossy().into_owned();
                if let Some(what) = layer_problem(&e.path(), deep) {
                    if map_name == idmap {
                        bad_layers.insert(key.clone());
                    }
                    r.problems.push(Problem {
                        what: format!("layer {key} ({map_name}): {what}"),
                        remove: vec![e.path()],
                        images: vec![],
                    });
                }
            }
        }
        // Image records.
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut referenced: HashSet<String> = HashSet::new();
        for e in read_dir(&self.root.join("images")) {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            r.images += 1;
            let rec: ImageRecord = match crate::sys::safe_fs::read_bounded(&path, STORED_DOC_MAX)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
            {
                Ok(rec) => rec,
                Err(e) => {
                    r.problems.push(Problem {
                        what: format!("image record {}: unreadable ({e})", path.display()),
                        remove: vec![path],
                        images: vec![],
                    });
                    continue;
                }
            };
            let mut wrong = Vec::new();
            let mut remove = Vec::new();
            for (what, d) in [
                ("manifest", Some(&rec.manifest_digest)),
                ("config", Some(&rec.config_digest)),
            ]
            .into_iter()
            .chain(std::iter::once(("index", rec.index_digest.as_ref())))
            {
                let Some(d) = d else { continue };
                referenced.insert(d.hex().to_string());
                match self.read_blob(d) {
                    Ok(Some(_)) => {}
                    Ok(None) => wrong.push(format!("its {what} {d} is missing")),
                    Err(StoreError::DigestMismatch { path }) => {
                        wrong.push(format!("its {what} {d} does not match its digest"));
                        remove.push(path);
                    }
                    Err(e) => wrong.push(format!("its {what} {d}: {e}")),
                }
            }
            if rec.squash {
                let file = self.squash_file(&rec.manifest_digest);
                match crate::image::squash::SquashImage::open(&file) {
                    Ok(img) if img.meta.manifest_digest == rec.manifest_digest => {}
                    Ok(_) => wrong.push("its squashfs file holds another image".to_string()),
                    Err(e) => {
                        wrong.push(format!("its squashfs file: {e}"));
                        remove.push(file);
                    }
                }
            }
            for l in &rec.layers {
                let key = l.key();
                if bad_layers.contains(&key) {
                    wrong.push(format!("its layer {key} is damaged (above)"));
                } else if !self.has_layer(&idmap, &key) {
                    wrong.push(format!("its layer {key} is missing"));
                }
            }
            if !wrong.is_empty() {
                r.problems.push(Problem {
                    what: format!("image {}: {}", rec.name, wrong.join("; ")),
                    remove,
                    images: vec![rec.name.clone()],
                });
            }
            names.insert(rec.name);
        }
        // Aliases naming no record.
        for e in read_dir(&self.root.join("images/aliases")) {
            let target = crate::sys::safe_fs::read_bounded(&e.path(), 4096).ok();
            let ok = target.is_some_and(|t| names.contains(String::from_utf8_lossy(&t).as_ref()));
            if !ok {
                r.problems.push(Problem {
                    what: format!("alias {}: names no image record", e.path().display()),
                    remove: vec![e.path()],
                    images: vec![],
                });
            }
        }
        // Blobs: each named by the digest of its content (deep: every one hashed; else the referenced ones were).
        let blob_dir = self.root.join("blobs/sha256");
        for e in read_dir(&blob_dir) {
            r.blobs += 1;
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                r.problems.push(Problem {
                    what: format!("blob {}: not named by a digest", e.path().display()),
                    remove: vec![e.path()],
                    images: vec![],
                });
                continue;
            };
            if deep && !referenced.contains(&name) {
                if let Err(StoreError::DigestMismatch { path }) = self.read_blob(&d) {
                    r.problems.push(Problem {
                        what: format!("blob {d}: its content does not match its digest"),
                        remove: vec![path],
                        images: vec![],
                    });
                }
            }
        }
        // Setup layers.
        for map in read_dir(&self.root.join("setup")).into_iter().filter(is_dir) {
            for e in read_dir(&map.path()) {
                r.setup_layers += 1;
                let meta = crate::sys::safe_fs::read_bounded(&e.path().join(SETUP_META), 64 << 10)
                    .ok()
                    .and_then(|d| serde_json::from_slice::<super::SetupMeta>(&d).ok());
                let what = match (meta, e.path().join("root").is_dir()) {
                    (None, _) => Some("its setup.json is missing or unreadable"),
                    (Some(_), false) => Some("its tree is missing"),
                    _ => None,
                };
                if let Some(what) = what {
                    r.problems.push(Problem {
                        what: format!("setup layer {}: {what}", e.file_name().to_string_lossy()),
                        remove: vec![e.path()],
                        images: vec![],
                    });
                }
            }
        }
        // Debris: staging of producers that died (certain only under the exclusive lock), and cache files whose
        // writer is gone.
        if exclusive {
            for e in read_dir(&self.root.join("tmp")) {
                r.problems.push(Problem {
                    what: format!("{}: left by an interrupted pull, run or removal", e.path().display()),
                    remove: vec![e.path()],
                    images: vec![],
                });
            }
        }
        // Compiled seccomp filters: each carries its own sha256 (a damaged one would be rebuilt, but is reported).
        for e in read_dir(&self.root.join("cache/seccomp")) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".bpf")
                && !name.starts_with('.')
                && !crate::run::seccomp::cached_filter_is_whole(&e.path())
            {
                r.problems.push(Problem {
                    what: format!(
                        "{}: a damaged compiled seccomp filter (rebuilt when next needed)",
                        e.path().display()
                    ),
                    remove: vec![e.path()],
                    images: vec![],
                });
            }
        }
        for p in self.dead_cache_writes() {
            r.problems.push(Problem {
                what: format!("{}: a cache file whose writer died", p.display()),
                remove: vec![p],
                images: vec![],
            });
        }
        // Lock files: plain files of the store's owner.
        for e in read_dir(&self.root.join("locks")) {
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                r.problems.push(Problem {
                    what: format!("lock {}: not a regular file", e.path().display()),
                    remove: vec![e.path()],
                    images: vec![],
                });
            }
        }
        r
    }

    /// Removes what `problems` name, and the image records that depend on it; returns what was done.
    pub fn repair(&self, _lock: &super::StoreLock, problems: &[Problem]) -> Result<Vec<String>, StoreError> {
        let mut done = Vec::new();
        for p in problems {
            for path in &p.remove {
                remove_tree(path)?;
            }
            for name in &p.images {
                self.remove_image(name)?;
                done.push(format!("removed image {name} (pull it again)"));
            }
            done.push(format!("repaired: {}", p.what));
        }
        Ok(done)
    }
}

/// A directory itself, not a symlink to one (whose entries would be outside the store).
fn is_dir(e: &fs::DirEntry) -> bool {
    e.file_type().is_ok_and(|t| t.is_dir())
}

fn read_dir(dir: &Path) -> Vec<fs::DirEntry> {
    let mut v: Vec<fs::DirEntry> = fs::read_dir(dir).map(|rd| rd.flatten().collect()).unwrap_or_default();
    v.sort_by_key(|e| e.file_name());
    v
}

/// What is wrong with a published layer directory, if anything.
fn layer_problem(dir: &Path, deep: bool) -> Option<String> {
    let root = dir.join("root");
    if !fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
        return Some("its tree (root/) is missing".into());
    }
    let meta_path = dir.join(LAYER_META);
    let meta: LayerMeta = match crate::sys::safe_fs::read_bounded(&meta_path, 64 << 10) {
        Ok(d) => match serde_json::from_slice(&d) {
            Ok(m) => m,
            Err(e) => return Some(format!("its {LAYER_META} is unreadable ({e})")),
        },
        // The layout before ChainID keys: a pull replaces it (see the store's notes).
        Err(_) if dir.join("meta.json").is_file() => return None,
        Err(_) => return Some(format!("its {LAYER_META} is missing: it was never completely unpacked")),
    };
    let markers = dir.join(crate::image::unpack::MARKERS_FILE);
    if markers.exists() {
        let ok = crate::sys::safe_fs::read_bounded(&markers, crate::image::unpack::MARKERS_FILE_MAX)
            .ok()
            .and_then(|d| serde_json::from_slice::<crate::image::unpack::Markers>(&d).ok())
            .is_some();
        if !ok {
            return Some(format!("its {} is unreadable", crate::image::unpack::MARKERS_FILE));
        }
    }
    if deep {
        let bytes = file_bytes(&root);
        if bytes < meta.unpacked_bytes {
            return Some(format!(
                "its files hold {bytes} bytes, fewer than the {} its unpacking wrote",
                meta.unpacked_bytes
            ));
        }
    }
    None
}

/// Bytes of the regular files below `dir`, each inode once; symlinks not followed.
fn file_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in read_dir(&d) {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}
