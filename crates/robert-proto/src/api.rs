//! The JSON bodies of the HTTP API v1 (DESIGN §4), shared by the server and the App SDK so that
//! both sides agree on them by construction. Binary fields are standard base64 with padding and
//! travel as `String`s: they are decoded by the `to_*` methods, whose [`DecodeError`] names the
//! field (for `400` problem documents), never its content.

use crate::hello::Hello;
use crate::keys::PublicKey;
use crate::pow;
use crate::request::AuthRequest;
use crate::upload::UploadRecord;
use crate::{DecodeError, NtpTime};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Standard base64 with padding.
pub fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64; the error names `what`.
pub fn b64_decode(what: &'static str, s: &str) -> Result<Vec<u8>, DecodeError> {
    STANDARD.decode(s).map_err(|_| DecodeError::Base64 { what })
}

/// `GET /api/v1/clock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClockResponse {
    /// `T_pstart`, NTP seconds.
    pub service_start_ntp: u32,
    /// `epoch_duration_sec`.
    pub epoch_duration_sec: u32,
    /// The server's current epoch.
    pub current_epoch: u32,
    /// The server's current time, NTP seconds.
    pub ntp_time: u32,
}

/// `GET /api/v1/server-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerKeyResponse {
    /// pk_S, SEC1 uncompressed, base64.
    pub public_key: String,
}

/// `POST /api/v1/register/challenge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeResponse {
    /// Opaque challenge bytes, base64 (at most 64 bytes).
    pub challenge: String,
    /// Leading zero bits required of `SHA-256(challenge ‖ solution)`.
    pub difficulty: u8,
    /// When the challenge stops being accepted, NTP seconds.
    pub expires_ntp: u32,
}

/// `POST /api/v1/register` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// The challenge, as received, base64.
    pub challenge: String,
    /// The 8-byte solution, base64.
    pub solution: String,
    /// pke_A, SEC1 uncompressed, base64.
    pub client_public_key: String,
}

impl RegisterRequest {
    /// Decodes the fields (§3.3), in the order the server checks them: `challenge`, `solution`
    /// and `clientPublicKey` are base64; the challenge is exactly `challenge_len` bytes (the
    /// server's own format, at most [`pow::MAX_CHALLENGE_LEN`]), the solution
    /// [`pow::SOLUTION_LEN`], the key a P-256 point (SEC1 uncompressed). Whether the challenge is
    /// the server's, unexpired and solved is the server's check, on the decoded value.
    pub fn decode(&self, challenge_len: usize) -> Result<Registration, DecodeError> {
        let challenge = b64_decode("challenge", &self.challenge)?;
        let solution = b64_decode("solution", &self.solution)?;
        let client = b64_decode("clientPublicKey", &self.client_public_key)?;
        DecodeError::check_len("challenge", challenge_len.min(pow::MAX_CHALLENGE_LEN), challenge.len())?;
        let solution: [u8; pow::SOLUTION_LEN] = solution.as_slice().try_into().map_err(|_| {
            DecodeError::Length { what: "solution", expected: pow::SOLUTION_LEN, got: solution.len() }
        })?;
        let client_public_key = PublicKey::parse("clientPublicKey", &client)?;
        Ok(Registration { challenge, solution, client_public_key })
    }
}

/// A [`RegisterRequest`] whose fields decoded.
#[derive(Debug)]
pub struct Registration {
    /// The challenge bytes (of the length the server asked for).
    pub challenge: Vec<u8>,
    /// The proof-of-work solution.
    pub solution: [u8; pow::SOLUTION_LEN],
    /// pke_A, a valid P-256 point.
    pub client_public_key: PublicKey,
}

/// `POST /api/v1/register` answer (`201`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    /// The current epoch `i` (§3.3).
    pub epoch: u32,
    /// `epoch_duration_sec`.
    pub epoch_duration_sec: u32,
    /// `T_pstart`.
    pub service_start_ntp: u32,
    /// `T_pstart + (i + 1) * epoch_duration_sec`.
    pub next_epoch_start_ntp: u32,
    /// The sealed EBID list, base64.
    pub ebids: String,
}

/// The body of every authenticated request: ESR, acknowledgement, unregister, delete history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthRequestBody {
    /// `EBID_{A,i}`, base64 of 8 bytes.
    pub ebid: String,
    /// `i`, the epoch of that EBID.
    pub epoch: u32,
    /// `Time`, NTP seconds.
    pub time: u32,
    /// The 32-byte MAC, base64.
    pub mac: String,
}

