//! `drun doctor`: what this host and caller give drun, section by section, each missing piece with its fix; or
//! `--json`. Exits 0 when a run has everything it needs (warnings and notes included), 1 when something is
//! missing.

use anyhow::Result;

use crate::cli::{DoctorArgs, GlobalArgs};
use crate::doctor::{self, Locations, Status};

pub fn execute(global: &GlobalArgs, a: DoctorArgs) -> Result<i32> {
    let locations = Locations {
        store: global.root.clone().unwrap_or_else(crate::image::store::default_root),
        state: global
            .state
            .clone()
            .unwrap_or_else(crate::run::state::default_state_dir),
        blob_cache: global.blob_cache.clone(),
    };
    let report = doctor::examine(&locations);
    let code = if report.ok { 0 } else { 1 };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    let mut section = "";
    for c in &report.checks {
        if c.section != section {
            section = c.section;
            if !report.checks[0].section.eq(section) {
                println!();
            }
            println!("{}", heading(section));
        }
        println!("  {:<7}  {:<16} {}", c.status.label(), c.name, c.value);
        if let Some(fix) = &c.fix {
            println!("  {:<7}  {:<16} fix: {fix}", "", "");
        }
    }
    let missing = report.checks.iter().filter(|c| c.status == Status::Missing).count();
    println!();
    if missing == 0 {
        println!("drun has what it needs here.");
    } else {
        println!("{missing} missing: drun run cannot work for you here until fixed.");
    }
    Ok(code)
}

fn heading(section: &str) -> &'static str {
    match section {
        "kernel" => "Kernel",
        "identity" => "Identity",
        "hpc" => "GPUs, RDMA, Slurm",
        "storage" => "Storage",
        _ => "Other",
    }
}
