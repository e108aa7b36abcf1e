//! EBID generation and decryption (§4, §6.2 step 4, §7 step 3):
//! `EBID_{A,i} = SKINNY-64/192(K_S, i(3 bytes) ‖ ID_A(5 bytes))`.

use crate::skinny::Skinny64_192;
use crate::{Ebid, Epoch, Id, ServerKey};
use core::fmt;

/// One day's K_S, expanded once into SKINNY round tweakeys: a day's key encrypts and decrypts
/// millions of EBIDs, so the key schedule must not be recomputed per block.
#[derive(Clone)]
pub struct EbidCipher {
    cipher: Skinny64_192,
}

impl EbidCipher {
    /// Expands K_S.
    pub fn new(key: &ServerKey) -> Self {
        Self { cipher: Skinny64_192::new(key.expose_secret()) }
    }

    /// `EBID = ENC(K_S, i ‖ ID)`.
    #[inline]
    pub fn encrypt(&self, epoch: Epoch, id: Id) -> Ebid {
        Ebid::new(self.cipher.encrypt_block(plaintext(epoch, id)))
    }

    /// `i ‖ ID = ENC^-1(K_S, EBID)`. Every 8-byte string decrypts to *some* (epoch, ID): whether the
    /// ID is registered and the MAC verifies is what tells a real EBID from noise (§6.2 steps 5–8).
    #[inline]
    pub fn decrypt(&self, ebid: &Ebid) -> (Epoch, Id) {
        let b = self.cipher.decrypt_block(ebid.to_bytes());
        (Epoch::from_be_bytes([b[0], b[1], b[2]]), Id::from_be_bytes([b[3], b[4], b[5], b[6], b[7]]))
    }
}

impl EbidCipher {
    /// [`EbidCipher::encrypt`] for many `(epoch, ID)`s at once, bitsliced 64 at a time (an EBID
    /// list of M epochs, say): several times cheaper per EBID than one by one.
    pub fn encrypt_many(&self, items: &[(Epoch, Id)]) -> Vec<Ebid> {
        let mut blocks: Vec<[u8; 8]> = items.iter().map(|(e, id)| plaintext(*e, *id)).collect();
        self.cipher.encrypt_blocks(&mut blocks);
        blocks.into_iter().map(Ebid::new).collect()
    }

    /// [`EbidCipher::decrypt`] for many EBIDs at once (a mixer batch).
    pub fn decrypt_many(&self, ebids: &[Ebid]) -> Vec<(Epoch, Id)> {
        let mut blocks: Vec<[u8; 8]> = ebids.iter().map(|e| e.to_bytes()).collect();
        self.cipher.decrypt_blocks(&mut blocks);
        blocks
            .into_iter()
            .map(|b| {
                (Epoch::from_be_bytes([b[0], b[1], b[2]]), Id::from_be_bytes([b[3], b[4], b[5], b[6], b[7]]))
            })
            .collect()
    }
}

impl fmt::Debug for EbidCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EbidCipher([redacted])")
    }
}

/// The SKINNY plaintext `i(3) ‖ ID(5)`.
#[inline]
fn plaintext(epoch: Epoch, id: Id) -> [u8; 8] {
    let e = epoch.to_be_bytes();
    let i = id.to_be_bytes();
    [e[0], e[1], e[2], i[0], i[1], i[2], i[3], i[4]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(key in any::<[u8; 24]>(), e in 0u32..=0xff_ffff, id in 0u64..=Id::MAX) {
            let c = EbidCipher::new(&ServerKey::new(key));
            let epoch = Epoch::new(e).expect("range");
            let id = Id::new(id).expect("range");
            prop_assert_eq!(c.decrypt(&c.encrypt(epoch, id)), (epoch, id));
        }
    }

    #[test]
    fn batches_match_one_by_one() {
        let c = EbidCipher::new(&ServerKey::new([3; 24]));
        let items: Vec<(Epoch, Id)> = (0..130u32)
            .map(|i| (Epoch::new(i * 7).expect("range"), Id::new(u64::from(i) * 0x1_0001).expect("range")))
            .collect();
        let ebids = c.encrypt_many(&items);
        let single: Vec<Ebid> = items.iter().map(|(e, id)| c.encrypt(*e, *id)).collect();
        assert_eq!(ebids, single);
        assert_eq!(c.decrypt_many(&ebids), items);
    }

    #[test]
    fn plaintext_layout() {
        let e = Epoch::new(0x0a0b0c).expect("range");
        let id = Id::new(0x01_0203_0405).expect("range");
        assert_eq!(plaintext(e, id), [0x0a, 0x0b, 0x0c, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn debug_is_redacted() {
        let c = EbidCipher::new(&ServerKey::new([9; 24]));
        assert_eq!(format!("{c:?}"), "EbidCipher([redacted])");
    }
}
