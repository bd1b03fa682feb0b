//! `drun prune`.

use anyhow::Result;

use crate::cli::{GlobalArgs, PruneArgs};
use crate::units::ByteSize;

pub fn run(global: &GlobalArgs, args: PruneArgs) -> Result<i32> {
    let store = super::open_store(global)?;
    let lock = store.lock_exclusive()?;
    crate::run::state::reap_stale(&super::state_dir(global)?);
    let in_use = crate::run::state::live_layers(&super::state_dir(global)?);
    let freed = store.collect_garbage(&lock, &in_use)?;
    if args.quiet {
        println!("{freed}");
    } else {
        println!("freed {} ({freed} bytes)", ByteSize(freed));
    }
    Ok(0)
}
