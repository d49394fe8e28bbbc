//! How the ranks of a job know each other: a shared secret (the job token) that never travels,
//! and challenge–response proofs over fresh nonces from both sides.
//!
//! A proof is HMAC-SHA256 keyed by the token over a label (which side proves what, so that a
//! proof cannot be reflected back as another) and the parts of the exchange, each after its
//! length. A stranger who watches an exchange learns proofs of nonces that are never used again;
//! one who knows the job id, the hosts or the ports learns nothing. Verification compares in
//! constant time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a nonce and of a proof.
pub const PROOF_LEN: usize = 32;

/// A fresh random nonce from the operating system.
pub fn nonce() -> [u8; PROOF_LEN] {
    let mut n = [0u8; PROOF_LEN];
    // The OS random source does not fail on Linux once booted; a failure here is fatal.
    getrandom::fill(&mut n).expect("the operating system's random source");
    n
}

/// A new random job token: 32 random bytes as 64 hex digits.
pub fn new_token() -> String {
    hex(&nonce())
}

/// The proof of knowing `token` for `label` and `parts`.
pub fn prove(token: &str, label: &str, parts: &[&[u8]]) -> [u8; PROOF_LEN] {
    mac(token, label, parts).finalize().into_bytes().into()
}

/// Whether `proof` is the proof of `token` for `label` and `parts` (in constant time).
pub fn verify(token: &str, label: &str, parts: &[&[u8]], proof: &[u8]) -> bool {
    mac(token, label, parts).verify_slice(proof).is_ok()
}

fn mac(token: &str, label: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut m =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    for part in std::iter::once(label.as_bytes()).chain(parts.iter().copied()) {
        m.update(&(part.len() as u64).to_le_bytes());
        m.update(part);
    }
    m
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string, `None` when it is not hex of whole bytes.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_with_its_token_label_and_parts() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b, "nonces are fresh");
        let p = prove("secret", "join", &[&a, &b]);
        assert!(verify("secret", "join", &[&a, &b], &p));
        assert!(!verify("other", "join", &[&a, &b], &p));
        assert!(!verify("secret", "accept", &[&a, &b], &p));
        assert!(!verify("secret", "join", &[&b, &a], &p));
        assert!(!verify("secret", "join", &[&a, &b], &p[..31]));
        // Parts are framed by their lengths: moving a byte between them changes the proof.
        let (x, y) = ([1u8, 2], [3u8]);
        let (x2, y2) = ([1u8], [2u8, 3]);
        assert_ne!(prove("k", "l", &[&x, &y]), prove("k", "l", &[&x2, &y2]));
    }

    #[test]
    fn hex_round_trips_and_rejects_what_is_not_hex() {
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert_eq!(hex(&unhex(&t).unwrap()), t);
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("é"), None);
    }
}
