//! File system types by `statfs`'s magic number: their names, and which can hold an overlay's upper directory.

use std::path::Path;

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
    (0x0102_1997, "9p", false),
    (0x6175_6673, "aufs", false),
    (0x0000_F15F, "ecryptfs", false),
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

/// File systems overlayfs refuses as an upper directory (no `trusted.*` xattrs, no `O_TMPFILE` or `RENAME_WHITEOUT`,
/// or itself an overlay): every network one, and these.
const NO_UPPER: &[&str] = &["overlay", "fuse", "9p", "aufs", "ecryptfs", "squashfs"];

/// The name of a file system type, and whether it is a network one.
pub fn fs_name(magic: i64) -> (String, bool) {
    FILE_SYSTEMS.iter().find(|(m, _, _)| *m == magic).map_or_else(
        || (format!("unknown (0x{magic:x})"), false),
        |(_, n, net)| (n.to_string(), *net),
    )
}

/// The file system `dir` is on: its name and whether it is a network one.
pub fn of(dir: &Path) -> nix::Result<(String, bool)> {
    let s = nix::sys::statfs::statfs(dir)?;
    #[allow(clippy::useless_conversion, reason = "f_type is i64 on x86_64, i32 or u32 elsewhere")]
    Ok(fs_name(i64::from(s.filesystem_type().0)))
}

/// Whether the open file `f` is on a FUSE file system, whose daemon, not the kernel, says who owns a file and when
/// it changed (a user's daemon mounted through setuid `fusermount` may claim root's ownership).
pub fn is_fuse(f: &impl std::os::fd::AsFd) -> bool {
    nix::sys::statfs::fstatfs(f).is_ok_and(|s| {
        #[allow(clippy::useless_conversion, reason = "f_type is i64 on x86_64, i32 or u32 elsewhere")]
        let magic = i64::from(s.filesystem_type().0);
        magic == 0x6573_5546
    })
}

/// The name of `dir`'s file system when it is one overlayfs cannot keep an upper directory on (known by its
/// type; others may still refuse, which only mounting tells).
pub fn refuses_overlay_upper(dir: &Path) -> Option<String> {
    let (name, network) = of(dir).ok()?;
    (network || NO_UPPER.contains(&name.as_str())).then_some(name)
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
        assert_eq!(refuses_overlay_upper(Path::new("/dev/shm")), None);
    }
}
