//! `drun ps`.

use anyhow::Result;

use crate::cli::{GlobalArgs, PsArgs};
use crate::run::state;

pub fn execute(global: &GlobalArgs, args: PsArgs) -> Result<i32> {
    let dir = super::state_dir(global)?;
    state::reap_stale(&dir);
    let list = state::list(&dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if args.quiet {
        for c in &list {
            println!("{}", &c.id[..12]);
        }
    } else {
        println!(
            "{:<12}  {:<16}  {:<40}  {:<30}  {:>8}  STARTED",
            "CONTAINER ID", "NAME", "IMAGE", "COMMAND", "PID"
        );
        let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        for c in &list {
            let mut cmd = c.command.join(" ");
            if cmd.len() > 30 {
                cmd.truncate(27);
                cmd.push_str("...");
            }
            println!(
                "{:<12}  {:<16}  {:<40}  {:<30}  {:>8}  {}",
                &c.id[..12],
                c.name.as_deref().unwrap_or("-"),
                c.image,
                cmd,
                c.pid.map_or("-".to_string(), |p| p.to_string()),
                c.started.format(&fmt).unwrap_or_default()
            );
        }
    }
    Ok(0)
}
