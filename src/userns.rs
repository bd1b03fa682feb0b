//! Rootless drun: the user namespace an unprivileged caller works in.
//!
//! An ordinary user's drun enters one user namespace at start-up, before any thread exists, and does everything
//! there: unpacking layers (chown to the namespace's ids), mounting the overlay, creating the container. The
//! container runs in that same namespace (libcontainer sees it is already in one and creates no second), so
//! what drun unpacked is exactly what the container sees.
//!
//! The mapping, chosen automatically:
//! - with subordinate ranges for the user in `/etc/subuid` and `/etc/subgid` and `newuidmap`/`newgidmap`
//!   installed: the caller is container root and the ranges are ids 1…N (`--userns keep-id`: the caller keeps
//!   its own id, the ranges fill the others);
//! - otherwise one id: the caller is root in the container (`keep-id`: itself). Every file of an image is then
//!   owned by the caller; ownership that cannot be represented is squashed.
//!
//! Unpacked layers depend on the mapping, so the store keeps them per mapping ([`Rootless::idmap_key`]).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One line of a uid_map or gid_map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// `--userns`: how the caller appears in the container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The caller is root in the container.
    #[default]
    Auto,
    /// The caller keeps its own uid and gid, as Podman's `--userns keep-id`.
    KeepId,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" | "" => Ok(Mode::Auto),
            "keep-id" => Ok(Mode::KeepId),
            other => Err(format!(
                "unknown user namespace mode {other:?} (expected auto or keep-id)"
            )),
        }
    }
}

/// How the mapping was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Subordinate ranges, written by newuidmap/newgidmap.
    Subordinate,
    /// Only the caller's own ids, written by drun itself.
    Single,
}

/// The namespace drun runs in when started by an ordinary user.
#[derive(Clone, Debug)]
pub struct Rootless {
    /// The caller's ids on the host.
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub home: Option<PathBuf>,
    pub shell: Option<String>,
    pub gecos: String,
    pub uids: Vec<IdMap>,
    pub gids: Vec<IdMap>,
    pub how: How,
    pub mode: Mode,
}

static CURRENT: OnceLock<Rootless> = OnceLock::new();

/// The user namespace this process entered, if it is rootless.
pub fn current() -> Option<&'static Rootless> {
    CURRENT.get()
}

/// Whether drun works without real root: in its own user namespace, or not root at all.
pub fn is_rootless() -> bool {
    current().is_some() || !nix::unistd::geteuid().is_root()
}

/// The caller's uid and gid as seen now (inside the namespace when in one).
pub fn caller_ids() -> (u32, u32) {
    match current() {
        Some(r) => (r.inside_uid(), r.inside_gid()),
        None => (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()),
    }
}

/// The user files are made for: the one who ran `sudo drun …`; rootless, the caller (files the container's other
/// users wrote are owned by subordinate ids otherwise); else nobody in particular (drun's own identity).
pub fn invoking_owner() -> Option<(u32, u32)> {
    if current().is_some() {
        return Some(caller_ids());
    }
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    (uid != 0).then_some((uid, gid))
}

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("cannot create a user namespace: {0}")]
    Unshare(String),
    #[error("{0}")]
    Map(String),
    #[error("cannot set up the user namespace: {what}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UsernsError {
    let what = what.into();
    move |source| UsernsError::Io { what, source }
}

fn map_id(maps: &[IdMap], outside: u32) -> Option<u32> {
    maps.iter()
        .find(|m| outside >= m.outside && outside - m.outside < m.count)
        .map(|m| m.inside + (outside - m.outside))
}

fn mapped(maps: &[IdMap], inside: u32) -> bool {
    maps.iter().any(|m| inside >= m.inside && inside - m.inside < m.count)
}

/// `id` if `maps` has it, else 65534 (nobody/nogroup) if mapped, else `own` (the caller's id inside).
fn squash_id(maps: &[IdMap], id: u32, own: u32) -> u32 {
    if mapped(maps, id) {
        id
    } else if mapped(maps, 65534) {
        65534
    } else {
        own
    }
}

