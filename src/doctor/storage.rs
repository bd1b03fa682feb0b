//! Where drun keeps images and running containers, and the file system each is on (by `statfs`'s magic
//! number): the state directory holds overlay upper directories, which network file systems refuse.

use std::path::{Path, PathBuf};

use super::{Check, Locations, Status};

const SECTION: &str = "storage";

pub(super) fn checks(l: &Locations) -> Vec<Check> {
    let mut out = vec![location("store", &l.store, false), location("state", &l.state, true)];
    if let Some(cache) = &l.blob_cache {
        out.push(location("blob cache", cache, false));
    }
    out
}

/// The nearest existing directory at or above `path`, and whether it is `path` itself.
fn existing(path: &Path) -> Option<(PathBuf, bool)> {
    path.ancestors()
        .find(|a| a.is_dir())
        .map(|a| (a.to_path_buf(), a == path))
}

fn location(name: &'static str, path: &Path, holds_upper_dirs: bool) -> Check {
    let Some((dir, exists)) = existing(path) else {
        return Check::new(
            SECTION,
            name,
            Status::Missing,
            format!("{path:?}: no existing directory above it"),
        );
    };
    let (fs, _) = crate::sys::fs_type::of(&dir).unwrap_or_else(|e| (format!("unknown ({e})"), false));
    let writable = nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK).is_ok();
    let created = if exists { "" } else { ", created on first use" };
    let value = format!("{path:?} on {fs}{created}");
    let flag = match name {
        "store" => "--root or DRUN_ROOT",
        "state" => "--state or DRUN_STATE",
        _ => "--blob-cache or DRUN_BLOB_CACHE",
    };
    if !writable && name != "blob cache" {
        let blocker = if exists {
            String::new()
        } else {
            format!(" ({dir:?} is not writable)")
        };
        return Check::new(
            SECTION,
            name,
            Status::Missing,
            format!("{value}: you cannot write there{blocker}"),
        )
        .fix(format!("choose a directory of yours with {flag}"));
    }
    if holds_upper_dirs && crate::sys::fs_type::refuses_overlay_upper(&dir).is_some() {
        return Check::new(
            SECTION,
            name,
            Status::Warn,
            format!(
                "{value}: overlay cannot keep its upper directories on {fs}, so every run keeps its writable layer \
                 in memory (a tmpfs sized by --tmp-size)"
            ),
        )
        .fix(format!("use a local file system (tmpfs, ext4, xfs) with {flag}"));
    }
    if name == "blob cache" && !writable {
        return Check::new(SECTION, name, Status::Ok, format!("{value} (read-only for you)"));
    }
    Check::new(SECTION, name, Status::Ok, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_judged_by_its_parent() {
        let t = tempfile::tempdir().unwrap();
        let c = location("store", &t.path().join("a/b"), false);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.value.ends_with("created on first use"), "{c:?}");
        let tmpfs = location("state", Path::new("/dev/shm/drun-doctor-test"), true);
        assert!(tmpfs.value.contains("on tmpfs"), "{tmpfs:?}");
    }
}
