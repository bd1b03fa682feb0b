//! `drun stop [-t SECONDS] ID|NAME…`: the container's stop signal (`--stop-signal`, the image's StopSignal, else
//! SIGTERM), then SIGKILL once the timeout has passed; returns once it has ended.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::{GlobalArgs, StopArgs};
use crate::run::{finished, state};

/// How long a SIGKILLed container may take to be reaped and cleaned up.
const AFTER_KILL: Duration = Duration::from_secs(60);

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
    let signal_error = || format!("cannot signal container {}", run.short_id());
    if !run.is_running() {
        return Ok(());
    }
    if !grace.is_zero() {
        run.signal(run.info.stop_signal.unwrap_or(libc::SIGTERM))
            .with_context(signal_error)?;
        if run.wait_stopped(grace) {
            return Ok(());
        }
    }
    run.signal(libc::SIGKILL).with_context(signal_error)?;
    if !run.wait_stopped(AFTER_KILL) {
        bail!(
            "container {} still runs {}s after SIGKILL",
            run.short_id(),
            AFTER_KILL.as_secs()
        );
    }
    Ok(())
}
