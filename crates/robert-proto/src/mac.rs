//! The MACs keyed by `K_A^auth`: HELLO MAC40 (§5.1) and authenticated-request MACs (§7, Annex C).
//!
//! Both are HMAC-SHA256 over a message that starts with a one-byte code `c` ([`RequestCode`]), so a
//! MAC made for one kind of message never verifies for another. Verification is constant time.

use crate::{Ebid, Ecc, Epoch, KAuth, NtpTime, Rejected, RequestCode, Time16};
use core::fmt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of a HELLO MAC: 40 bits.
pub const MAC40_LEN: usize = 5;
/// Length of an authenticated-request MAC: the whole HMAC-SHA256 output.
pub const REQUEST_MAC_LEN: usize = 32;

/// `K_A^auth` with HMAC-SHA256's inner and outer pads precomputed: a MAC then costs two compression
/// calls instead of four. Cheap to clone; zeroized on drop.
#[derive(Clone)]
pub struct AuthKey {
    hmac: HmacSha256,
}

impl AuthKey {
    /// Pre-keys HMAC-SHA256 with K_auth.
    pub fn new(k_auth: &KAuth) -> Self {
        // HMAC accepts keys of any length; 32 bytes is always fine.
        let hmac = <HmacSha256 as KeyInit>::new_from_slice(k_auth.expose_secret())
            .expect("HMAC takes keys of any length");
        Self { hmac }
    }

    /// `HMAC-SHA256(K_auth, 0x01 ‖ ECC ‖ EBID ‖ t16)[0..5]` (§5.1).
    pub fn hello_mac(&self, ecc: Ecc, ebid: &Ebid, t16: Time16) -> [u8; MAC40_LEN] {
        let full = self.hello_hmac(ecc, ebid, t16).finalize().into_bytes();
        let mut out = [0u8; MAC40_LEN];
        out.copy_from_slice(&full[..MAC40_LEN]);
        out
    }

    /// Constant-time check of a HELLO MAC40 (§6.2 step 8).
    pub fn verify_hello_mac(
        &self,
        ecc: Ecc,
        ebid: &Ebid,
        t16: Time16,
        mac: &[u8; MAC40_LEN],
    ) -> Result<(), Rejected> {
        self.hello_hmac(ecc, ebid, t16).verify_truncated_left(mac).map_err(|_| Rejected)
    }

    /// `HMAC-SHA256(K_auth, c ‖ EBID(8) ‖ i(3) ‖ time(4))`, all 32 bytes (§7, Annex C).
    pub fn request_mac(
        &self,
        code: RequestCode,
        ebid: &Ebid,
        epoch: Epoch,
        time: NtpTime,
    ) -> [u8; REQUEST_MAC_LEN] {
        self.request_hmac(code, ebid, epoch, time).finalize().into_bytes().into()
    }

    /// Constant-time check of a request MAC (§7 step 6).
    pub fn verify_request_mac(
        &self,
        code: RequestCode,
        ebid: &Ebid,
        epoch: Epoch,
        time: NtpTime,
        mac: &[u8; REQUEST_MAC_LEN],
    ) -> Result<(), Rejected> {
        self.request_hmac(code, ebid, epoch, time).verify_slice(mac).map_err(|_| Rejected)
    }

    fn hello_hmac(&self, ecc: Ecc, ebid: &Ebid, t16: Time16) -> HmacSha256 {
        let mut msg = [0u8; 12];
        msg[0] = RequestCode::Hello.byte();
        msg[1] = ecc.value();
        msg[2..10].copy_from_slice(ebid.as_bytes());
        msg[10..12].copy_from_slice(&t16.value().to_be_bytes());
        self.hmac.clone().chain_update(msg)
    }

    fn request_hmac(&self, code: RequestCode, ebid: &Ebid, epoch: Epoch, time: NtpTime) -> HmacSha256 {
        let mut msg = [0u8; 16];
        msg[0] = code.byte();
        msg[1..9].copy_from_slice(ebid.as_bytes());
        msg[9..12].copy_from_slice(&epoch.to_be_bytes());
        msg[12..16].copy_from_slice(&time.to_be_bytes());
        self.hmac.clone().chain_update(msg)
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 checks that the pre-keyed HMAC is plain HMAC-SHA256 ("Jefe").
    #[test]
    fn rfc4231_case_2_through_prekeyed_clone() {
        let hmac = <HmacSha256 as KeyInit>::new_from_slice(b"Jefe").expect("any length");
        let out = hmac.clone().chain_update(b"what do ya want for nothing?").finalize().into_bytes();
        assert_eq!(hex::encode(out), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn request_mac_is_domain_separated_by_code() {
        let k = AuthKey::new(&KAuth::new([7; 32]));
        let ebid = Ebid::new([1; 8]);
        let epoch = Epoch::new(42).expect("range");
        let t = NtpTime::new(3_900_000_000);
        for a in RequestCode::ALL {
            let mac = k.request_mac(a, &ebid, epoch, t);
            for b in RequestCode::ALL {
                assert_eq!(k.verify_request_mac(b, &ebid, epoch, t, &mac).is_ok(), a == b);
            }
        }
    }

    #[test]
    fn debug_is_redacted() {
        let k = AuthKey::new(&KAuth::new([7; 32]));
        assert_eq!(format!("{k:?}"), "AuthKey([redacted])");
    }
}
