//! `drun ps [-a]`: running containers; with `-a`, also detached ones that ended, until `drun rm`.

use anyhow::Result;

use crate::cli::{GlobalArgs, PsArgs};
use crate::run::{finished, state};

pub fn execute(global: &GlobalArgs, args: PsArgs) -> Result<i32> {
    let dir = super::state_dir(global)?;
    state::reap_stale(&dir);
    let list: Vec<finished::Run> = finished::list_all(&dir)
        .into_iter()
        .filter(|r| args.all || r.running)
        .collect();
    if args.json {
        let infos: Vec<&state::RunInfo> = list.iter().map(|r| &r.info).collect();
        println!("{}", serde_json::to_string_pretty(&infos)?);
    } else if args.quiet {
        for c in &list {
            println!("{}", c.short_id());
        }
    } else {
        println!(
            "{:<12}  {:<16}  {:<40}  {:<30}  {:<34}  {:>8}  STARTED",
            "CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS", "PID"
        );
        let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        let now = time::OffsetDateTime::now_utc();
        for c in &list {
            let mut cmd = c.info.command.join(" ");
            if cmd.len() > 30 {
                let mut end = 27;
                while !cmd.is_char_boundary(end) {
                    end -= 1;
                }
                cmd.truncate(end);
                cmd.push_str("...");
            }
            println!(
                "{:<12}  {:<16}  {:<40}  {:<30}  {:<34}  {:>8}  {}",
                c.short_id(),
                c.info.name.as_deref().unwrap_or("-"),
                c.info.image,
                cmd,
                c.status(now),
                c.info
                    .pid
                    .filter(|_| c.running)
                    .map_or("-".to_string(), |p| p.to_string()),
                c.info.started.format(&fmt).unwrap_or_default()
            );
        }
    }
    Ok(0)
}
