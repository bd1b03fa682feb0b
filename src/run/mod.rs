//! Running containers: plans, OCI specs, root file systems, cgroups, libcontainer and supervision.

pub mod cgroups;
pub mod container;
pub mod reap;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod tty;
pub mod user;
pub mod warmup;
