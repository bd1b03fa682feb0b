//! What `rmi` and `prune` free: blobs and layers no image record (or running container) references, everything
//! in `tmp/`, and the temporary files of cache writers that died, under the exclusive store lock; and removing
//! trees that images made read-only.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

use super::records::LayerRecord;
use super::{io_err, Store, StoreError, StoreLock};

impl Store {
    /// Removes layers and blobs that no image references, and staging debris. Needs the exclusive store lock.
    /// Returns the bytes freed.
    /// `in_use`: keys of layers that running containers use (see [`LayerRecord::key`]; `sha256:<hex>` as run
    /// records before ChainID keys wrote them is a diff_id key too), kept whatever the image records say.
    pub fn collect_garbage(&self, _lock: &StoreLock, in_use: &[String]) -> Result<u64, StoreError> {
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
        let squash_files: HashSet<String> = images
            .iter()
            .filter(|r| r.squash)
            .map(|r| format!("{}.sqsh", r.manifest_digest.hex()))
            .collect();
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
        // Squashfs files of `pull --squash` that no record names, and debris of conversions that died (a running
        // container keeps its mounted file open: removing the name does not disturb it).
        let squash_dir = self.root.join("squash");
        for e in fs::read_dir(&squash_dir).into_iter().flatten().flatten() {
            if !squash_files.contains(e.file_name().to_string_lossy().as_ref()) {
                freed += tree_size(&e.path());
                remove_tree(&e.path())?;
            }
        }
        let ids: Vec<&crate::digest::Digest> = images.iter().map(|r| r.id()).collect();
        for dir in self.unused_setup_layers(&ids, in_use) {
            freed += tree_size(&dir);
            remove_tree(&dir)?;
        }
        // Under the exclusive lock no pull is running, so everything in tmp/ is debris.
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("list", &tmp))?.flatten() {
            freed += tree_size(&e.path());
            remove_tree(&e.path())?;
        }
        freed += self.remove_dead_cache_writes()?;
        Ok(freed)
    }

    /// A derived file in `cache/<kind>/` is replaced through `.NAME.tmp-PID` beside it
    /// ([`crate::sys::safe_fs::write_replace`]); one whose writer no longer lives was left by a crash.
    fn remove_dead_cache_writes(&self) -> Result<u64, StoreError> {
        let mut freed = 0;
        for p in self.dead_cache_writes() {
            freed += tree_size(&p);
            remove_tree(&p)?;
        }
        Ok(freed)
    }

    /// The files of `cache/<kind>/` being replaced by a process that no longer lives.
    pub(super) fn dead_cache_writes(&self) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let Ok(kinds) = fs::read_dir(self.root.join("cache")) else {
            return out;
        };
        for kind in kinds.flatten() {
            let Ok(entries) = fs::read_dir(kind.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let writer = name
                    .to_str()
                    .filter(|n| n.starts_with('.'))
                    .and_then(|n| n.rsplit_once(".tmp-"))
                    .and_then(|(_, pid)| pid.parse::<u32>().ok());
                if writer.is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists()) {
                    out.push(e.path());
                }
            }
        }
        out
    }
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
    if let Ok(d) = crate::sys::safe_fs::open_dir_nofollow(dir) {
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

#[cfg(test)]
mod tests {
    #[allow(clippy::disallowed_methods)] // test files in the test's own temp dir
    #[test]
    fn prune_removes_cache_writes_whose_writer_died_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::Store::open(dir.path()).unwrap();
        let cache = dir.path().join("cache/seccomp");
        std::fs::create_dir_all(&cache).unwrap();
        let kept = [
            "abc.bpf",
            format!(".abc.bpf.tmp-{}", std::process::id()).as_str(),
            ".hidden",
        ]
        .map(String::from);
        // No process has a pid above the kernel's limit (at most 2^22).
        let dead = ".abc.bpf.tmp-99999999";
        for name in kept.iter().map(String::as_str).chain([dead]) {
            std::fs::write(cache.join(name), b"12345").unwrap();
        }
        let lock = store.lock_exclusive().unwrap();
        assert_eq!(store.collect_garbage(&lock, &[]).unwrap(), 5);
        assert!(!cache.join(dead).exists());
        for name in &kept {
            assert!(cache.join(name).exists(), "{name} was removed");
        }
    }
}
