//! `drun kill`: signal a running container's init (the drun supervising it reports the exit).

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::cli::{GlobalArgs, KillArgs};
use crate::run::{finished, state};

fn parse_signal(s: &str) -> Result<Signal> {
    let n = crate::plan::parse::signal(s).map_err(|e| e.named("signal"))? as i32;
    Ok(Signal::try_from(n)?)
}

pub fn execute(global: &GlobalArgs, args: KillArgs) -> Result<i32> {
    let sig = parse_signal(&args.signal)?;
    let dir = super::state_dir(global)?;
    for want in &args.containers {
        let run = match finished::find(&dir, want) {
            Ok(r) if r.running => r,
            Ok(_) | Err(finished::FindError::NotFound(_)) => bail!("no running container {want:?} (see `drun ps`)"),
            Err(e) => return Err(e.into()),
        };
        let info = state::read_info(&run.dir).unwrap_or_else(|| run.info.clone());
        info.pid.with_context(|| {
            format!(
                "container {} has not started yet, or is being restarted",
                run.short_id()
            )
        })?;
        // SIGKILL or its stop signal ends it on purpose: `--restart on-failure` does not start it again (as
        // Docker's kill).
        if sig == Signal::SIGKILL || sig as i32 == info.stop_signal.unwrap_or(libc::SIGTERM) {
            crate::run::restart::request_stop(&run.dir);
        }
        // Only while the pid is still the container's init (its start time says so).
        run.signal(sig as i32)
            .with_context(|| format!("cannot signal container {}", run.short_id()))?;
        println!("{}", run.short_id());
    }
    Ok(0)
}