impl Rootless {
    /// The caller's uid inside the namespace.
    pub fn inside_uid(&self) -> u32 {
        map_id(&self.uids, self.uid).unwrap_or(0)
    }

    pub fn inside_gid(&self) -> u32 {
        map_id(&self.gids, self.gid).unwrap_or(0)
    }

    pub fn maps_uid(&self, id: u32) -> bool {
        mapped(&self.uids, id)
    }

    pub fn maps_gid(&self, id: u32) -> bool {
        mapped(&self.gids, id)
    }

    /// The owner a layer file with `(uid, gid)` gets: itself where the namespace has it, else `nobody`/`nogroup`
    /// (65534) where that is mapped, else the caller. The same input always gives the same owner.
    pub fn squash(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            squash_id(&self.uids, uid, self.inside_uid()),
            squash_id(&self.gids, gid, self.inside_gid()),
        )
    }

    /// Names the on-disk ownership of layers unpacked here. One-id mappings all give files owned by the caller,
    /// whatever the id inside, so they share a key; subordinate mappings are keyed by the whole mapping.
    pub fn idmap_key(&self) -> String {
        match self.how {
            How::Single => format!("u{}-g{}", self.uid, self.gid),
            How::Subordinate => {
                let mut text = String::new();
                for (k, maps) in [("u", &self.uids), ("g", &self.gids)] {
                    for m in maps {
                        let _ = write!(text, "{k}{}:{}:{};", m.inside, m.outside, m.count);
                    }
                }
                let d = crate::digest::Digest::of(text.as_bytes());
                format!("u{}-{}", self.uid, &d.hex()[..16])
            }
        }
    }

    /// One line for logs and `drun info`-like output.
    pub fn describe(&self) -> String {
        let show = |maps: &[IdMap]| {
            maps.iter()
                .map(|m| format!("{}:{}:{}", m.inside, m.outside, m.count))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{} mapping, uids {} gids {}",
            match self.how {
                How::Subordinate => "subordinate-id",
                How::Single => "single-id",
            },
            show(&self.uids),
            show(&self.gids)
        )
    }
}

/// Ranges for `user`/`uid` in a subid file (`name:start:count` or `uid:start:count` lines).
pub fn subordinate_ranges(file: &Path, user: Option<&str>, uid: u32) -> Vec<(u32, u32)> {
    let Ok(text) = crate::safe_fs::read_system(file) else {
        return Vec::new();
    };
    let uid_s = uid.to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
            if Some(owner) != user && owner != uid_s {
                return None;
            }
            Some((start.trim().parse().ok()?, count.trim().parse().ok()?))
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// The mapping for one kind of id: the caller's own id at `own_inside`, subordinate ranges filling the other
/// inside ids from 0 up. Ranges that contain the caller's own id are left out (newuidmap refuses overlaps).
pub fn build_map(own: u32, own_inside: u32, ranges: &[(u32, u32)]) -> Vec<IdMap> {
    let mut maps = vec![IdMap {
        inside: own_inside,
        outside: own,
        count: 1,
    }];
    let mut next = 0u32;
    for &(start, count) in ranges {
        if own >= start && own - start < count {
            continue;
        }
        let mut start = start;
        let mut left = count;
        while left > 0 {
            if next == own_inside {
                next += 1;
            }
            // A run up to the caller's own inside id (or the whole rest).
            let room = if next < own_inside {
                own_inside - next
            } else {
                u32::MAX - next
            };
            let n = left.min(room);
            if n == 0 {
                break;
            }
            maps.push(IdMap {
                inside: next,
                outside: start,
                count: n,
            });
            next += n;
            start += n;
            left -= n;
        }
    }
    maps.sort_by_key(|m| m.inside);
    maps
}

/// The user's passwd entry on the host (NSS: local files, LDAP, SSSD alike).
fn host_user(uid: u32) -> (Option<String>, Option<PathBuf>, Option<String>, String) {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => (
            Some(u.name),
            Some(u.dir),
            Some(u.shell.display().to_string()),
            u.gecos.to_string_lossy().into_owned(),
        ),
        _ => (None, std::env::var_os("HOME").map(PathBuf::from), None, String::new()),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Why the kernel refused a user namespace, with what to change.
fn unshare_advice(err: nix::errno::Errno) -> String {
    let read = |p: &str| crate::safe_fs::read_system(p).ok().map(|s| s.trim().to_string());
    let mut why = format!("unshare(CLONE_NEWUSER) failed: {}", err.desc());
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        why.push_str(
            "; user namespaces are disabled on this host (user.max_user_namespaces = 0): an administrator can \
             enable them with `sysctl -w user.max_user_namespaces=15000`",
        );
    } else if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        why.push_str(
            "; unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0): an administrator \
             can enable them with `sysctl -w kernel.unprivileged_userns_clone=1`",
        );
    } else if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        why.push_str(
            "; AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1): \
             an administrator can give drun a profile with `userns,` or set the sysctl to 0",
        );
    } else if err == nix::errno::Errno::EINVAL {
        why.push_str("; drun must be single-threaded here (this is a bug in drun)");
    } else {
        why.push_str("; rootless drun needs unprivileged user namespaces (Linux ≥ 3.8 with them enabled)");
    }
    why
}

