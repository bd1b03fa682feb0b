//! `cache/<kind>/<key>`: files derived from something else and kept for reuse (compiled seccomp filters). The
//! store only keeps them; their reader checks them and rebuilds one that is missing or damaged.

use std::path::PathBuf;

use super::{io_err, Store, StoreError};

impl Store {
    /// Where the derived file `key` of `kind` is kept.
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
}
