//! Authenticated requests (§7, Annex C): `EBID_{A,i} ‖ i ‖ Time ‖ MAC`, with
//! `MAC = HMAC-SHA256(K_A^auth, c ‖ EBID ‖ i ‖ Time)` and `c` the [`RequestCode`].
//!
//! On the HTTP API the four fields travel as JSON (see [`crate::api`]); [`AuthRequest::encode`] is
//! the canonical binary form (`EBID(8) ‖ i(3) ‖ Time(4) ‖ MAC(32)`, 47 bytes) used by the fuzz
//! targets, the byte-level tool and anything that needs a compact record.

use crate::mac::{AuthKey, REQUEST_MAC_LEN};
use crate::{DecodeError, Ebid, EbidCipher, Epoch, NtpTime, Rejected, RequestCode};
use core::fmt;

/// Length of [`AuthRequest::encode`]'s output.
pub const AUTH_REQUEST_LEN: usize = 8 + 3 + 4 + REQUEST_MAC_LEN;

/// A parsed authenticated request (§7 step 1). Its MAC has not been checked.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// `EBID_{A,i}`.
    pub ebid: Ebid,
    /// `i`: the epoch of that EBID as the App claims it.
    pub epoch: Epoch,
    /// `Time`: the App's NTP seconds when it sent the request.
    pub time: NtpTime,
    /// The 32-byte MAC.
    pub mac: [u8; REQUEST_MAC_LEN],
}

impl AuthRequest {
    /// Builds and MACs a request of kind `code` (App side).
    pub fn new(key: &AuthKey, code: RequestCode, ebid: Ebid, epoch: Epoch, time: NtpTime) -> Self {
        let mac = key.request_mac(code, &ebid, epoch, time);
        Self { ebid, epoch, time, mac }
    }

    /// From the wire fields; checks the lengths of the byte fields and the epoch's range.
    pub fn from_parts(ebid: &[u8], epoch: u32, time: u32, mac: &[u8]) -> Result<Self, DecodeError> {
        let ebid = Ebid::from_slice(ebid)?;
        let epoch = Epoch::try_new("epoch", epoch)?;
        let mac: [u8; REQUEST_MAC_LEN] = mac.try_into().map_err(|_| DecodeError::Length {
            what: "mac",
            expected: REQUEST_MAC_LEN,
            got: mac.len(),
        })?;
        Ok(Self { ebid, epoch, time: NtpTime::new(time), mac })
    }

    /// The canonical 47-byte form.
    pub fn encode(&self) -> [u8; AUTH_REQUEST_LEN] {
        let mut b = [0u8; AUTH_REQUEST_LEN];
        b[0..8].copy_from_slice(self.ebid.as_bytes());
        b[8..11].copy_from_slice(&self.epoch.to_be_bytes());
        b[11..15].copy_from_slice(&self.time.to_be_bytes());
        b[15..].copy_from_slice(&self.mac);
        b
    }

