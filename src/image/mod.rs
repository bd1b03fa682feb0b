//! Images: references and sources, registries, the store, safe unpacking, and pulling.

pub mod auth;
pub mod limits;
pub mod local;
pub mod platform;
pub mod pull;
pub mod ready;
pub mod registry;
pub mod source;
pub mod store;
pub mod unpack;
