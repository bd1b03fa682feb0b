//! `drun stop [-t SECONDS] ID|NAME…`: the container's stop signal (`--stop-signal`, the image's StopSignal, else
//! SIGTERM), then SIGKILL once the timeout has passed; returns once it has ended.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{GlobalArgs, StopArgs};
use crate::run::{finished, state};

pub fn execute(global: &GlobalArgs, args: StopArgs) -> Result<i32> {
    let dir = super::state_dir(global)?;
    state::reap_stale(&dir);
    for want in &args.containers {
        let run = finished::find(&dir, want)?;
        stop(&run, Duration::from_secs(args.time))?;
        println!("{want}");
    }
    Ok(0)
}

/// Stops `run` (nothing to do when it has ended): its stop signal, SIGKILL after `grace` (at once when zero).
pub(super) fn stop(run: &finished::Run, grace: Duration) -> Result<()> {
    run.stop(grace)
        .with_context(|| format!("cannot stop container {}", run.short_id()))
}
