//! `drun monitor` (hidden): the monitor of a detached container whose plan a front end built itself (a workflow's
//! `detach: true` entry). drun starts it with its order on a pipe (`run::detach::launch_order`); it runs that plan
//! as `drun run -d`'s monitor runs its own (`run::container::monitor`).

use anyhow::{bail, Context, Result};

use crate::cli::GlobalArgs;
use crate::run::detach::{self, Report};

pub fn execute() -> Result<i32> {
    let (Some(order), Some(report)) = (detach::take_order(), Report::take()) else {
        bail!("`drun monitor` is started by drun itself, for a detached container; use `drun run -d`");
    };
    let order = order.context("cannot read the monitor's order")?;
    let global = GlobalArgs {
        root: Some(order.store_root),
        state: Some(order.state_dir),
        blob_cache: order.blob_cache,
        // A workflow's entries use the node's store (docs/multi-node.md).
        image_dir: None,
        log_level: None,
    };
    super::run::container::monitor(&global, &order.plan, report, order.log, order.auto_remove, order.quiet)
}
