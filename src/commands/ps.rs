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
        // Each record, with its health (status and last probes) when it has a health check.
        let mut infos = Vec::new();
        for r in &list {
            let mut v = serde_json::to_value(&r.info)?;
            if let (Some(h), Some(map)) = (crate::run::health::read(&r.dir), v.as_object_mut()) {
                map.insert("health".into(), serde_json::to_value(h)?);
            }
            infos.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&infos)?);
    } else if args.quiet {
        for c in &list {
            println!("{}", c.short_id());
        }
    } else {
        println!(
            "{:<12}  {:<16}  {:<40}  {:<30}  {:<42}  {:>8}  STARTED",
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
                "{:<12}  {:<16}  {:<40}  {:<30}  {:<42}  {:>8}  {}",
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
