//! `--user NAME|UID[:GROUP|GID]`, resolved against the image's /etc/passwd and /etc/group as Docker does.
//!
//! Both files come from the image, so they are read as hostile input: regular files only (a FIFO would hang drun,
//! a device like /dev/zero never end), at most [`ETC_FILE_CAP`] bytes, symlinks resolved inside the image's root.
//! A file that cannot be used is treated as missing, as Docker treats a missing one (a numeric user still runs,
//! with a warning), unless a name has to be looked up in it: then the run fails and says why.

use std::path::Path;

use crate::run::rootfs::{read_in_root, ETC_FILE_CAP};
use crate::run::spec::ResolvedUser;

/// "unable to find user NAME" is Docker's wording, which scripts (and drun's tests) match: kept, not the crate's
/// usual "cannot …".
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in the image's /etc/group")]
    NoGroup(String),
    #[error("unable to find {what} {name}: cannot use the image's {file}")]
    Unreadable {
        what: &'static str,
        name: String,
        file: &'static str,
        source: std::io::Error,
    },
    #[error("the container's user {user} (uid {uid}, gid {gid}) does not exist in your user namespace: {why}")]
    Unmapped {
        user: String,
        uid: u32,
        gid: u32,
        why: String,
    },
    #[error("cannot add your passwd entry to the image (--userns keep-id): {0}")]
    KeepId(std::io::Error),
}

/// `--userns keep-id`: adds the caller's passwd and group entries to the container's /etc/passwd and
/// /etc/group (written into the run's own layer) unless the image has the ids already, creates the home
/// directory, and returns the user spec to run as (`uid:gid`).
pub fn add_keep_id_entry(root: &Path, ns: &crate::sys::userns::Rootless) -> Result<String, UserError> {
    use std::io::Write;
    let (uid, gid) = (ns.inside_uid(), ns.inside_gid());
    let name = ns.user.clone().unwrap_or_else(|| format!("user{uid}"));
    let home = ns
        .home
        .as_ref()
        .map_or_else(|| format!("/home/{name}"), |h| h.display().to_string());
    let shell = ns
        .shell
        .clone()
        .filter(|s| crate::run::rootfs::stat_in_root(root, s).is_some())
        .unwrap_or_else(|| "/bin/sh".into());
    // Appends `line` to `file` (read once as `text`) unless an entry is already there.
    let append = |file: &str, text: &str, line: String, present: bool| -> std::io::Result<()> {
        if present {
            return Ok(());
        }
        crate::run::rootfs::mkdir_in_root(root, "/etc")?;
        let mut f = crate::run::rootfs::append_in_root(root, file)?;
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        f.write_all(format!("{sep}{line}\n").as_bytes())
    };
    let read = |file: &str| {
        read_in_root(root, file, ETC_FILE_CAP)
            .map(Option::unwrap_or_default)
            .map_err(|e| UserError::KeepId(std::io::Error::new(e.kind(), format!("the image's {file}: {e}"))))
    };
    let pw_text = read("/etc/passwd")?;
    let gr_text = read("/etc/group")?;
    // The image's own entry for the uid, if it has one, keeps its home directory.
    let existing = passwd(&pw_text).into_iter().find(|p| p.uid == uid);
    let gecos = ns.gecos.replace([':', '\n'], " ");
    append(
        "/etc/passwd",
        &pw_text,
        format!("{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}"),
        existing.is_some(),
    )
    .map_err(UserError::KeepId)?;
    append(
        "/etc/group",
        &gr_text,
        format!("{name}:x:{gid}:"),
        groups(&gr_text).iter().any(|(_, id, _)| *id == gid),
    )
    .map_err(UserError::KeepId)?;
    let home_now = existing.map_or(home, |p| p.home);
    if crate::run::rootfs::stat_in_root(root, &home_now).is_none() {
        crate::run::rootfs::mkdir_in_root(root, &home_now).map_err(UserError::KeepId)?;
        if let Ok(fd) = crate::run::rootfs::open_dir_in_root(root, &home_now) {
            let _ = nix::unistd::fchown(
                std::os::fd::AsFd::as_fd(&fd),
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            );
        }
    }
    Ok(format!("{uid}:{gid}"))
}

