//! Rootless drun: the user namespace an unprivileged caller works in.
//!
//! An ordinary user's drun enters one user namespace at start-up, before any thread exists, and does everything
//! there: unpacking layers (chown to the namespace's ids), mounting the overlay, creating the container. The
//! container runs in that same namespace (libcontainer sees it is already in one and creates no second), so
//! what drun unpacked is exactly what the container sees.
//!
//! The mapping, chosen automatically ([`enter`]):
//! - with subordinate ranges for the user in `/etc/subuid` and `/etc/subgid` ([`subid`]) and
//!   `newuidmap`/`newgidmap` installed: the caller is container root and the ranges are ids 1…N (`--userns
//!   keep-id`: the caller keeps its own id, the ranges fill the others);
//! - otherwise one id: the caller is root in the container (`keep-id`: itself). Every file of an image is then
//!   owned by the caller; ownership that cannot be represented is squashed.
//!
//! Unpacked layers depend on the mapping, so the store keeps them per mapping ([`Rootless::idmap_key`]).
//! This file holds what the rest of drun asks about the namespace it runs in; it never changes it.

mod enter;
mod error;
pub mod idmap;
mod step;
pub mod subid;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

pub use enter::{adopt, enter, join, private_mounts};
pub use error::{unshare_advice, InvalidUsernsMode, UsernsError};
pub use idmap::IdMap;
pub use step::shared_with_step;

use idmap::{inside_id, is_mapped, squash_id};

/// `--userns`: how the caller appears in the container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UsernsMode {
    /// The caller is root in the container.
    #[default]
    Auto,
    /// The caller keeps its own uid and gid, as Podman's `--userns keep-id`.
    KeepId,
}

impl std::str::FromStr for UsernsMode {
    type Err = InvalidUsernsMode;
    fn from_str(s: &str) -> Result<UsernsMode, InvalidUsernsMode> {
        match s {
            "auto" | "" => Ok(UsernsMode::Auto),
            "keep-id" => Ok(UsernsMode::KeepId),
            other => Err(InvalidUsernsMode(other.to_string())),
        }
    }
}

/// How the ids of the namespace were mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingKind {
    /// Subordinate ranges, written by newuidmap/newgidmap.
    Subordinate,
    /// Only the caller's own ids, written by drun itself.
    SingleId,
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
    pub kind: MappingKind,
    pub mode: UsernsMode,
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

impl Rootless {
    /// The caller's uid inside the namespace.
    pub fn inside_uid(&self) -> u32 {
        inside_id(&self.uids, self.uid).unwrap_or(0)
    }

    /// The caller's gid inside the namespace.
    pub fn inside_gid(&self) -> u32 {
        inside_id(&self.gids, self.gid).unwrap_or(0)
    }

    /// Whether the namespace has the uid `id`.
    pub fn maps_uid(&self, id: u32) -> bool {
        is_mapped(&self.uids, id)
    }

    /// Whether the namespace has the gid `id`.
    pub fn maps_gid(&self, id: u32) -> bool {
        is_mapped(&self.gids, id)
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
        match self.kind {
            MappingKind::SingleId => format!("u{}-g{}", self.uid, self.gid),
            MappingKind::Subordinate => {
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
        format!(
            "{} mapping, uids {} gids {}",
            match self.kind {
                MappingKind::Subordinate => "subordinate-id",
                MappingKind::SingleId => "single-id",
            },
            idmap::show(&self.uids),
            idmap::show(&self.gids)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::idmap::{build_map, single_id_map};
    use super::*;

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
            kind: MappingKind::Subordinate,
            mode: UsernsMode::Auto,
        };
        assert_eq!(r.squash(33, 33), (33, 33));
        assert_eq!(r.squash(70000, 5), (65534, 5));
        let single = Rootless {
            uids: single_id_map(1000, 0),
            gids: single_id_map(1000, 0),
            kind: MappingKind::SingleId,
            ..r.clone()
        };
        assert_eq!(single.squash(33, 44), (0, 0));
        assert_eq!(single.idmap_key(), "u1000-g1000");
        assert!(r.idmap_key().starts_with("u1000-"));
        assert_eq!(
            r.describe(),
            "subordinate-id mapping, uids 0:1000:1,1:100000:65536 gids 0:1000:1,1:100000:65536"
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!("keep-id".parse::<UsernsMode>().unwrap(), UsernsMode::KeepId);
        assert_eq!("".parse::<UsernsMode>().unwrap(), UsernsMode::Auto);
        let e = "nope".parse::<UsernsMode>().unwrap_err().to_string();
        assert_eq!(e, "invalid user namespace mode \"nope\": expected auto or keep-id");
    }
}