/// Why newuidmap/newgidmap failed, with what to fix.
fn helper_advice(tool: &Path, output: &str, file: &str, user: &str, ranges: &[(u32, u32)]) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut msg = format!("{} failed: {}", tool.display(), output.trim());
    let setuid = std::fs::metadata(tool).is_ok_and(|m| m.mode() & 0o4000 != 0 && m.uid() == 0);
    // File capabilities live on the file itself, not on a symlink to it.
    let real = std::fs::canonicalize(tool).unwrap_or_else(|_| tool.to_path_buf());
    let has_caps = crate::run::rootfs::xattr_present(&real, "security.capability");
    if !setuid && !has_caps {
        let _ = write!(
            msg,
            "\n  {} is neither setuid root nor has file capabilities: an administrator must run \
             `chmod u+s {0}` (or `setcap cap_set{1}id+ep {0}`), e.g. by reinstalling the `uidmap` package",
            tool.display(),
            if file.ends_with("subuid") { "u" } else { "g" }
        );
    }
    let shown: Vec<String> = ranges.iter().map(|(s, c)| format!("{user}:{s}:{c}")).collect();
    let _ = write!(
        msg,
        "\n  drun asked it to map the ranges of {file} for {user} ({}); check that they are right, do not overlap \
         another user's, and that /etc/subuid and /etc/subgid both have them. Without ranges drun uses a single-id \
         mapping instead.",
        shown.join(", ")
    );
    msg
}

