//! Safe extraction of one layer tarball into a fresh directory, in overlayfs' lower-layer format.
//!
//! Layer tarballs are hostile input. Every entry name is checked before anything is written (`..` components are
//! refused; a leading `/` means the layer root, as Docker and Podman read it), every parent directory is resolved
//! with `openat2(RESOLVE_IN_ROOT)` so that no symlink, whether from this layer or planted by it, can lead a write
//! outside the layer directory, and each final component is created with `*at` calls relative to that parent,
//! never following a symlink (the primitives and their contract: [`crate::sys::at`]). OCI whiteouts become overlay
//! whiteouts: `.wh.NAME` a 0:0 character device, `.wh..wh..opq` the `trusted.overlay.opaque` xattr.
//!
//! Memory is bounded whatever the layer holds: the headers that precede an entry (PAX records, GNU long names,
//! sparse maps) are capped at [`MAX_ENTRY_HEADERS`] before the `tar` crate collects them, names and link targets
//! at [`MAX_NAME`], and what is remembered across entries (directories to finish, markers, lower links) at
//! [`MAX_TRACKED`] bytes.
//!
//! The files: `layer.rs` walks the tarball and creates each entry; `names.rs` checks entry names;
//! `header_budget.rs` bounds the headers' memory; `tar_fields.rs` reads numbers and PAX records from headers;
//! `whiteouts.rs` turns whiteouts into overlay whiteouts or markers; `hardlinks.rs` links within a layer and into
//! lower layers; `writer_pool.rs` writes small files and symlinks on a few threads. `merge.rs` merges an image's
//! layers into one tar stream instead (for a squashfs image file), with the same checks.

mod hardlinks;
mod header_budget;
mod layer;
mod merge;
mod names;
#[cfg(test)]
mod props;
mod tar_fields;
mod whiteouts;
mod writer_pool;

pub use hardlinks::link_from_lower;
pub use layer::unpack_layer;
pub use merge::{LayerMerge, MergeError, MergeStats};
pub use tar_fields::HeaderFieldError;
pub use whiteouts::{Markers, MARKERS_FILE, MARKERS_FILE_MAX, OVERLAY_OPAQUE_XATTR, OVERLAY_USER_OPAQUE_XATTR};

use crate::sys::userns::Rootless;

/// How the unpacker may represent what it finds.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnpackOptions {
    /// Not real root: device nodes are skipped (counted), setuid/setgid bits dropped. Owners follow `userns`
    /// when given, else every file is the caller's.
    pub unprivileged: bool,
    /// The user namespace drun runs in: owners the namespace lacks are squashed (see [`Rootless::squash`]) and
    /// opaque directories get the `user.overlay.opaque` marker.
    pub userns: Option<&'static Rootless>,
}

impl UnpackOptions {
    /// The options for this process: real root, or the user namespace it entered.
    pub fn for_process() -> UnpackOptions {
        UnpackOptions {
            unprivileged: crate::sys::userns::is_rootless(),
            userns: crate::sys::userns::current(),
        }
    }

    /// The owner to give an entry with `(uid, gid)` in its header, or None to leave the caller's.
    fn owner(&self, uid: u32, gid: u32) -> Option<(u32, u32)> {
        match (self.unprivileged, self.userns) {
            (false, _) => Some((uid, gid)),
            (true, Some(ns)) => Some(ns.squash(uid, gid)),
            (true, None) => None,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct UnpackStats {
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    pub whiteouts: u64,
    pub skipped_devices: u64,
}

/// A hardlink whose target is not in its own layer but in a lower one: resolved by [`link_from_lower`] once the
/// lower layers are present.
#[derive(Debug, Clone)]
pub struct LowerLink {
    pub link: Vec<u8>,
    pub target: Vec<u8>,
}

/// What unpacking a layer produced.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub stats: UnpackStats,
    pub lower_links: Vec<LowerLink>,
    pub markers: Markers,
}

/// The most bytes of headers (PAX extended headers, GNU long names and links, sparse maps) one entry may have.
/// The `tar` crate reads them whole into memory; a real one is a few hundred bytes (xattr values reach 64 KiB).
pub const MAX_ENTRY_HEADERS: u64 = 1 << 20;
/// The longest entry name or link target: Linux's `PATH_MAX` (nothing longer can be created anyway).
pub const MAX_NAME: usize = 4096;
/// The most bytes of paths kept across entries of one layer (directories whose metadata is applied at the end,
/// whiteouts kept as markers, hardlinks into lower layers), counted with a per-path overhead; a large real layer
/// needs a few MiB.
pub const MAX_TRACKED: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(
        "cannot read the headers of a layer entry (PAX extended header, GNU long name or link, sparse map): they \
         exceed {limit} bytes"
    )]
    HeadersTooLarge { limit: u64 },
    #[error("invalid layer entry {path:?}: its {what} is longer than {limit} bytes")]
    NameTooLong {
        path: String,
        what: &'static str,
        limit: usize,
    },
    #[error(
        "cannot unpack the layer: it has more paths to remember (directories, whiteouts, hardlinks into lower \
         layers) than {limit} bytes"
    )]
    TooManyPaths { limit: usize },
    #[error("invalid layer entry {path:?}: it contains a \"..\" component")]
    DotDot { path: String },
    #[error("invalid layer entry {path:?}: its name contains a NUL byte")]
    NulInName { path: String },
    #[error("invalid hardlink {path:?}: its target {target:?} contains a \"..\" component")]
    LinkDotDot { path: String, target: String },
    #[error("invalid whiteout {path:?}: expected .wh.NAME, NAME one file name")]
    BadWhiteout { path: String },
    #[error("invalid hardlink {path:?}: its target {target:?} is in neither this layer nor a lower one")]
    HardlinkTarget { path: String, target: String },
    #[error("invalid header of layer entry {path:?}")]
    Header { path: String, source: HeaderFieldError },
    #[error("cannot read the layer tarball")]
    Read(#[source] std::io::Error),
    #[error("cannot unpack {path:?}")]
    Entry { path: String, source: std::io::Error },
    #[error("cannot unpack {path:?}: unsupported entry type {kind:?}")]
    Unsupported { path: String, kind: tar::EntryType },
}
