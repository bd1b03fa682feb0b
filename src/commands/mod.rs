//! One module per subcommand, each entered through its `execute`. Only here (and in main.rs) is anything printed:
//! the library reports through return values, `tracing`, or a reporter a command passes in.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the subcommands are drun's output: tables, JSON, ids, progress"
)]

pub mod cdi;
pub mod check;
pub mod doctor;
pub mod exec;
pub mod export;
pub mod gpus;
pub mod images;
pub mod inspect;
pub mod kill;
pub mod logs;
pub mod monitor;
pub mod prune;
pub mod ps;
pub mod pull;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod stop;
pub mod wait;

use anyhow::{Context, Result};

use crate::cli::{Command, GlobalArgs};
use crate::image::store::Store;

pub fn open_store(global: &GlobalArgs) -> Result<Store> {
    let root = global.root.clone().unwrap_or_else(crate::image::store::default_root);
    Ok(Store::open(&root)
        .with_context(|| format!("cannot open the image store at {root:?}"))?
        .with_blob_cache(global.blob_cache.clone()))
}

/// Runs a parsed command; returns the process exit status.
pub fn dispatch(global: &GlobalArgs, command: Command) -> Result<i32> {
    match command {
        Command::Pull(a) => pull::execute(global, a),
        Command::Images(a) => images::execute(global, a),
        Command::Inspect(a) => inspect::execute(global, a),
        Command::Export(a) => export::execute(global, a),
        Command::Rmi(a) => rmi::execute(global, a),
        Command::Prune(a) => prune::execute(global, a),
        Command::Check(a) => check::execute(global, a),
        Command::Run(a) => run::execute(global, *a),
        Command::Ps(a) => ps::execute(global, a),
        Command::Kill(a) => kill::execute(global, a),
        Command::Exec(a) => exec::execute(global, a),
        Command::Logs(a) => logs::execute(global, a),
        Command::Wait(a) => wait::execute(global, a),
        Command::Stop(a) => stop::execute(global, a),
        Command::Rm(a) => rm::execute(global, a),
        Command::Gpus(a) => gpus::execute(a),
        Command::Cdi(a) => cdi::execute(a),
        Command::Doctor(a) => doctor::execute(global, a),
        Command::Monitor => monitor::execute(),
    }
}

/// The state directory; rootless, it must be a private directory of the caller's (created so if missing): what
/// is in it decides what drun deletes and kills.
pub fn state_dir(global: &GlobalArgs) -> Result<std::path::PathBuf> {
    let dir = global
        .state
        .clone()
        .unwrap_or_else(crate::run::state::default_state_dir);
    crate::run::state::ensure_private(&dir).with_context(|| format!("cannot use the state directory {dir:?}"))?;
    Ok(dir)
}
