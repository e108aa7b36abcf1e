//! Upload records (§6.1, DESIGN §3): `HELLO(16) ‖ Time(4)`, optionally followed by the RSSI (one
//! signed byte, dB) that the receiving App measured (§5.2 footnote 10). `Time` is the NTP seconds
//! at which the uploading App received the HELLO.

use crate::{DecodeError, Hello, NtpTime};
use core::fmt;

/// Length of a record without RSSI.
pub const RECORD_LEN: usize = 16 + 4;
/// Length of a record with RSSI.
pub const RECORD_WITH_RSSI_LEN: usize = RECORD_LEN + 1;

/// One `(HELLO, Time)` pair of a LocalProximityList, as uploaded (§6.1) and processed (§6.2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UploadRecord {
    /// The HELLO as received.
    pub hello: Hello,
    /// `Time`: when it was received, NTP seconds.
    pub time: NtpTime,
    /// Received signal strength, dB, if the App measured it.
    pub rssi: Option<i8>,
}

impl UploadRecord {
    /// The 20- or 21-byte encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_WITH_RSSI_LEN);
        out.extend_from_slice(&self.hello.to_bytes());
        out.extend_from_slice(&self.time.to_be_bytes());
        if let Some(r) = self.rssi {
            out.extend_from_slice(&r.to_be_bytes());
        }
        out
    }

    /// Parses a 20- or 21-byte record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let rssi = match bytes.len() {
            RECORD_LEN => None,
            RECORD_WITH_RSSI_LEN => Some(i8::from_be_bytes([bytes[RECORD_LEN]])),
            _ => return Err(DecodeError::Layout { what: "record", reason: "a record is 20 or 21 bytes" }),
        };
        let hello = Hello::parse(&bytes[..16])?;
        let time = NtpTime::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        Ok(Self { hello, time, rssi })
    }
}

impl fmt::Debug for UploadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadRecord")
            .field("time", &self.time)
            .field("rssi", &self.rssi)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(h in any::<[u8; 16]>(), t in any::<u32>(), rssi in proptest::option::of(any::<i8>())) {
            let r = UploadRecord { hello: Hello::from_bytes(h), time: NtpTime::new(t), rssi };
            let bytes = r.encode();
            prop_assert_eq!(bytes.len(), if rssi.is_some() { 21 } else { 20 });
            prop_assert_eq!(UploadRecord::decode(&bytes).expect("valid"), r);
        }

        #[test]
        fn other_lengths_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let ok = UploadRecord::decode(&bytes).is_ok();
            prop_assert_eq!(ok, bytes.len() == 20 || bytes.len() == 21);
        }
    }

    #[test]
    fn rssi_is_signed() {
        let r = UploadRecord { hello: Hello::from_bytes([0; 16]), time: NtpTime::new(1), rssi: Some(-70) };
        assert_eq!(r.encode()[20], 0xba);
    }
}
