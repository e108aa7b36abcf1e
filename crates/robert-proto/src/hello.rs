//! HELLO messages (§5.1): `ECC(1) ‖ EBID(8) ‖ t16(2) ‖ MAC40(5)`, 16 bytes, broadcast over BLE.
//!
//! Parse, don't validate: a [`Hello`] exists only if 16 bytes were given; a [`VerifiedHello`] only
//! comes out of [`Hello::verify`], which checked the MAC in constant time.

use crate::mac::{AuthKey, MAC40_LEN};
use crate::{DecodeError, Ebid, Ecc, NtpTime, Rejected, Time16};
use core::fmt;

/// Length of a HELLO: 128 bits, the most a BLE advertisement carries on every platform (§1.5).
pub const HELLO_LEN: usize = 16;

/// A parsed HELLO (§5.2 step 1, §6.2 step 1). Its MAC has not been checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    ecc: Ecc,
    ebid: Ebid,
    time: Time16,
    mac: [u8; MAC40_LEN],
}

impl Hello {
    /// Builds `HELLO_{A,i}` for the EBID and ECC of the current epoch, stamped with `now` (§5.1).
    pub fn build(key: &AuthKey, ecc: Ecc, ebid: Ebid, now: NtpTime) -> Self {
        let time = now.t16();
        let mac = key.hello_mac(ecc, &ebid, time);
        Self { ecc, ebid, time, mac }
    }

    /// Parses 16 bytes (§5.2 step 1); any other length is a [`DecodeError`].
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let arr: [u8; HELLO_LEN] = bytes.try_into().map_err(|_| DecodeError::Length {
            what: "hello",
            expected: HELLO_LEN,
            got: bytes.len(),
        })?;
        Ok(Self::from_bytes(arr))
    }

    /// Every 16-byte string is the layout of some HELLO.
    pub fn from_bytes(b: [u8; HELLO_LEN]) -> Self {
        Self {
            ecc: Ecc::new(b[0]),
            ebid: Ebid::new([b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8]]),
            time: Time16::new(u16::from_be_bytes([b[9], b[10]])),
            mac: [b[11], b[12], b[13], b[14], b[15]],
        }
    }

    /// The 16 bytes on the air.
    pub fn to_bytes(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0] = self.ecc.value();
        b[1..9].copy_from_slice(self.ebid.as_bytes());
        b[9..11].copy_from_slice(&self.time.value().to_be_bytes());
        b[11..16].copy_from_slice(&self.mac);
        b
    }

    /// `ecc`: the encrypted country code.
    pub fn ecc(&self) -> Ecc {
        self.ecc
    }

    /// `ebid`: the sender's EBID.
    pub fn ebid(&self) -> Ebid {
        self.ebid
    }

    /// `time`: the 16 low bits of the sender's NTP seconds when it was sent.
    pub fn time(&self) -> Time16 {
        self.time
    }

    /// `mac`: the 40-bit MAC.
    pub fn mac(&self) -> [u8; MAC40_LEN] {
        self.mac
    }

    /// §5.2 step 3 (App) and §6.2 step 2 (server): `|time - TRUNC16(received_at)| < δ`, modulo 2^16.
    pub fn check_delta(&self, received_at: NtpTime, delta_sec: u16) -> Result<(), Rejected> {
        if self.time.within_delta(received_at, delta_sec) { Ok(()) } else { Err(Rejected) }
    }

    /// §6.2 step 8: checks the MAC in constant time under the sender's key.
    pub fn verify(self, key: &AuthKey) -> Result<VerifiedHello, Rejected> {
        key.verify_hello_mac(self.ecc, &self.ebid, self.time, &self.mac)?;
        Ok(VerifiedHello(self))
    }
}

impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hello([redacted])")
    }
}

/// A HELLO whose MAC verified under the key of the ID its EBID decrypts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedHello(Hello);

impl VerifiedHello {
    /// The HELLO.
    pub fn hello(&self) -> &Hello {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KAuth;
    use proptest::prelude::*;

    fn key() -> AuthKey {
        AuthKey::new(&KAuth::new([0x11; 32]))
    }

    fn sample() -> Hello {
        Hello::build(&key(), Ecc::new(0x42), Ebid::new([1, 2, 3, 4, 5, 6, 7, 8]), NtpTime::new(0xdead_beef))
    }

    #[test]
    fn layout() {
        let b = sample().to_bytes();
        assert_eq!(b[0], 0x42);
        assert_eq!(&b[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[9..11], &[0xbe, 0xef]);
        assert!(Hello::parse(&b).expect("16 bytes").verify(&key()).is_ok());
    }

    #[test]
    fn wrong_lengths_are_decode_errors() {
        for n in [0usize, 15, 17, 32] {
            let err = Hello::parse(&vec![0; n]).expect_err("not 16 bytes");
            assert_eq!(err, DecodeError::Length { what: "hello", expected: 16, got: n });
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let good = sample().to_bytes();
        for bit in 0..HELLO_LEN * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Hello::from_bytes(b).verify(&key()).is_err(), "bit {bit} flip verified");
        }
    }

    #[test]
    fn other_key_is_rejected() {
        let other = AuthKey::new(&KAuth::new([0x12; 32]));
        assert!(sample().verify(&other).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", sample()), "Hello([redacted])");
    }

    proptest! {
        #[test]
        fn parse_serialize_round_trip(bytes in any::<[u8; 16]>()) {
            let h = Hello::parse(&bytes).expect("16 bytes");
            prop_assert_eq!(h.to_bytes(), bytes);
        }

        #[test]
        fn build_then_verify(k in any::<[u8; 32]>(), ecc in any::<u8>(), ebid in any::<[u8; 8]>(), t in any::<u32>()) {
            let key = AuthKey::new(&KAuth::new(k));
            let h = Hello::build(&key, Ecc::new(ecc), Ebid::new(ebid), NtpTime::new(t));
            prop_assert_eq!(h.time(), NtpTime::new(t).t16());
            prop_assert!(Hello::parse(&h.to_bytes()).expect("16").verify(&key).is_ok());
            prop_assert!(h.check_delta(NtpTime::new(t), 1).is_ok());
        }
    }
}