impl AuthRequestBody {
    /// The body of a request.
    pub fn from_request(r: &AuthRequest) -> Self {
        Self {
            ebid: b64_encode(r.ebid.as_bytes()),
            epoch: r.epoch.number(),
            time: r.time.seconds(),
            mac: b64_encode(&r.mac),
        }
    }

    /// Decodes the fields (§7 step 1).
    pub fn to_request(&self) -> Result<AuthRequest, DecodeError> {
        let ebid = b64_decode("ebid", &self.ebid)?;
        let mac = b64_decode("mac", &self.mac)?;
        AuthRequest::from_parts(&ebid, self.epoch, self.time, &mac)
    }
}

/// `POST /api/v1/status` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    /// The one bit of §7.
    pub at_risk: bool,
    /// A fresh sealed EBID list when the App's runs short (§4), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebids: Option<String>,
}

/// `POST /api/v1/status/reset` request: an authenticated request (c = 6) plus a `reset` token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResetRequestBody {
    /// The authenticated request.
    #[serde(flatten)]
    pub request: AuthRequestBody,
    /// The health authority's `reset` token (compact JWS).
    pub token: String,
}

/// One `(HELLO, Time)` pair of a declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactBody {
    /// The 16-byte HELLO, base64.
    pub hello: String,
    /// When it was received, NTP seconds.
    pub time: u32,
    /// RSSI in dB, if measured (-128..=127).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssi: Option<i32>,
}

impl ContactBody {
    /// The body of a record.
    pub fn from_record(r: &UploadRecord) -> Self {
        Self { hello: b64_encode(&r.hello.to_bytes()), time: r.time.seconds(), rssi: r.rssi.map(i32::from) }
    }

    /// Decodes the fields.
    pub fn to_record(&self) -> Result<UploadRecord, DecodeError> {
        let hello = Hello::parse(&b64_decode("hello", &self.hello)?)?;
        let rssi = match self.rssi {
            None => None,
            Some(r) => Some(i8::try_from(r).map_err(|_| DecodeError::Range { what: "rssi" })?),
        };
        Ok(UploadRecord { hello, time: NtpTime::new(self.time), rssi })
    }
}

/// `POST /api/v1/report` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportRequest {
    /// The pairs.
    pub contacts: Vec<ContactBody>,
}

/// `POST /api/v1/report` answer (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportResponse {
    /// How many pairs were durably stored.
    pub accepted: u64,
}

/// The one answer to every request that fails a protocol check (`403`, DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedBody {
    /// Always `"rejected"`.
    pub error: String,
}

impl Default for RejectedBody {
    fn default() -> Self {
        Self { error: "rejected".to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ebid, Epoch};

    #[test]
    fn auth_request_json_round_trip() {
        let r = AuthRequest {
            ebid: Ebid::new([1; 8]),
            epoch: Epoch::new(5).expect("range"),
            time: NtpTime::new(7),
            mac: [2; 32],
        };
        let json = serde_json::to_string(&AuthRequestBody::from_request(&r)).expect("serialises");
        assert_eq!(
            json,
            r#"{"ebid":"AQEBAQEBAQE=","epoch":5,"time":7,"mac":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="}"#
        );
        let back: AuthRequestBody = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.to_request().expect("valid"), r);
    }

    #[test]
    fn field_errors_name_the_field() {
        let body = AuthRequestBody { ebid: "!!".into(), epoch: 1, time: 1, mac: String::new() };
        assert_eq!(body.to_request().expect_err("bad").field(), "ebid");
        let c = ContactBody { hello: b64_encode(&[0; 16]), time: 1, rssi: Some(200) };
        assert_eq!(c.to_record().expect_err("bad").field(), "rssi");
        let c = ContactBody { hello: b64_encode(&[0; 15]), time: 1, rssi: None };
        assert_eq!(c.to_record().expect_err("bad").field(), "hello");
    }

    #[test]
    fn reset_body_is_flat() {
        let json = r#"{"ebid":"AQEBAQEBAQE=","epoch":5,"time":7,"mac":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","token":"t"}"#;
        let body: ResetRequestBody = serde_json::from_str(json).expect("parses");
        assert_eq!(body.token, "t");
        assert!(body.request.to_request().is_ok());
        let status = StatusResponse { at_risk: false, ebids: None };
        assert_eq!(serde_json::to_string(&status).expect("ser"), r#"{"atRisk":false}"#);
    }
}
