//! The registration proof of work (§3.3, DESIGN §4): a `solution` of 8 bytes such that
//! `SHA-256(challenge ‖ solution)` starts with `difficulty` zero bits. Minting and remembering
//! challenges is the server's business; checking and solving is shared by both sides.

use sha2::{Digest, Sha256};

/// Length of a solution.
pub const SOLUTION_LEN: usize = 8;
/// The longest challenge accepted.
pub const MAX_CHALLENGE_LEN: usize = 64;
/// The largest meaningful difficulty (a SHA-256 output has 256 bits).
pub const MAX_DIFFICULTY: u8 = 255;

/// Number of leading zero bits of `digest`.
fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut n = 0;
    for &b in digest {
        if b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// True if `SHA-256(challenge ‖ solution)` starts with at least `difficulty` zero bits.
pub fn verify(challenge: &[u8], solution: &[u8; SOLUTION_LEN], difficulty: u8) -> bool {
    let digest = Sha256::new().chain_update(challenge).chain_update(solution).finalize();
    leading_zero_bits(&digest) >= u32::from(difficulty)
}

/// Finds a solution by counting up from `start` (the App side; expected work is `2^difficulty`
/// hashes). `None` only if the whole 64-bit space has no solution, which no sane difficulty allows.
pub fn solve(challenge: &[u8], difficulty: u8, start: u64) -> Option<[u8; SOLUTION_LEN]> {
    let prefix = Sha256::new().chain_update(challenge);
    let mut n = start;
    loop {
        let candidate = n.to_be_bytes();
        let digest = prefix.clone().chain_update(candidate).finalize();
        if leading_zero_bits(&digest) >= u32::from(difficulty) {
            return Some(candidate);
        }
        n = n.wrapping_add(1);
        if n == start {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_bits() {
        assert_eq!(leading_zero_bits(&[0x00, 0x0f]), 12);
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }

    #[test]
    fn solve_then_verify() {
        let challenge = b"a challenge";
        for d in [0u8, 1, 8, 12] {
            let s = solve(challenge, d, 0).expect("exists");
            assert!(verify(challenge, &s, d));
        }
        assert!(verify(challenge, &[0; 8], 0));
        let s = solve(challenge, 12, 0).expect("exists");
        // The one that works for difficulty 12 fails for a much higher difficulty (with overwhelming
        // probability; this particular value was checked).
        assert!(!verify(challenge, &s, 40));
    }
}
