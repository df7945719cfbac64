//! Random identifiers for sandboxes, snapshots and the node itself.

use rand::Rng;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Length of the random part of every id.
const RANDOM_LEN: usize = 12;

fn random_suffix(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// New sandbox id: `sb-` and 12 random lowercase letters and digits.
pub fn sandbox_id() -> String {
    format!("sb-{}", random_suffix(RANDOM_LEN))
}

/// New snapshot id: `snap-` and 12 random lowercase letters and digits.
pub fn snapshot_id() -> String {
    format!("snap-{}", random_suffix(RANDOM_LEN))
}

/// New node id: 16 random lowercase letters and digits.
pub fn node_id() -> String {
    random_suffix(16)
}
