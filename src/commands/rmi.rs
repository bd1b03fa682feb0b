//! `drun rmi`: forget images, then collect what nothing references any more.

use anyhow::Result;

use crate::cli::{GlobalArgs, RmiArgs};
use crate::image::source::lookup_names;
use crate::units::ByteSize;

pub fn execute(global: &GlobalArgs, args: RmiArgs) -> Result<i32> {
    let store = super::open_store(global)?;
    let lock = store.lock_exclusive()?;
    for typed in &args.images {
        let rec = store.find_image(typed, &lookup_names(typed))?;
        store.remove_image(&rec.name)?;
        println!("Untagged: {}", rec.name);
    }
    let state = super::state_dir(global)?;
    crate::run::state::reap_stale(&state);
    let in_use = crate::run::state::live_layers(&state);
    let freed = store.collect_garbage(&lock, &in_use)?;
    eprintln!("freed {}", ByteSize(freed));
    Ok(0)
}
