//! `drun exec [-i] [-t] [-e K=V] [-u USER[:GROUP]] [-w DIR] ID|NAME CMD…`: a command in a running container
//! (`run::exec`). Exits with the command's status; 126/127 when it cannot be run, 125 for drun's own errors.
//!
//! Rootless, the container runs in the user namespace of the drun that started it: this drun joins that one
//! (it must be the caller's own: the kernel refuses anyone else's) instead of creating its own, before anything
//! else, while it still has a single thread.

use anyhow::Result;

use crate::cli::{ExecArgs, GlobalArgs};
use crate::plan::parse::env_item;
use crate::run::exec::{self, ExecError, ExecSpec};

pub fn execute(global: &GlobalArgs, args: ExecArgs) -> Result<i32> {
    let mut env = Vec::new();
    for item in &args.env {
        env.extend(env_item(item, &|name| std::env::var(name).ok()).map_err(|e| e.named("--env"))?);
    }
    let state = super::state_dir(global)?;
    let info = exec::find(&state, &args.container)?;
    if !nix::unistd::geteuid().is_root() {
        let pid = info.pid.expect("find returns a container with a pid");
        crate::sys::userns::join(pid)?;
    }
    let spec = ExecSpec {
        args: args.command,
        env,
        user: args.user,
        workdir: args.workdir,
        interactive: args.interactive,
        tty: args.tty,
        capture: None,
    };
    match exec::run_in(&state, &info, &spec) {
        Ok(outcome) => Ok(outcome.code),
        Err(
            e @ (ExecError::Run(crate::run::RunError::Exec { .. }) | ExecError::Start { .. } | ExecError::NoWorkdir(_)),
        ) => {
            eprintln!("error: {e}");
            Ok(e.exit_code())
        }
        Err(e) => Err(e.into()),
    }
}