fn format_map(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

/// Enters a new user namespace (and a private mount namespace) as described in the module docs. Must be called
/// while the process has a single thread. The result is kept for [`current`].
pub fn enter(mode: Mode) -> Result<&'static Rootless, UsernsError> {
    use nix::sched::{unshare, CloneFlags};
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let (user, home, shell, gecos) = host_user(uid);
    let subuids = subordinate_ranges(Path::new("/etc/subuid"), user.as_deref(), uid);
    let subgids = subordinate_ranges(Path::new("/etc/subgid"), user.as_deref(), uid);
    let helpers = (find_in_path("newuidmap"), find_in_path("newgidmap"));
    let (own_uid_inside, own_gid_inside) = match mode {
        Mode::Auto => (0, 0),
        Mode::KeepId => (uid, gid),
    };
    let subordinate = match (&helpers, subuids.is_empty() || subgids.is_empty()) {
        ((Some(u), Some(g)), false) => Some((u.clone(), g.clone())),
        (_, false) => {
            tracing::warn!(
                "{} has subordinate ids in /etc/subuid and /etc/subgid, but newuidmap/newgidmap are not installed \
                 (Debian/Ubuntu package `uidmap`, RHEL `shadow-utils`): using a single-id mapping, so only root \
                 exists in containers",
                user.as_deref().unwrap_or("this user")
            );
            None
        }
        _ => None,
    };
    let (uids, gids, how) = match &subordinate {
        Some(_) => (
            build_map(uid, own_uid_inside, &subuids),
            build_map(gid, own_gid_inside, &subgids),
            How::Subordinate,
        ),
        None => (
            vec![IdMap {
                inside: own_uid_inside,
                outside: uid,
                count: 1,
            }],
            vec![IdMap {
                inside: own_gid_inside,
                outside: gid,
                count: 1,
            }],
            How::Single,
        ),
    };
    let ctx = Rootless {
        uid,
        gid,
        user: user.clone(),
        home,
        shell,
        gecos,
        uids,
        gids,
        how,
        mode,
    };

    match &subordinate {
        None => {
            unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| UsernsError::Unshare(unshare_advice(e)))?;
            // Without CAP_SETGID in the parent namespace, setgroups must be denied before gid_map is written.
            crate::safe_fs::write_system("/proc/self/setgroups", "deny").map_err(io("write /proc/self/setgroups"))?;
            crate::safe_fs::write_system("/proc/self/uid_map", format_map(&ctx.uids))
                .map_err(io("write /proc/self/uid_map"))?;
            crate::safe_fs::write_system("/proc/self/gid_map", format_map(&ctx.gids))
                .map_err(io("write /proc/self/gid_map"))?;
        }
        Some((newuidmap, newgidmap)) => {
            // The maps of a namespace are written from outside it: a child left in the parent namespace runs
            // the setuid helpers on this process once it has unshared.
            let (go_r, go_w) = nix::unistd::pipe().map_err(|e| io("create a pipe")(e.into()))?;
            let (err_r, err_w) = nix::unistd::pipe().map_err(|e| io("create a pipe")(e.into()))?;
            let parent = std::process::id();
            let name = user.clone().unwrap_or_else(|| uid.to_string());
            let jobs = [
                (newuidmap.clone(), ctx.uids.clone(), "/etc/subuid", subuids.clone()),
                (newgidmap.clone(), ctx.gids.clone(), "/etc/subgid", subgids.clone()),
            ];
            // SAFETY: the process is single-threaded here (checked by the caller's contract); the child only
            // reads a pipe, spawns the helpers and exits.
            match unsafe { nix::unistd::fork() }.map_err(|e| io("fork")(e.into()))? {
                nix::unistd::ForkResult::Child => {
                    drop(go_w);
                    drop(err_r);
                    let mut b = [0u8; 1];
                    let mut go = std::fs::File::from(go_r);
                    let mut err = std::fs::File::from(err_w);
                    if go.read(&mut b).unwrap_or(0) != 1 {
                        // SAFETY: leaving the forked child without running the parent's destructors.
                        unsafe { libc::_exit(1) };
                    }
                    for (tool, maps, file, ranges) in &jobs {
                        let mut cmd = std::process::Command::new(tool);
                        cmd.arg(parent.to_string());
                        for m in maps {
                            cmd.args([m.inside.to_string(), m.outside.to_string(), m.count.to_string()]);
                        }
                        let out = cmd.stdin(std::process::Stdio::null()).output();
                        let failure = match out {
                            Ok(o) if o.status.success() => None,
                            Ok(o) => Some(format!(
                                "{}{}",
                                String::from_utf8_lossy(&o.stderr),
                                String::from_utf8_lossy(&o.stdout)
                            )),
                            Err(e) => Some(e.to_string()),
                        };
                        if let Some(text) = failure {
                            let _ = err.write_all(helper_advice(tool, &text, file, &name, ranges).as_bytes());
                            // SAFETY: as above.
                            unsafe { libc::_exit(1) };
                        }
                    }
                    // SAFETY: as above.
                    unsafe { libc::_exit(0) };
                }
                nix::unistd::ForkResult::Parent { child } => {
                    drop(go_r);
                    drop(err_w);
                    let unshared = unshare(CloneFlags::CLONE_NEWUSER);
                    if let Err(e) = unshared {
                        drop(go_w);
                        let _ = nix::sys::wait::waitpid(child, None);
                        return Err(UsernsError::Unshare(unshare_advice(e)));
                    }
                    let _ = nix::unistd::write(go_w.as_fd(), b"1");
                    drop(go_w);
                    let status = nix::sys::wait::waitpid(child, None);
                    let mut text = String::new();
                    let _ = std::fs::File::from(err_r).read_to_string(&mut text);
                    let ok = matches!(status, Ok(nix::sys::wait::WaitStatus::Exited(_, 0)));
                    if !ok {
                        return Err(UsernsError::Map(if text.is_empty() {
                            "newuidmap/newgidmap failed without a message".into()
                        } else {
                            text
                        }));
                    }
                }
            }
        }
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| io("create a mount namespace")(e.into()))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| io("make the mount namespace private")(e.into()))?;
    tracing::debug!(mapping = %ctx.describe(), "entered a user namespace");
    Ok(CURRENT.get_or_init(|| ctx))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    #[test]
    fn maps_fill_around_the_caller() {
        let m = build_map(1000, 0, &[(100000, 65536)]);
        assert_eq!(
            m,
            vec![
                IdMap {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                IdMap {
                    inside: 1,
                    outside: 100000,
                    count: 65536
                }
            ]
        );
        let k = build_map(1000, 1000, &[(100000, 65536)]);
        assert_eq!(
            k,
            vec![
                IdMap {
                    inside: 0,
                    outside: 100000,
                    count: 1000
                },
                IdMap {
                    inside: 1000,
                    outside: 1000,
                    count: 1
                },
                IdMap {
                    inside: 1001,
                    outside: 101000,
                    count: 64536
                }
            ]
        );
        // A range holding the caller's own id is left out.
        assert_eq!(build_map(1000, 0, &[(900, 200)]).len(), 1);
    }

    #[test]
    fn subid_file_by_name_or_uid() {
        let dir = std::env::temp_dir().join(format!("drun-subid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("subuid");
        std::fs::write(&f, "# c\nalice:100000:65536\n1001:200000:10\nbob:300000:0\n").unwrap();
        assert_eq!(subordinate_ranges(&f, Some("alice"), 1000), vec![(100000, 65536)]);
        assert_eq!(subordinate_ranges(&f, Some("carol"), 1001), vec![(200000, 10)]);
        assert!(subordinate_ranges(&f, Some("bob"), 1002).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn squash_is_consistent() {
        let r = Rootless {
            uid: 1000,
            gid: 1000,
            user: None,
            home: None,
            shell: None,
            gecos: String::new(),
            uids: build_map(1000, 0, &[(100000, 65536)]),
            gids: build_map(1000, 0, &[(100000, 65536)]),
            how: How::Subordinate,
            mode: Mode::Auto,
        };
        assert_eq!(r.squash(33, 33), (33, 33));
        assert_eq!(r.squash(70000, 5), (65534, 5));
        let single = Rootless {
            uids: vec![IdMap {
                inside: 0,
                outside: 1000,
                count: 1,
            }],
            gids: vec![IdMap {
                inside: 0,
                outside: 1000,
                count: 1,
            }],
            how: How::Single,
            ..r.clone()
        };
        assert_eq!(single.squash(33, 44), (0, 0));
        assert_eq!(single.idmap_key(), "u1000-g1000");
        assert!(r.idmap_key().starts_with("u1000-"));
    }
}
