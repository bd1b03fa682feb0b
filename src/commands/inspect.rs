//! `drun inspect`: the stored record, manifest and config of an image as one JSON document.

use anyhow::{Context, Result};

use crate::cli::{GlobalArgs, InspectArgs};
use crate::image::source::lookup_names;

pub fn execute(global: &GlobalArgs, args: InspectArgs) -> Result<i32> {
    let store = super::open_store(global)?;
    let rec = store.find_image(&args.image, &lookup_names(&args.image))?;
    let load = |d: &crate::digest::Digest| -> Result<serde_json::Value> {
        let data = store
            .read_blob(d)?
            .with_context(|| format!("blob {d} is missing from the store"))?;
        Ok(serde_json::from_slice(&data)?)
    };
    let doc = serde_json::json!({
        "Name": rec.name,
        "Id": rec.config_digest,
        "Digest": rec.manifest_digest,
        "IndexDigest": rec.index_digest,
        "Platform": rec.platform,
        "Size": rec.size,
        "PulledAt": rec.pulled_at.format(&time::format_description::well_known::Rfc3339)?,
        "Layers": rec.layers,
        "Manifest": load(&rec.manifest_digest)?,
        "Config": load(&rec.config_digest)?,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(0)
}
