//! The caller's identity as rootless drun uses it: subordinate id ranges in /etc/subuid and /etc/subgid, and the
//! setuid newuidmap/newgidmap that map them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Check, Status};
use crate::sys::userns::subid::subordinate_ranges;

const SECTION: &str = "identity";

pub(super) fn checks(rootless: bool) -> Vec<Check> {
    let uid = nix::unistd::getuid().as_raw();
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let who = name.clone().unwrap_or_else(|| format!("uid {uid}"));
    let caller = if rootless {
        Check::new(
            SECTION,
            "caller",
            Status::Ok,
            format!("{who} (uid {uid}): rootless, in a user namespace of its own"),
        )
    } else {
        Check::new(SECTION, "caller", Status::Ok, format!("{who} (uid {uid})"))
    };
    let mut out = vec![caller];
    let mut any_ranges = true;
    for (check, file) in [("subuid", "/etc/subuid"), ("subgid", "/etc/subgid")] {
        let ranges = subordinate_ranges(Path::new(file), name.as_deref(), uid);
        any_ranges &= !ranges.is_empty();
        out.push(match (ranges.is_empty(), rootless) {
            (false, _) => {
                let list: Vec<String> = ranges.iter().map(|(s, n)| format!("{s}+{n}")).collect();
                Check::new(SECTION, check, Status::Ok, format!("{file}: {}", list.join(", ")))
            }
            (true, false) => Check::new(SECTION, check, Status::Note, format!("none in {file}; not needed as root")),
            (true, true) => Check::new(
                SECTION,
                check,
                Status::Warn,
                format!("none for {who} in {file}: only your own id is mapped, every image file is yours and images that switch users fail"),
            )
            .fix(format!(
                "an administrator adds a range: `usermod --add-sub{}s 100000-165535 {who}`",
                &check[3..6]
            )),
        });
    }
    for tool in ["newuidmap", "newgidmap"] {
        out.push(helper(tool, rootless, any_ranges));
    }
    out
}

/// newuidmap or newgidmap: found, and setuid root (or with file capabilities).
fn helper(tool: &'static str, rootless: bool, has_ranges: bool) -> Check {
    let needed = rootless && has_ranges;
    let Some(path) = find_in_path(tool) else {
        let status = if needed { Status::Warn } else { Status::Note };
        let why = if needed {
            ": your subordinate ranges go unused"
        } else {
            ""
        };
        return Check::new(SECTION, tool, status, format!("not installed{why}"))
            .fix("install it (Debian/Ubuntu package `uidmap`, RHEL `shadow-utils`)");
    };
    let setuid = std::fs::metadata(&path).is_ok_and(|m| m.mode() & 0o4000 != 0 && m.uid() == 0);
    let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let caps = crate::sys::read::xattr_present(&real, "security.capability");
    if setuid || caps {
        let how = if setuid { "setuid root" } else { "file capabilities" };
        Check::new(SECTION, tool, Status::Ok, format!("{} ({how})", path.display()))
    } else {
        let status = if needed { Status::Warn } else { Status::Note };
        Check::new(
            SECTION,
            tool,
            status,
            format!("{} is neither setuid root nor has file capabilities", path.display()),
        )
        .fix(format!("an administrator runs `chmod u+s {}`", path.display()))
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
