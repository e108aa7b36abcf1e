//! Protocol newtypes (STYLE §6): no bare `u32` or `[u8; 8]` crosses a module boundary.
//!
//! All multi-byte integers are big-endian on the wire (DESIGN §3).

use crate::DecodeError;
use core::fmt;

/// Seconds between the NTP era-0 origin (1900-01-01) and the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A time as the 32-bit NTP "Seconds" value of era 0 (§2.2): seconds since 1900-01-01 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NtpTime(u32);

impl NtpTime {
    /// Wraps an NTP seconds value.
    pub const fn new(seconds: u32) -> Self {
        Self(seconds)
    }

    /// The NTP seconds value.
    pub const fn seconds(self) -> u32 {
        self.0
    }

    /// Converts Unix seconds; `None` before 1970 or past the end of NTP era 0 (2036-02-07).
    pub fn from_unix(unix_seconds: u64) -> Option<Self> {
        u32::try_from(unix_seconds.checked_add(NTP_UNIX_OFFSET)?).ok().map(Self)
    }

    /// Unix seconds (NTP era 0 times before 1970 saturate to 0).
    pub fn to_unix(self) -> u64 {
        u64::from(self.0).saturating_sub(NTP_UNIX_OFFSET)
    }

    /// `TRUNC_16`: the 16 low bits, as broadcast in a HELLO (§5.1).
    pub const fn t16(self) -> Time16 {
        Time16(self.0 as u16)
    }

    /// Big-endian bytes.
    pub const fn to_be_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    /// From big-endian bytes.
    pub const fn from_be_bytes(bytes: [u8; 4]) -> Self {
        Self(u32::from_be_bytes(bytes))
    }

    /// `self + seconds`, `None` on overflow.
    pub fn checked_add(self, seconds: u32) -> Option<Self> {
        self.0.checked_add(seconds).map(Self)
    }

    /// `self - seconds`, `None` on underflow.
    pub fn checked_sub(self, seconds: u32) -> Option<Self> {
        self.0.checked_sub(seconds).map(Self)
    }

    /// `|self - other|` in seconds.
    pub fn abs_diff(self, other: Self) -> u32 {
        self.0.abs_diff(other.0)
    }
}

/// The 16 low bits of an NTP seconds value: the HELLO `Time` field (§5.1). It wraps every 2^16 s
/// (a little over 18 h), so it only ever compares modulo 2^16 (see [`Time16::within_delta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Time16(u16);

impl Time16 {
    /// Wraps a 16-bit time.
    pub const fn new(value: u16) -> Self {
        Self(value)
    }

    /// The 16-bit value.
    pub const fn value(self) -> u16 {
        self.0
    }

    /// Distance modulo 2^16: `min((a - b) mod 2^16, (b - a) mod 2^16)`, in `0..=32768`.
    pub const fn wrapping_distance(self, other: Self) -> u16 {
        let d = self.0.wrapping_sub(other.0);
        let e = other.0.wrapping_sub(self.0);
        if d < e { d } else { e }
    }

    /// The δ check of §5.2 step 3 and §6.2 step 2: `|time - TRUNC16(reference)| < delta`, with the
    /// difference taken modulo 2^16 so that a HELLO sent just before the 16-bit counter wraps is
    /// accepted just after. Footnote 9: this cannot detect a replay 2^16 s later; the server's epoch
    /// check (§6.2 step 6) does.
    pub const fn within_delta(self, reference: NtpTime, delta_sec: u16) -> bool {
        self.wrapping_distance(reference.t16()) < delta_sec
    }
}

/// An epoch number `i` (§2.2, §3.1): 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(u32);

impl Epoch {
    /// The largest epoch a 24-bit counter holds.
    pub const MAX: Epoch = Epoch(0x00FF_FFFF);

    /// `Some` if `value` fits in 24 bits.
    pub const fn new(value: u32) -> Option<Self> {
        if value <= Self::MAX.0 { Some(Self(value)) } else { None }
    }

    /// Like [`Epoch::new`], with a [`DecodeError`] naming the field.
    pub fn try_new(what: &'static str, value: u32) -> Result<Self, DecodeError> {
        Self::new(value).ok_or(DecodeError::Range { what })
    }

    /// The epoch number.
    pub const fn number(self) -> u32 {
        self.0
    }

    /// The 3 big-endian bytes of the epoch.
    pub const fn to_be_bytes(self) -> [u8; 3] {
        let b = self.0.to_be_bytes();
        [b[1], b[2], b[3]]
    }

