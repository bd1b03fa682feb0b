//! `drun logs [-f] [--tail N] ID|NAME`: a detached container's output, from the log its monitor keeps.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::{GlobalArgs, LogsArgs};
use crate::run::{finished, logfile, state};

pub fn execute(global: &GlobalArgs, args: LogsArgs) -> Result<i32> {
    let dir = super::state_dir(global)?;
    state::reap_stale(&dir);
    let run = finished::find(&dir, &args.container)?;
    if !run.info.detached {
        bail!(
            "container {} runs in the foreground: its output goes to the drun that runs it (`drun logs` is for \
             `drun run -d`)",
            run.short_id()
        );
    }
    let read_error = || format!("cannot read the log of container {}", run.short_id());
    let mut out = std::io::stdout().lock();
    let files = logfile::files(&run.dir);
    let (index, offset) = match args.tail {
        Some(n) => logfile::tail_start(&files, n).with_context(read_error)?,
        None => (0, 0),
    };
    match logfile::copy_from(&files, index, offset, &mut out) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
        r => r.with_context(read_error)?,
    }
    out.flush()?;
    if !args.follow {
        return Ok(0);
    }
    // Where the copy above ended in the current file: what follows is new.
    let shown = files
        .last()
        .filter(|f| f.ends_with(logfile::LOG_FILE))
        .and_then(|f| std::fs::symlink_metadata(f).ok())
        .map_or(0, |m| m.len());
    let mut follower = logfile::Follower::new(&run.dir, shown).with_context(read_error)?;
    loop {
        // Looked at before the last read: once it has ended, that read takes everything it wrote.
        let ended = !run.is_running();
        let copied = follower.pump(&mut out);
        match copied {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            r => r.with_context(read_error)?,
        };
        out.flush()?;
        if ended {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
