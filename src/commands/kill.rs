//! `drun kill`: signal a running container's init (the drun supervising it reports the exit).

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cli::{GlobalArgs, KillArgs};
use crate::run::state;

fn parse_signal(s: &str) -> Result<Signal> {
    let n = crate::plan::parse::signal(s).map_err(|e| e.named("signal"))? as i32;
    Ok(Signal::try_from(n)?)
}

pub fn execute(global: &GlobalArgs, args: KillArgs) -> Result<i32> {
    let sig = parse_signal(&args.signal)?;
    let list = state::list(&super::state_dir(global)?);
    for want in &args.containers {
        let matches: Vec<_> = list
            .iter()
            .filter(|c| c.name.as_deref() == Some(want.as_str()) || c.id.starts_with(want.as_str()))
            .collect();
        let c = match matches.as_slice() {
            [one] => *one,
            [] => bail!("no running container {want:?} (see `drun ps`)"),
            _ => bail!("{want:?} matches several containers; give more of the id"),
        };
        let pid = c
            .pid
            .with_context(|| format!("container {} has not started yet", &c.id[..12]))?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("cannot signal container {}", &c.id[..12]))?;
        println!("{}", &c.id[..12]);
    }
    Ok(0)
}
