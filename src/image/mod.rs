//! Images: a reference or local source → a registry → pull (verify, unpack) → the store.
//!
//! Where things are: `source.rs` (what the user typed), `registry/` (talking to a registry; `registry/config.rs`
//! is the registry configuration), `auth.rs` (credentials), `local.rs` (OCI layouts and docker archives),
//! `manifest.rs` (what a manifest says), `archive/` (an image written as an oci-archive or docker-archive), `image_dir.rs` (the shared image directory of squashfs files), `platform.rs` (choosing a platform's manifest), `pull/` (making an image
//! present: layers verified in `pull/verify.rs`), `unpack/` (a layer tarball safely into a directory), `store/`
//! (the on-disk store: layout, records, garbage collection), `limits.rs` (how much is read from untrusted
//! sources).

pub mod archive;
pub mod auth;
pub mod image_dir;
pub mod limits;
pub mod local;
pub mod manifest;
pub mod platform;
pub mod pull;
pub mod ready;
pub mod registry;
pub mod source;
pub mod squash;
pub mod store;
pub mod unpack;
pub mod xdg;
