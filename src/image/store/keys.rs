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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert_eq!(layer_key(&b, None), b.hex());
        assert_eq!(layer_key(&b, Some(&chains[1])), format!("chain-{}", chains[1].hex()));
    }
}
