//! `drun wait ID|NAME…`: blocks until each container has ended and prints its exit code, one line each, as
//! `docker wait`.

use anyhow::Result;

use crate::cli::{GlobalArgs, WaitArgs};
use crate::run::{finished, state};

pub fn execute(global: &GlobalArgs, args: WaitArgs) -> Result<i32> {
    let dir = super::state_dir(global)?;
    state::reap_stale(&dir);
    let mut status = 0;
    for want in &args.containers {
        let run = match finished::find(&dir, want) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                status = crate::exit::DRUN_ERROR;
                continue;
            }
        };
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
