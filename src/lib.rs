//! drun: a daemonless container runtime for HPC and GPU hosts.
//!
//! The library does all the work; `main.rs` parses the command line, enters a rootless caller's user namespace,
//! dispatches to a command and maps the result to an exit status ([`exit`]).
//!
//! Data flows one way — reference → store → root file system → spec → runtime — and no module imports one above
//! it:
//!
//! | layer | modules |
//! |---|---|
//! | front ends: flags and workflow files become a [`plan::RunPlan`] | [`cli`], [`commands`], [`workflow`] |
//! | the contract and its pure parsers | [`plan`] (`plan::parse`, then one host-path step) |
//! | the run path, one phase per file | [`run`] (`run::run` lists the phases) |
//! | images: registry, pull, verify, unpack, store | [`image`] (`image::ready` is what the run path asks) |
//! | NVIDIA GPUs and CDI; RDMA devices | [`gpu`]; [`rdma`] |
//! | `drun doctor`'s look at the host | [`doctor`] |
//! | OS primitives: fork, at-relative files, no-follow files, user namespaces | [`sys`] |
//!
//! The map with "where is …" answers is docs/architecture.md.

pub mod cli;
pub mod commands;
pub mod digest;
pub mod doctor;
pub mod exit;
pub mod failpoint;
pub mod gpu;
pub mod image;
pub mod plan;
pub mod progress;
#[cfg(test)]
mod props;
pub mod rdma;
pub mod run;
pub mod sys;
pub mod units;
pub mod workflow;