/// Checks that `user` exists in the user namespace drun runs in (rootless) and drops supplementary groups it
/// cannot have there.
pub fn check_mapped(user: &mut ResolvedUser, shown: &str, ns: &crate::sys::userns::Rootless) -> Result<(), UserError> {
    if !ns.maps_uid(user.uid) || !ns.maps_gid(user.gid) {
        let why = match ns.kind {
            crate::sys::userns::MappingKind::SingleId => format!(
                "you have no subordinate ids in /etc/subuid and /etc/subgid, so only your own id is mapped (as {}); \
                 run as that user (e.g. -u {0}) or ask an administrator for a range (`usermod --add-subuids \
                 100000-165535 --add-subgids 100000-165535 {1}`)",
                ns.inside_uid(),
                ns.user.as_deref().unwrap_or("USER")
            ),
            crate::sys::userns::MappingKind::Subordinate => format!("the mapping is {}", ns.describe()),
        };
        return Err(UserError::Unmapped {
            user: shown.to_string(),
            uid: user.uid,
            gid: user.gid,
            why,
        });
    }
    // Without newgidmap, setgroups is denied in the namespace (the kernel requires it before an unprivileged
    // gid_map is written): the process cannot be given any supplementary groups, not even its primary group as
    // Docker does, and keeps the ones drun had (shown as the overflow group, being unmapped).
    if ns.kind == crate::sys::userns::MappingKind::SingleId {
        user.additional_gids.clear();
    }
    user.additional_gids.retain(|g| ns.maps_gid(*g));
    Ok(())
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Passwd {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].into(),
            })
        })
        .collect()
}

/// (name, gid, members)
fn groups(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let gid = f[2].parse().ok()?;
            Some((
                f[0].to_string(),
                gid,
                f[3].split(',').filter(|m| !m.is_empty()).map(String::from).collect(),
            ))
        })
        .collect()
}

/// Reads `/etc/passwd` or `/etc/group` of the image: the text (empty when the file is missing), or why it
/// cannot be used.
fn etc_file(root: &Path, file: &'static str) -> Result<String, std::io::Error> {
    read_in_root(root, file, ETC_FILE_CAP).map(Option::unwrap_or_default)
}

