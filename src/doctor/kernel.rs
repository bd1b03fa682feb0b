//! Kernel checks: version, user namespaces, the file systems drun mounts (overlay) or may (squashfs, FUSE), and
//! the cgroup hierarchy with the controllers the caller may use.

use std::path::Path;

use super::{read_trimmed, Check, Status};
use crate::run::cgroups::{self, Version};

const SECTION: &str = "kernel";

pub(super) fn checks(rootless: bool) -> Vec<Check> {
    let release = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "Linux {} ({})",
                u.release().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        })
        .unwrap_or_else(|_| "unknown".into());
    let version = kernel_version(&release);
    let filesystems = read_trimmed("/proc/filesystems").unwrap_or_default();
    vec![
        Check::new(SECTION, "kernel", Status::Ok, release),
        user_namespaces(rootless),
        overlay(rootless, version, &filesystems),
        optional_fs("squashfs", has_fs(&filesystems, "squashfs"), "modprobe squashfs"),
        fuse(rootless, &filesystems),
        cgroup(rootless),
    ]
}

/// `(major, minor)` of "Linux 6.1.0-18-amd64 (x86_64)".
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let v = release.strip_prefix("Linux ")?;
    let mut parts = v.split(['.', '-', ' ']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether /proc/filesystems lists `name` (`nodev\toverlay`, `\tsquashfs`).
fn has_fs(filesystems: &str, name: &str) -> bool {
    filesystems.lines().any(|l| l.split_whitespace().last() == Some(name))
}

fn user_namespaces(rootless: bool) -> Check {
    let max = read_trimmed("/proc/sys/user/max_user_namespaces");
    let disabled = max.as_deref() == Some("0")
        || read_trimmed("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0")
        || read_trimmed("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1");
    let value = match (&max, disabled) {
        (_, true) => format!("disabled for ordinary users (max {})", max.as_deref().unwrap_or("?")),
        (Some(m), false) => format!("enabled (max {m})"),
        (None, false) => "unknown (no /proc/sys/user/max_user_namespaces)".into(),
    };
    match (disabled, rootless) {
        (false, _) => Check::new(SECTION, "user namespaces", Status::Ok, value),
        (true, false) => Check::new(SECTION, "user namespaces", Status::Note, value + "; not needed as root"),
        (true, true) => Check::new(SECTION, "user namespaces", Status::Missing, value)
            .fix(crate::sys::userns::unshare_advice(nix::errno::Errno::EPERM)),
    }
}

fn overlay(rootless: bool, version: Option<(u32, u32)>, filesystems: &str) -> Check {
    if !has_fs(filesystems, "overlay") {
        return Check::new(
            SECTION,
            "overlay",
            Status::Warn,
            "not available: drun makes a flattened copy per run",
        )
        .fix("load the module (`modprobe overlay`), or use a kernel with CONFIG_OVERLAY_FS");
    }
    match version {
        Some(v) if rootless && v < (5, 11) => Check::new(
            SECTION,
            "overlay",
            Status::Warn,
            "available, but ordinary users can mount it only from Linux 5.11: flattened copies",
        )
        .fix("a kernel ≥ 5.11, or run drun as root"),
        _ => Check::new(SECTION, "overlay", Status::Ok, "available"),
    }
}

fn optional_fs(name: &'static str, present: bool, fix: &str) -> Check {
    if present {
        Check::new(SECTION, name, Status::Ok, "available")
    } else {
        Check::new(SECTION, name, Status::Note, "not available (drun does not need it yet)").fix(fix)
    }
}

fn fuse(rootless: bool, filesystems: &str) -> Check {
    let dev = Path::new("/dev/fuse");
    if !has_fs(filesystems, "fuse") || !dev.exists() {
        return Check::new(
            SECTION,
            "fuse",
            Status::Note,
            "not available (drun does not need it yet)",
        )
        .fix("modprobe fuse");
    }
    let usable = nix::unistd::access(dev, nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK).is_ok();
    if usable {
        Check::new(SECTION, "fuse", Status::Ok, "/dev/fuse")
    } else {
        let who = if rootless { "you" } else { "root" };
        Check::new(
            SECTION,
            "fuse",
            Status::Note,
            format!("/dev/fuse is there but {who} cannot open it"),
        )
        .fix("an administrator makes /dev/fuse mode 0666 (the usual default)")
    }
}

/// The cgroup version, and the controllers the caller can set limits with.
fn cgroup(rootless: bool) -> Check {
    let root = Path::new("/sys/fs/cgroup");
    match cgroups::detect() {
        Version::V2 => {
            let own = own_v2_cgroup().unwrap_or_else(|| "/".into());
            let dir = root.join(own.trim_start_matches('/'));
            let controllers = read_trimmed(dir.join("cgroup.controllers")).unwrap_or_default();
            let writable = nix::unistd::access(&dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK).is_ok();
            let list = if controllers.is_empty() {
                "none"
            } else {
                controllers.as_str()
            };
            if !rootless || (writable && !controllers.is_empty()) {
                let whose = if rootless { "delegated to you" } else { "as root" };
                Check::new(SECTION, "cgroup", Status::Ok, format!("v2, {own}: {list} ({whose})"))
            } else {
                Check::new(
                    SECTION,
                    "cgroup",
                    Status::Warn,
                    format!("v2, {own}: not delegated to you (controllers there: {list}); --memory, --cpus and --pids-limit are not enforced"),
                )
                .fix("run drun in a delegated cgroup: `systemd-run --user --scope -p Delegate=yes drun run …`, or a Slurm step (cgroup/v2 delegates to the step)")
            }
        }
        Version::V1 { .. } => {
            let present: Vec<&str> = ["memory", "cpu", "pids", "devices"]
                .into_iter()
                .filter(|c| root.join(c).is_dir())
                .collect();
            let list = present.join(" ");
            if rootless {
                Check::new(
                    SECTION,
                    "cgroup",
                    Status::Warn,
                    format!("v1 ({list}): ordinary users cannot create cgroups there; limits are not enforced"),
                )
                .fix("boot with the unified hierarchy (systemd.unified_cgroup_hierarchy=1), or run drun as root")
            } else {
                Check::new(SECTION, "cgroup", Status::Ok, format!("v1: {list}"))
            }
        }
    }
}

/// This process's cgroup v2 path ("0::/user.slice/…").
fn own_v2_cgroup() -> Option<String> {
    let text = read_trimmed("/proc/self/cgroup")?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("Linux 6.1.0-18-amd64 (x86_64)"), Some((6, 1)));
        assert_eq!(kernel_version("Linux 5.10.0 (x86_64)"), Some((5, 10)));
        assert_eq!(kernel_version("Linux 4.18.0-513.el8.x86_64 (x86_64)"), Some((4, 18)));
        assert_eq!(kernel_version("unknown"), None);
    }

    #[test]
    fn file_system_list() {
        let text = "nodev\tsysfs\n\text4\nnodev\toverlay\n\tsquashfs\nnodev\tfusectl\n";
        assert!(has_fs(text, "overlay") && has_fs(text, "squashfs") && has_fs(text, "ext4"));
        assert!(!has_fs(text, "fuse"), "fusectl is not fuse");
    }
}