    /// From 3 big-endian bytes (always in range).
    pub const fn from_be_bytes(b: [u8; 3]) -> Self {
        Self(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// `self + n`, `None` past [`Epoch::MAX`].
    pub fn checked_add(self, n: u32) -> Option<Self> {
        self.0.checked_add(n).and_then(Self::new)
    }

    /// `self - n`, `None` below 0.
    pub fn checked_sub(self, n: u32) -> Option<Self> {
        self.0.checked_sub(n).map(Self)
    }

    /// `|self - other|`.
    pub const fn abs_diff(self, other: Self) -> u32 {
        self.0.abs_diff(other.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `ID_A` (§3.2): a user's permanent 40-bit identifier, known only to the server. Its `Debug` does
/// not print the value: IDs must never reach a log.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(u64);

impl Id {
    /// The largest 40-bit ID.
    pub const MAX: u64 = (1 << 40) - 1;

    /// `Some` if `value` fits in 40 bits.
    pub const fn new(value: u64) -> Option<Self> {
        if value <= Self::MAX { Some(Self(value)) } else { None }
    }

    /// The 40-bit value.
    pub const fn value(self) -> u64 {
        self.0
    }

    /// The 5 big-endian bytes.
    pub const fn to_be_bytes(self) -> [u8; 5] {
        let b = self.0.to_be_bytes();
        [b[3], b[4], b[5], b[6], b[7]]
    }

    /// From 5 big-endian bytes (always in range).
    pub const fn from_be_bytes(b: [u8; 5]) -> Self {
        Self(u64::from_be_bytes([0, 0, 0, b[0], b[1], b[2], b[3], b[4]]))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Id([redacted])")
    }
}

/// `EBID_{A,i}` (§4): 64 bits, `SKINNY-64/192(K_S, i ‖ ID_A)`. Broadcast in the clear, but still an
/// identifier: its `Debug` does not print it, so it cannot end up in a log by accident.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ebid([u8; 8]);

impl Ebid {
    /// Wraps 8 bytes.
    pub const fn new(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }

    /// From a slice of exactly 8 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        <[u8; 8]>::try_from(bytes).map(Self).map_err(|_| DecodeError::Length {
            what: "ebid",
            expected: 8,
            got: bytes.len(),
        })
    }

    /// The 8 bytes.
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// The 8 bytes, borrowed.
    pub const fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Debug for Ebid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ebid([redacted])")
    }
}

/// A country code `CC` (§3.1, §8): 8 bits, agreed between federated countries (France 33, Germany 49).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode(u8);

impl CountryCode {
    /// Wraps a code.
    pub const fn new(code: u8) -> Self {
        Self(code)
    }

    /// The code.
    pub const fn value(self) -> u8 {
        self.0
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `ECC_{A,i}` (§4): the country code encrypted under K_G with the EBID as IV. See [`crate::ecc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ecc(u8);

impl Ecc {
    /// Wraps the byte.
    pub const fn new(byte: u8) -> Self {
        Self(byte)
    }

    /// The byte.
    pub const fn value(self) -> u8 {
        self.0
    }
}

/// The constant `c` that separates the MACs of the protocol's messages (§5.1, §7, Annex C).
///
/// Codes 1–4 are the spec's; 5 and 6 are this implementation's extensions (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RequestCode {
    /// 0x01: the MAC of a HELLO message (§5.1).
    Hello = 0x01,
    /// 0x02: Exposure Status Request (§7).
    StatusRequest = 0x02,
    /// 0x03: unregister (Annex C).
    Unregister = 0x03,
    /// 0x04: delete history (Annex C).
    DeleteHistory = 0x04,
    /// 0x05: acknowledgement of an `atRisk: true` ESR reply (§7 "App replies with an ACK").
    StatusAck = 0x05,
    /// 0x06: reset of UN_A after a negative test (§3.2, UN_A "can be reset").
    StatusReset = 0x06,
}

impl RequestCode {
    /// Every code, in numeric order.
    pub const ALL: [RequestCode; 6] = [
        Self::Hello,
        Self::StatusRequest,
        Self::Unregister,
        Self::DeleteHistory,
        Self::StatusAck,
        Self::StatusReset,
    ];

    /// The byte `c`.
    pub const fn byte(self) -> u8 {
        self as u8
    }

    /// The code for a byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.byte() == byte)
    }

    /// True for the codes of authenticated requests (everything but the HELLO MAC).
    pub const fn is_request(self) -> bool {
        !matches!(self, Self::Hello)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_unix_conversion() {
        // 2020-05-31 00:00:00 UTC, the spec's date: unix 1590883200.
        let t = NtpTime::from_unix(1_590_883_200).expect("in era 0");
        assert_eq!(t.seconds(), 1_590_883_200 + 2_208_988_800);
        assert_eq!(t.to_unix(), 1_590_883_200);
        assert!(NtpTime::from_unix(u64::from(u32::MAX)).is_none());
        assert_eq!(t.t16().value(), (t.seconds() & 0xffff) as u16);
    }

    #[test]
    fn delta_check_wraps_around() {
        let reference = NtpTime::new(0x1234_0002);
        assert!(Time16::new(0x0001).within_delta(reference, 5));
        assert!(Time16::new(0xfffe).within_delta(reference, 5)); // across the wrap
        assert!(!Time16::new(0xfffd).within_delta(reference, 5)); // distance exactly 5 is not < 5
        assert!(!Time16::new(0x8002).within_delta(reference, 5));
        assert!(!Time16::new(0x0002).within_delta(reference, 0));
        // A replay exactly 2^16 s later passes the δ check: footnote 9, caught by the epoch check.
        let later = NtpTime::new(0x1235_0002);
        assert!(reference.t16().within_delta(later, 1));
    }

    #[test]
    fn epoch_and_id_ranges() {
        assert!(Epoch::new(0xff_ffff).is_some());
        assert!(Epoch::new(0x100_0000).is_none());
        let e = Epoch::new(0x12_3456).expect("24 bits");
        assert_eq!(e.to_be_bytes(), [0x12, 0x34, 0x56]);
        assert_eq!(Epoch::from_be_bytes(e.to_be_bytes()), e);
        assert!(Epoch::MAX.checked_add(1).is_none());
        assert!(Id::new(1 << 40).is_none());
        let id = Id::new(0x01_0203_0405).expect("40 bits");
        assert_eq!(id.to_be_bytes(), [1, 2, 3, 4, 5]);
        assert_eq!(Id::from_be_bytes(id.to_be_bytes()), id);
        assert_eq!(format!("{id:?}"), "Id([redacted])");
        assert_eq!(format!("{:?}", Ebid::new([7; 8])), "Ebid([redacted])");
    }

    #[test]
    fn request_codes_are_distinct() {
        for (i, c) in RequestCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(c.byte()), i + 1);
            assert_eq!(RequestCode::from_byte(c.byte()), Some(*c));
        }
        assert_eq!(RequestCode::from_byte(0), None);
        assert_eq!(RequestCode::from_byte(7), None);
    }
}
