//! Where drun keeps images and running containers, and the file system each is on (by `statfs`'s magic
//! number): the state directory holds overlay upper directories, which network file systems refuse.

use std::path::{Path, PathBuf};

use super::{Check, Locations, Status};

const SECTION: &str = "storage";

/// File system magic numbers (linux/magic.h and the vendors' headers) and names; `true` for network and cluster
/// file systems.
const FILE_SYSTEMS: &[(i64, &str, bool)] = &[
    (0xEF53, "ext4", false),
    (0x5846_5342, "xfs", false),
    (0x9123_683E, "btrfs", false),
    (0x2FC1_2FC1, "zfs", false),
    (0xF2F5_2010, "f2fs", false),
    (0x0102_1994, "tmpfs", false),
    (0x8584_58F6, "ramfs", false),
    (0x794C_7630, "overlay", false),
    (0x7371_7368, "squashfs", false),
    (0x6573_5546, "fuse", false),
    (0x0116_1970, "gfs2", true),
    (0x7461_636F, "ocfs2", true),
    (0x6969, "nfs", true),
    (0x0BD0_0BD0, "lustre", true),
    (0x4750_4653, "gpfs", true),
    (0x1983_0326, "beegfs", true),
    (0x00C3_6400, "cephfs", true),
    (0xFF53_4D42, "cifs", true),
    (0xFE53_4D42, "smb2", true),
    (0xAAD7_AAEA, "panfs", true),
    (0x5346_414F, "afs", true),
];

/// The name of a file system type, and whether it is a network one.
pub fn fs_name(magic: i64) -> (String, bool) {
    FILE_SYSTEMS.iter().find(|(m, _, _)| *m == magic).map_or_else(
        || (format!("unknown (0x{magic:x})"), false),
        |(_, n, net)| (n.to_string(), *net),
    )
}

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
    let (fs, network) = match nix::sys::statfs::statfs(&dir) {
        #[allow(clippy::useless_conversion, reason = "f_type is i64 on x86_64, i32 or u32 elsewhere")]
        Ok(s) => fs_name(i64::from(s.filesystem_type().0)),
        Err(e) => (format!("unknown ({e})"), false),
    };
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
    if holds_upper_dirs && (network || fs == "overlay") {
        return Check::new(
            SECTION,
            name,
            Status::Warn,
            format!("{value}: overlay cannot keep its upper directories on {fs}, so every run is a flattened copy"),
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
    fn file_system_names() {
        assert_eq!(fs_name(0xEF53), ("ext4".to_string(), false));
        assert_eq!(fs_name(0x6969), ("nfs".to_string(), true));
        assert_eq!(fs_name(0x0BD0_0BD0), ("lustre".to_string(), true));
        assert_eq!(fs_name(0x1234).0, "unknown (0x1234)");
    }

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