    /// Parses the canonical 47-byte form.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        DecodeError::check_len("request", AUTH_REQUEST_LEN, bytes.len())?;
        let ebid = Ebid::from_slice(&bytes[0..8])?;
        let epoch = Epoch::from_be_bytes([bytes[8], bytes[9], bytes[10]]);
        let time = NtpTime::from_be_bytes([bytes[11], bytes[12], bytes[13], bytes[14]]);
        let mut mac = [0u8; REQUEST_MAC_LEN];
        mac.copy_from_slice(&bytes[15..]);
        Ok(Self { ebid, epoch, time, mac })
    }

    /// §7 step 2: the request's time is within `tolerance_sec` of the server's `now`, bounds
    /// included (unlike the HELLO δ check, whose `< δ` is the spec's own strict inequality).
    pub fn check_time(&self, now: NtpTime, tolerance_sec: u32) -> Result<(), Rejected> {
        if self.time.abs_diff(now) <= tolerance_sec { Ok(()) } else { Err(Rejected) }
    }

    /// §7 steps 3–4: decrypts the EBID with K_S and checks that its epoch is the one claimed.
    /// Returns the ID it decrypts to (whether it is registered is step 5, the caller's).
    pub fn open_ebid(&self, cipher: &EbidCipher) -> Result<crate::Id, Rejected> {
        let (epoch, id) = cipher.decrypt(&self.ebid);
        if epoch == self.epoch { Ok(id) } else { Err(Rejected) }
    }

    /// §7 step 6: checks the MAC for request kind `code` in constant time. The HELLO code (1) is
    /// not a request code and never verifies.
    pub fn verify_mac(&self, key: &AuthKey, code: RequestCode) -> Result<(), Rejected> {
        if !code.is_request() {
            return Err(Rejected);
        }
        key.verify_request_mac(code, &self.ebid, self.epoch, self.time, &self.mac)
    }
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("epoch", &self.epoch)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Id, KAuth, ServerKey};
    use proptest::prelude::*;

    fn key() -> AuthKey {
        AuthKey::new(&KAuth::new([0x33; 32]))
    }

    fn sample(code: RequestCode) -> AuthRequest {
        AuthRequest::new(
            &key(),
            code,
            Ebid::new([9; 8]),
            Epoch::new(77).expect("range"),
            NtpTime::new(3_900_000_000),
        )
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let good = sample(RequestCode::StatusRequest).encode();
        for bit in 0..AUTH_REQUEST_LEN * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            let r = AuthRequest::decode(&b).expect("47 bytes");
            assert!(r.verify_mac(&key(), RequestCode::StatusRequest).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn cross_code_never_verifies() {
        for a in RequestCode::ALL.into_iter().filter(|c| c.is_request()) {
            let r = sample(a);
            for b in RequestCode::ALL {
                assert_eq!(r.verify_mac(&key(), b).is_ok(), a == b, "{a:?} vs {b:?}");
            }
        }
        // A request MACed with the HELLO code is refused even under that code.
        assert!(sample(RequestCode::Hello).verify_mac(&key(), RequestCode::Hello).is_err());
    }

    #[test]
    fn from_parts_names_the_bad_field() {
        let e = AuthRequest::from_parts(&[0; 7], 1, 1, &[0; 32]).expect_err("short ebid");
        assert_eq!(e.field(), "ebid");
        let e = AuthRequest::from_parts(&[0; 8], 1 << 24, 1, &[0; 32]).expect_err("big epoch");
        assert_eq!(e.field(), "epoch");
        let e = AuthRequest::from_parts(&[0; 8], 1, 1, &[0; 31]).expect_err("short mac");
        assert_eq!(e.field(), "mac");
        assert!(AuthRequest::decode(&[0; 46]).is_err());
    }

    #[test]
    fn time_and_epoch_checks() {
        let cipher = EbidCipher::new(&ServerKey::new([5; 24]));
        let epoch = Epoch::new(10).expect("range");
        let id = Id::new(12345).expect("range");
        let t = NtpTime::new(3_900_000_000);
        let r = AuthRequest::new(&key(), RequestCode::StatusRequest, cipher.encrypt(epoch, id), epoch, t);
        assert_eq!(r.open_ebid(&cipher), Ok(id));
        let mut wrong = r.clone();
        wrong.epoch = Epoch::new(11).expect("range");
        assert_eq!(wrong.open_ebid(&cipher), Err(Rejected));
        assert!(r.check_time(NtpTime::new(3_900_000_030), 30).is_ok());
        assert!(r.check_time(NtpTime::new(3_900_000_031), 30).is_err());
        assert!(r.check_time(NtpTime::new(3_899_999_969), 30).is_err());
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(bytes in proptest::collection::vec(any::<u8>(), AUTH_REQUEST_LEN)) {
            let r = AuthRequest::decode(&bytes).expect("47 bytes");
            prop_assert_eq!(r.encode().to_vec(), bytes);
        }
    }
}
