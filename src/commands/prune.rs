//! `drun prune`.

use anyhow::Result;

use crate::cli::{GlobalArgs, PruneArgs};
use crate::units::ByteSize;

pub fn run(global: &GlobalArgs, args: PruneArgs) -> Result<i32> {
    let store = super::open_store(global)?;
    let lock = store.lock_exclusive()?;
    let freed = store.collect_garbage(&lock)?;
    if args.quiet {
        println!("{freed}");
    } else {
        println!("freed {} ({freed} bytes)", ByteSize(freed));
    }
    Ok(0)
}
