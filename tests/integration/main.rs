//! drun's integration tests: real drun processes against the real local registries started by `make images`.
//! Tests that mount or chown need root (as CI runs them); they say so when they are not.

// Fixtures and checks in the tests' own temporary directories: the path-following helpers are fine here.
#![allow(clippy::disallowed_methods)]
// What a test measures (peak memory, time) goes to stderr, which the test harness shows for a failing test.
#![allow(clippy::print_stderr)]
mod archive;
mod background;
mod chaos;
mod common;
mod devices;
mod docker_py;
mod doctor;
mod environment;
mod exec;
mod gpu;
mod image_dir;
mod mpi;
mod nested;
mod pull;
mod rootless;
mod run;
mod scale;
mod security;
mod setup;
mod slurm;
mod soak;
mod squash;
mod store;
mod unpack;
mod vm;
mod workflow;
