//! `drun rm [-f] ID|NAME…`: removes containers that ended (their record and log); a running one only with `-f`,
//! which kills it first.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::{GlobalArgs, RmArgs};
use crate::run::{finished, state};

pub fn execute(global: &GlobalArgs, args: RmArgs) -> Result<i32> {
    let dir = super::state_dir(global)?;
    state::reap_stale(&dir);
    for want in &args.containers {
        let run = finished::find(&dir, want)?;
        if run.is_running() {
            if !args.force {
                bail!(
                    "cannot remove container {}: it is running (stop it first with `drun stop`, or use `drun rm -f`)",
                    run.short_id()
                );
            }
            super::stop::stop(&run, Duration::ZERO)?;
        }
        run.remove(&dir)
            .with_context(|| format!("cannot remove container {}", run.short_id()))?;
        println!("{want}");
    }
    Ok(0)
}
