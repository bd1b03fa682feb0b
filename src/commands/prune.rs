//! `drun prune`.

use anyhow::Result;

use crate::cli::{GlobalArgs, PruneArgs};
use crate::units::ByteSize;

pub fn execute(global: &GlobalArgs, args: PruneArgs) -> Result<i32> {
    let store = super::open_store(global)?;
    let lock = store.lock_exclusive()?;
    let state = super::state_dir(global)?;
    crate::run::state::reap_stale(&state);
    let in_use = crate::run::state::live_layers(&state);
    let freed = store.collect_garbage(&lock, &in_use)?;
    if args.quiet {
        println!("{freed}");
    } else {
        println!("freed {} ({freed} bytes)", ByteSize(freed));
    }
    Ok(0)
}
