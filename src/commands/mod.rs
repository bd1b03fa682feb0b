//! One module per subcommand. Only here is anything printed to stdout.

pub mod cdi;
pub mod gpus;
pub mod images;
pub mod inspect;
pub mod kill;
pub mod prune;
pub mod ps;
pub mod pull;
pub mod rmi;
pub mod run;

use anyhow::{Context, Result};

use crate::cli::{Command, GlobalArgs};
use crate::image::store::Store;

pub fn open_store(global: &GlobalArgs) -> Result<Store> {
    let root = global.root.clone().unwrap_or_else(crate::image::store::default_root);
    Ok(Store::open(&root)
        .with_context(|| format!("cannot open the image store at {}", root.display()))?
        .with_blob_cache(global.blob_cache.clone()))
}

/// Runs a parsed command; returns the process exit status.
pub fn dispatch(global: &GlobalArgs, command: Command) -> Result<i32> {
    match command {
        Command::Pull(a) => pull::run(global, a),
        Command::Images(a) => images::run(global, a),
        Command::Inspect(a) => inspect::run(global, a),
        Command::Rmi(a) => rmi::run(global, a),
        Command::Prune(a) => prune::run(global, a),
        Command::Run(a) => run::run(global, *a),
        Command::Ps(a) => ps::run(global, a),
        Command::Kill(a) => kill::run(global, a),
        Command::Gpus(a) => gpus::run(a),
        Command::Cdi(a) => cdi::run(a),
    }
}

/// The state directory; rootless, it must be a private directory of the caller's (created so if missing): what
/// is in it decides what drun deletes and kills.
pub fn state_dir(global: &GlobalArgs) -> Result<std::path::PathBuf> {
    let dir = global
        .state
        .clone()
        .unwrap_or_else(crate::run::state::default_state_dir);
    crate::run::state::ensure_private(&dir)?;
    Ok(dir)
}
