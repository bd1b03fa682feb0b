//! `drun pull`.

use anyhow::Result;

use crate::cli::{GlobalArgs, PullArgs};
use crate::image::pull::{pull, PullOptions};
use crate::image::registry::config::Config;
use crate::image::source::ImageSource;
use crate::units::ByteSize;

pub fn execute(global: &GlobalArgs, args: PullArgs) -> Result<i32> {
    let source = ImageSource::parse(&args.image)?;
    let platform = args.platform.as_deref().map(str::parse).transpose()?;
    let cfg = Config::load()?;
    let store = super::open_store(global)?;
    let report = pull(
        &store,
        &cfg,
        &source,
        &PullOptions {
            platform,
            quiet: args.quiet,
        },
    )?;
    if !args.quiet {
        for rec in &report.records {
            let state = if report.up_to_date { "up to date" } else { "pulled" };
            eprintln!(
                "{}: {state} ({} layers: {} fetched, {} reused; {} in {:.2}s)",
                rec.name,
                rec.layers.len(),
                report.layers_fetched,
                report.layers_reused,
                ByteSize(report.bytes_fetched),
                report.elapsed.as_secs_f64()
            );
        }
    }
    for rec in &report.records {
        println!("{}", rec.manifest_digest);
    }
    Ok(0)
}
