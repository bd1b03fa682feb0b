//! `drun images`.

use anyhow::Result;

use crate::cli::{GlobalArgs, ImagesArgs};
use crate::units::ByteSize;

pub fn execute(global: &GlobalArgs, args: ImagesArgs) -> Result<i32> {
    let store = super::open_store(global)?;
    let images = store.images()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
    } else if args.quiet {
        for r in &images {
            println!("{}", r.name);
        }
    } else {
        let width = images.iter().map(|r| r.name.len()).max().unwrap_or(0).max(10);
        println!(
            "{:<width$}  {:<12}  {:<19}  {:>10}  PULLED",
            "REFERENCE", "IMAGE ID", "DIGEST", "SIZE"
        );
        let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        for r in &images {
            println!(
                "{:<width$}  {:<12}  sha256:{:<12}  {:>10}  {}",
                r.name,
                r.id().short(),
                r.manifest_digest.short(),
                ByteSize(r.size).to_string(),
                r.pulled_at.format(&fmt).unwrap_or_default()
            );
        }
        // Workflows' setups kept as layers (`drun run workflow.yaml`), on the images above.
        let setups = store.setup_layers();
        if !setups.is_empty() {
            let width = setups.iter().map(|l| l.meta.image.len()).max().unwrap_or(0).max(10);
            println!();
            println!(
                "{:<12}  {:<width$}  {:>10}  {:<19}  SOURCE",
                "SETUP LAYER", "IMAGE", "SIZE", "CREATED"
            );
            for l in &setups {
                println!(
                    "{:<12}  {:<width$}  {:>10}  {:<19}  {}",
                    &l.key[..12.min(l.key.len())],
                    l.meta.image,
                    ByteSize(l.meta.size).to_string(),
                    l.meta.created.format(&fmt).unwrap_or_default(),
                    // Another user's file name: its control characters escaped.
                    l.meta
                        .source
                        .chars()
                        .map(|c| if c.is_control() {
                            c.escape_default().to_string()
                        } else {
                            c.to_string()
                        })
                        .collect::<String>()
                );
            }
        }
    }
    Ok(0)
}
