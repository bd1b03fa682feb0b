//! drun: a daemonless container runtime for HPC and GPU hosts.
//!
//! The library does all the work; `main.rs` only parses the command line and maps errors to exit codes.
//! Data flows one way: a reference is resolved against a registry or a local source (`image::source`,
//! `image::registry`), its blobs are verified and unpacked into a content-addressed store (`image::store`,
//! `image::unpack`), and later issues turn the stored image into a running container.

pub mod cli;
pub mod commands;
pub mod digest;
pub mod exit;
pub mod failpoint;
pub mod gpu;
pub mod image;
pub mod plan;
pub mod progress;
pub mod run;
pub mod sys;
pub mod units;
pub mod workflow;
