//! The sealed EBID list (§4, DESIGN §3): `IV(12) ‖ AES-256-GCM(K_enc, IV, plaintext) ‖ tag(16)`,
//! plaintext = entries `i(3) ‖ EBID(8) ‖ ECC(1)` in strictly increasing epoch order, no associated
//! data. The IV is random (96 bits, from the caller's RNG), the tag 128 bits.

use crate::{DecodeError, Ebid, Ecc, Epoch, KEnc, Rejected};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Length of the random IV.
pub const IV_LEN: usize = NONCE_LEN;
/// Length of the GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of one plaintext entry.
pub const ENTRY_LEN: usize = 3 + 8 + 1;
/// The most entries one list may hold: 2^16 epochs is ~680 days of 15-minute epochs, far beyond any
/// sensible M; the bound keeps a hostile list from making an App allocate without limit.
pub const MAX_ENTRIES: usize = 1 << 16;

/// One `(i, EBID_{A,i}, ECC_{A,i})` of the list (§4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EbidEntry {
    /// The epoch the EBID is for.
    pub epoch: Epoch,
    /// `EBID_{A,i}`.
    pub ebid: Ebid,
    /// `ECC_{A,i}`.
    pub ecc: Ecc,
}

/// Why a list could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The entries are not in strictly increasing epoch order, or there are too many.
    #[error("ebids: entries must be in strictly increasing epoch order and at most {MAX_ENTRIES}")]
    Entries,
    /// Shorter than IV and tag, or not a whole number of entries.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The AEAD tag does not verify (wrong key, or altered bytes).
    #[error("rejected")]
    Rejected(#[from] Rejected),
}

fn aead_key(k_enc: &KEnc) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k_enc.expose_secret()).expect("K_enc is 32 bytes"))
}

fn check_order(entries: &[EbidEntry]) -> Result<(), SealError> {
    if entries.len() > MAX_ENTRIES || entries.windows(2).any(|w| w[0].epoch >= w[1].epoch) {
        return Err(SealError::Entries);
    }
    Ok(())
}

/// Seals a list for the App that holds `k_enc` (server side, §4).
pub fn seal(
    k_enc: &KEnc,
    entries: &[EbidEntry],
    rng: &mut (impl rand_core::CryptoRng + ?Sized),
) -> Result<Vec<u8>, SealError> {
    check_order(entries)?;
    let mut iv = [0u8; IV_LEN];
    rng.fill_bytes(&mut iv);
    Ok(seal_with_iv(k_enc, entries, iv))
}

/// Seals with a given IV: for known-answer vectors only. An IV must never repeat under one key.
pub fn seal_with_iv(k_enc: &KEnc, entries: &[EbidEntry], iv: [u8; IV_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(IV_LEN + entries.len() * ENTRY_LEN + TAG_LEN);
    out.extend_from_slice(&iv);
    for e in entries {
        out.extend_from_slice(&e.epoch.to_be_bytes());
        out.extend_from_slice(e.ebid.as_bytes());
        out.push(e.ecc.value());
    }
    // Sealed in place after the IV, the tag appended: no copy of the list.
    let tag = aead_key(k_enc)
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut out[IV_LEN..])
        .expect("sealing cannot fail for a list this size");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens a sealed list (App side): checks the tag, then the layout and the epoch order.
pub fn open(k_enc: &KEnc, sealed: &[u8]) -> Result<Vec<EbidEntry>, SealError> {
    let min = IV_LEN + TAG_LEN;
    if sealed.len() < min {
        return Err(DecodeError::Layout { what: "ebids", reason: "shorter than an IV and a tag" }.into());
    }
    let body_len = sealed.len() - min;
    if !body_len.is_multiple_of(ENTRY_LEN) || body_len / ENTRY_LEN > MAX_ENTRIES {
        return Err(DecodeError::Layout {
            what: "ebids",
            reason: "not IV, a whole number of 12-byte entries (at most 65536) and a tag",
        }
        .into());
    }
    let (iv, rest) = sealed.split_at(IV_LEN);
    let nonce = Nonce::try_assume_unique_for_key(iv).map_err(|_| Rejected)?;
    let mut buf = rest.to_vec();
    let plain = aead_key(k_enc).open_in_place(nonce, Aad::empty(), &mut buf).map_err(|_| Rejected)?;
    let entries: Vec<EbidEntry> = plain
        .chunks_exact(ENTRY_LEN)
        .map(|c| EbidEntry {
            epoch: Epoch::from_be_bytes([c[0], c[1], c[2]]),
            ebid: Ebid::new([c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]]),
            ecc: Ecc::new(c[11]),
        })
        .collect();
    check_order(&entries)?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn entries(n: u32) -> Vec<EbidEntry> {
        (0..n)
            .map(|i| EbidEntry {
                epoch: Epoch::new(1000 + i).expect("range"),
                ebid: Ebid::new((u64::from(i) * 0x0101_0101).to_be_bytes()),
                ecc: Ecc::new(i as u8),
            })
            .collect()
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let k = KEnc::new([4; 32]);
        let sealed = seal_with_iv(&k, &entries(3), [1; 12]);
        assert_eq!(sealed.len(), IV_LEN + 3 * ENTRY_LEN + TAG_LEN);
        assert_eq!(open(&k, &sealed), Ok(entries(3)));
        for bit in 0..sealed.len() * 8 {
            let mut b = sealed.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(open(&k, &b), Err(SealError::Rejected(Rejected)), "bit {bit}");
        }
    }

    #[test]
    fn wrong_key_and_bad_lengths() {
        let sealed = seal_with_iv(&KEnc::new([4; 32]), &entries(2), [1; 12]);
        assert!(matches!(open(&KEnc::new([5; 32]), &sealed), Err(SealError::Rejected(_))));
        assert!(matches!(open(&KEnc::new([4; 32]), &sealed[..27]), Err(SealError::Decode(_))));
        assert!(matches!(open(&KEnc::new([4; 32]), &sealed[..sealed.len() - 1]), Err(SealError::Decode(_))));
        // An empty list is a valid (if useless) list.
        let empty = seal_with_iv(&KEnc::new([4; 32]), &[], [1; 12]);
        assert_eq!(open(&KEnc::new([4; 32]), &empty), Ok(vec![]));
    }

    #[test]
    fn out_of_order_entries_are_refused() {
        let mut e = entries(3);
        e.swap(0, 1);
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        assert_eq!(seal(&KEnc::new([4; 32]), &e, &mut rng), Err(SealError::Entries));
        // A server that sealed them anyway (bypassing `seal`) is caught when opening.
        let sealed = seal_with_iv(&KEnc::new([4; 32]), &e, [2; 12]);
        assert_eq!(open(&KEnc::new([4; 32]), &sealed), Err(SealError::Entries));
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(k in any::<[u8; 32]>(), n in 0u32..100, seed in any::<u64>()) {
            let key = KEnc::new(k);
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let sealed = seal(&key, &entries(n), &mut rng).expect("ordered");
            prop_assert_eq!(open(&key, &sealed).expect("opens"), entries(n));
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = open(&KEnc::new([4; 32]), &bytes);
        }
    }
}
