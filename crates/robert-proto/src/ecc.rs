//! Encrypted country codes (§4, §6.2 step 3, §8):
//! `ECC_{A,i} = MSB_8(AES(K_G, EBID_{A,i} ‖ 0^64)) XOR CC_A`, i.e. one byte of AES-OFB keystream with
//! the EBID as IV. The AES key size follows the length of K_G (16, 24 or 32 bytes).

use crate::{CountryCode, DecodeError, Ebid, Ecc};
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use core::fmt;

/// K_G (§3.1), the federation key shared by all federated servers, expanded for AES.
#[derive(Clone)]
pub struct FederationKey {
    cipher: AesAny,
}

#[derive(Clone)]
enum AesAny {
    Aes128(Aes128),
    Aes192(Aes192),
    Aes256(Aes256),
}

impl FederationKey {
    /// Expands K_G; its length (16, 24 or 32 bytes) selects AES-128, AES-192 or AES-256.
    pub fn new(key: &[u8]) -> Result<Self, DecodeError> {
        let bad = || DecodeError::Key { what: "kg" };
        let cipher = match key.len() {
            16 => AesAny::Aes128(Aes128::new_from_slice(key).map_err(|_| bad())?),
            24 => AesAny::Aes192(Aes192::new_from_slice(key).map_err(|_| bad())?),
            32 => AesAny::Aes256(Aes256::new_from_slice(key).map_err(|_| bad())?),
            _ => return Err(DecodeError::Layout { what: "kg", reason: "K_G must be 16, 24 or 32 bytes" }),
        };
        Ok(Self { cipher })
    }

    /// The key size in bits (128, 192 or 256).
    pub fn bits(&self) -> u16 {
        match self.cipher {
            AesAny::Aes128(_) => 128,
            AesAny::Aes192(_) => 192,
            AesAny::Aes256(_) => 256,
        }
    }

    /// The keystream byte for an EBID: `MSB_8(AES(K_G, EBID ‖ 0^64))`.
    #[inline]
    fn pad(&self, ebid: &Ebid) -> u8 {
        let mut block = aes::Block::default();
        block[..8].copy_from_slice(ebid.as_bytes());
        match &self.cipher {
            AesAny::Aes128(c) => c.encrypt_block(&mut block),
            AesAny::Aes192(c) => c.encrypt_block(&mut block),
            AesAny::Aes256(c) => c.encrypt_block(&mut block),
        }
        block[0]
    }

    /// The pads of many EBIDs, AES run over all their blocks in one call (the cipher backend
    /// then processes several blocks in parallel and sets up its round keys once).
    fn pads(&self, ebids: impl Iterator<Item = Ebid>) -> Vec<u8> {
        let mut blocks: Vec<aes::Block> = ebids
            .map(|ebid| {
                let mut block = aes::Block::default();
                block[..8].copy_from_slice(ebid.as_bytes());
                block
            })
            .collect();
        match &self.cipher {
            AesAny::Aes128(c) => c.encrypt_blocks(&mut blocks),
            AesAny::Aes192(c) => c.encrypt_blocks(&mut blocks),
            AesAny::Aes256(c) => c.encrypt_blocks(&mut blocks),
        }
        blocks.iter().map(|b| b[0]).collect()
    }

    /// [`FederationKey::encrypt_country`] for many EBIDs of one country, in order.
    pub fn encrypt_countries(&self, ebids: &[Ebid], cc: CountryCode) -> Vec<Ecc> {
        self.pads(ebids.iter().copied()).into_iter().map(|pad| Ecc::new(pad ^ cc.value())).collect()
    }

    /// [`FederationKey::decrypt_country`] for many (EBID, ECC) pairs, in order.
    pub fn decrypt_countries(&self, pairs: &[(Ebid, Ecc)]) -> Vec<CountryCode> {
        self.pads(pairs.iter().map(|(ebid, _)| *ebid))
            .into_iter()
            .zip(pairs)
            .map(|(pad, (_, ecc))| CountryCode::new(pad ^ ecc.value()))
            .collect()
    }

    /// `ECC = pad(EBID) XOR CC` (§4).
    #[inline]
    pub fn encrypt_country(&self, ebid: &Ebid, cc: CountryCode) -> Ecc {
        Ecc::new(self.pad(ebid) ^ cc.value())
    }

    /// `cc = pad(ebid) XOR ecc` (§6.2 step 3): any byte decrypts to some code; whether it is a valid
    /// country is the caller's routing decision.
    #[inline]
    pub fn decrypt_country(&self, ebid: &Ebid, ecc: Ecc) -> CountryCode {
        CountryCode::new(self.pad(ebid) ^ ecc.value())
    }
}

impl fmt::Debug for FederationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FederationKey(AES-{}, [redacted])", self.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_lengths() {
        assert_eq!(FederationKey::new(&[0; 16]).map(|k| k.bits()), Ok(128));
        assert_eq!(FederationKey::new(&[0; 24]).map(|k| k.bits()), Ok(192));
        assert_eq!(FederationKey::new(&[0; 32]).map(|k| k.bits()), Ok(256));
        assert!(FederationKey::new(&[0; 20]).is_err());
        assert!(FederationKey::new(&[]).is_err());
    }

    /// The keystream byte is the first byte of AES(K_G, EBID ‖ 0^64), computed here independently.
    #[test]
    fn pad_is_first_byte_of_aes_of_ebid_and_zeros() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let k = FederationKey::new(&key).expect("16 bytes");
        let ebid = Ebid::new([0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]);
        let mut block = aes::Block::default();
        block[..8].copy_from_slice(ebid.as_bytes());
        Aes128::new_from_slice(&key).expect("16 bytes").encrypt_block(&mut block);
        assert_eq!(k.encrypt_country(&ebid, CountryCode::new(0)).value(), block[0]);
    }

    #[test]
    fn debug_is_redacted() {
        let k = FederationKey::new(&[0x5a; 32]).expect("32 bytes");
        assert_eq!(format!("{k:?}"), "FederationKey(AES-256, [redacted])");
    }

    proptest! {
        #[test]
        fn round_trip(key in any::<[u8; 24]>(), ebid in any::<[u8; 8]>(), cc in any::<u8>()) {
            let k = FederationKey::new(&key).expect("24 bytes");
            let ebid = Ebid::new(ebid);
            let ecc = k.encrypt_country(&ebid, CountryCode::new(cc));
            prop_assert_eq!(k.decrypt_country(&ebid, ecc), CountryCode::new(cc));
        }

        #[test]
        fn batched_equals_one_by_one(
            key in prop_oneof![
                any::<[u8; 16]>().prop_map(|k| k.to_vec()),
                any::<[u8; 24]>().prop_map(|k| k.to_vec()),
                any::<[u8; 32]>().prop_map(|k| k.to_vec()),
            ],
            ebids in proptest::collection::vec(any::<[u8; 8]>(), 0..40),
            cc in any::<u8>(),
        ) {
            let k = FederationKey::new(&key).expect("valid length");
            let ebids: Vec<Ebid> = ebids.into_iter().map(Ebid::new).collect();
            let cc = CountryCode::new(cc);
            let eccs = k.encrypt_countries(&ebids, cc);
            let one_by_one: Vec<Ecc> = ebids.iter().map(|e| k.encrypt_country(e, cc)).collect();
            prop_assert_eq!(&eccs, &one_by_one);
            let pairs: Vec<(Ebid, Ecc)> = ebids.iter().copied().zip(eccs).collect();
            let back = k.decrypt_countries(&pairs);
            prop_assert!(back.iter().all(|c| *c == cc));
        }
    }
}