/// Resolves `spec` (None: the image's default, root when empty) in the root file system at `root`.
///
/// As Docker and Podman do, the process gets its primary group as a supplementary group too, with the groups of
/// /etc/group that list the user by name (when the user was given by name or found in /etc/passwd, and no group
/// was named): `id` as nobody prints `groups=65534(nogroup)`, as root `groups=0(root),…`.
pub fn resolve(root: &Path, spec: Option<&str>) -> Result<ResolvedUser, UserError> {
    let spec = spec.filter(|s| !s.is_empty()).unwrap_or("0");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // An unusable file is as good as a missing one while nothing has to be looked up by name in it.
    let usable = |file: &'static str, name: Option<&str>, what: &'static str| match etc_file(root, file) {
        Ok(text) => Ok(text),
        Err(source) => match name.filter(|n| n.parse::<u32>().is_err()) {
            Some(n) => Err(UserError::Unreadable {
                what,
                name: n.to_string(),
                file,
                source,
            }),
            None => {
                tracing::warn!("ignoring the image's {file}: {source}");
                Ok(String::new())
            }
        },
    };
    let pw = passwd(&usable("/etc/passwd", Some(u), "user")?);
    let gr = groups(&usable("/etc/group", g, "group")?);
    let entry = pw
        .iter()
        .find(|p| p.name == u)
        .or_else(|| u.parse::<u32>().ok().and_then(|id| pw.iter().find(|p| p.uid == id)));
    let (uid, mut gid, home, name) = match (entry, u.parse::<u32>()) {
        (Some(p), _) => (p.uid, p.gid, p.home.clone(), Some(p.name.clone())),
        (None, Ok(id)) => (id, 0, "/".to_string(), None),
        (None, Err(_)) => return Err(UserError::NoUser(u.to_string())),
    };
    if let Some(g) = g {
        gid = match gr.iter().find(|(n, _, _)| n == g) {
            Some((_, id, _)) => *id,
            None => g.parse().map_err(|_| UserError::NoGroup(g.to_string()))?,
        };
    }
    let mut additional_gids: Vec<u32> = std::iter::once(gid)
        .chain(match &name {
            Some(n) if g.is_none() => gr
                .iter()
                .filter(|(_, _, m)| m.contains(n))
                .map(|(_, id, _)| *id)
                .collect(),
            _ => vec![],
        })
        .collect();
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// `--group-add`: each group, a name looked up in the image's /etc/group or a gid, added to `user`'s
/// supplementary groups (Docker's rule: a name must exist; a number need not).
pub fn add_groups(root: &Path, user: &mut ResolvedUser, names: &[String]) -> Result<(), UserError> {
    if names.is_empty() {
        return Ok(());
    }
    let needs_file = names.iter().any(|n| n.parse::<u32>().is_err());
    let text = match etc_file(root, "/etc/group") {
        Ok(t) => t,
        Err(source) if needs_file => {
            return Err(UserError::Unreadable {
                what: "group",
                name: names
                    .iter()
                    .find(|n| n.parse::<u32>().is_err())
                    .cloned()
                    .unwrap_or_default(),
                file: "/etc/group",
                source,
            })
        }
        Err(_) => String::new(),
    };
    let gr = groups(&text);
    for n in names {
        let gid = match gr.iter().find(|(name, _, _)| name == n) {
            Some((_, id, _)) => *id,
            None => n.parse().map_err(|_| UserError::NoGroup(n.clone()))?,
        };
        user.additional_gids.push(gid);
    }
    user.additional_gids.sort_unstable();
    user.additional_gids.dedup();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // fixtures in the tests' own temporary directories
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nvideo:x:44:alice\nstaff:x:50:bob\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn names_ids_and_groups() {
        let r = root();
        let u = resolve(r.path(), Some("alice")).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone(), u.home.as_str()),
            (1000, 1000, vec![44, 1000], "/home/alice")
        );
        let u = resolve(r.path(), Some("1000:staff")).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 50, vec![50]));
        let u = resolve(r.path(), Some("4242")).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids, u.home.as_str()),
            (4242, 0, vec![0], "/")
        );
        assert_eq!(resolve(r.path(), None).unwrap().uid, 0);
        assert!(resolve(r.path(), Some("mallory")).is_err());
        assert!(resolve(r.path(), Some("alice:nogroup")).is_err());
    }

    #[test]
    fn unusable_files_are_missing_ones_until_a_name_is_looked_up() {
        let r = root();
        let etc = r.path().join("etc");
        std::fs::remove_file(etc.join("passwd")).unwrap();
        nix::unistd::mkfifo(&etc.join("passwd"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        // Larger than the cap (sparse: nothing is written).
        std::fs::File::create(etc.join("group"))
            .unwrap()
            .set_len(ETC_FILE_CAP + 1)
            .unwrap();
        let u = resolve(r.path(), Some("1000:1000")).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 1000, vec![1000]));
        let u = resolve(r.path(), None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/"));
        // What the user sees: the error and its causes.
        let shown = |e: UserError| format!("{:#}", anyhow::Error::from(e));
        let e = shown(resolve(r.path(), Some("alice")).unwrap_err());
        assert!(e.contains("/etc/passwd") && e.contains("a FIFO"), "{e}");
        let e = shown(resolve(r.path(), Some("0:video")).unwrap_err());
        assert!(e.contains("/etc/group") && e.contains("larger than"), "{e}");
        // A symlink resolves inside the root: to a directory there, which is no passwd either.
        std::fs::remove_file(etc.join("passwd")).unwrap();
        std::os::unix::fs::symlink("/etc", etc.join("passwd")).unwrap();
        let e = shown(resolve(r.path(), Some("alice")).unwrap_err());
        assert!(e.contains("a directory"), "{e}");
    }
}
