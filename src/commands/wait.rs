//! `drun wait ID|NAME…`: blocks until each container has ended and prints its exit code, one line each, as
//! `docker wait`. With `--condition healthy` (Podman's spelling), until its health check passes: what a CI
//! script waits for before it starts its tests; it fails as soon as the container turns unhealthy or ends.

use anyhow::{anyhow, Result};

use crate::cli::{GlobalArgs, WaitArgs, WaitCondition};
use crate::run::health::{self, Status};
use crate::run::{finished, state};

pub fn execute(global: &GlobalArgs, args: WaitArgs) -> Result<i32> {
    let dir = super::state_dir(global)?;
    state::reap_stale(&dir);
    let want = match args.condition {
        WaitCondition::Stopped => None,
        WaitCondition::Healthy => Some(Status::Healthy),
        WaitCondition::Unhealthy => Some(Status::Unhealthy),
    };
    let limit = match (&args.timeout, want) {
        (Some(_), None) => return Err(anyhow!("--timeout is for --condition healthy or unhealthy")),
        (Some(t), Some(_)) => Some(health::parse_duration(t).map_err(|e| anyhow!("invalid --timeout: {e}"))?),
        (None, _) => None,
    };
    let mut status = 0;
    for want_name in &args.containers {
        let run = match finished::find(&dir, want_name) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                status = crate::exit::DRUN_ERROR;
                continue;
            }
        };
        if let Some(condition) = want {
            if let Err(e) = health::wait_for(&run.dir, run.short_id(), condition, limit, &|| run.is_running()) {
                eprintln!("error: {e}");
                status = crate::exit::DRUN_ERROR;
            }
            continue;
        }
        match run.wait(&dir).and_then(|e| e.code) {
            Some(code) => println!("{code}"),
            None => {
                eprintln!(
                    "error: cannot tell how container {} ended: its monitor was killed before it could record it",
                    run.short_id()
                );
                status = crate::exit::DRUN_ERROR;
            }
        }
    }
    Ok(status)
}
