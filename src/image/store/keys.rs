//! The keys of unpacked layers in `layers/<idmap>/`: a layer's diff_id, or its ChainID when its tree depends on
//! the layers below it (see the store's notes).

use crate::digest::Digest;

/// The key of an unpacked layer: its diff_id's hex, or `chain-<hex>` of its ChainID when it depends on its lowers.
pub fn layer_key(diff_id: &Digest, chain_id: Option<&Digest>) -> String {
    match chain_id {
        Some(c) => format!("chain-{}", c.hex()),
        None => diff_id.hex().to_string(),
    }
}

/// The ChainIDs of layers with these diff_ids, bottom first (containerd's definition: the bottom layer's is its
/// diff_id, the next one's `sha256(ChainID(n-1) + " " + diff_id(n))`).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(below) => Digest::of(format!("{below} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}
