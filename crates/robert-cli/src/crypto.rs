//! `robert crypto …`: the protocol's byte formats one operation at a time (DESIGN §5), so that an
//! auditor can check any EBID, ECC, HELLO or MAC by hand against the spec or another implementation.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use robert_proto::skinny::Skinny64_192;
use robert_proto::{
    AuthKey, CountryCode, Ebid, EbidCipher, Ecc, Epoch, FederationKey, Hello, Id, KAuth, NtpTime,
    RequestCode, ServerKey,
};
use serde_json::json;
use std::io::Write;
use zeroize::Zeroizing;

/// Arguments of `robert crypto`.
#[derive(Debug, Args)]
pub struct CryptoArgs {
    /// Print one JSON object instead of bare lowercase hex.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    op: Op,
}

#[derive(Debug, Subcommand)]
enum Op {
    /// SKINNY-64/192 on one 64-bit block (§4).
    Skinny {
        /// The 192-bit key: 48 hex digits (TK1 ‖ TK2 ‖ TK3).
        #[arg(long)]
        key: String,
        /// The 64-bit block: 16 hex digits.
        #[arg(long)]
        block: String,
        /// Decrypt instead of encrypt.
        #[arg(long)]
        decrypt: bool,
    },
    /// EBID = SKINNY-64/192(K_S, epoch(3) ‖ ID(5)) (§4).
    Ebid {
        /// K_S: 48 hex digits.
        #[arg(long)]
        ks: String,
        /// The epoch number, decimal (< 2^24).
        #[arg(long)]
        epoch: u32,
        /// ID_A: a 40-bit number, decimal or 0x-prefixed hex.
        #[arg(long)]
        id: String,
    },
    /// ECC = AES(K_G, EBID ‖ 0^64)[0] XOR CC (§4); K_G's length picks AES-128/192/256.
    Ecc {
        /// K_G: 32, 48 or 64 hex digits.
        #[arg(long)]
        kg: String,
        /// The EBID: 16 hex digits.
        #[arg(long)]
        ebid: String,
        /// The country code, decimal (0–255).
        #[arg(long)]
        cc: u8,
    },
    /// HELLO = ECC ‖ EBID ‖ t16 ‖ HMAC-SHA256(K_auth, 0x01 ‖ ECC ‖ EBID ‖ t16)[0..5] (§5.1).
    Hello {
        /// K_auth: 64 hex digits.
        #[arg(long)]
        kauth: String,
        /// The ECC: 2 hex digits.
        #[arg(long)]
        ecc: String,
        /// The EBID: 16 hex digits.
        #[arg(long)]
        ebid: String,
        /// The sending time, NTP seconds (decimal); its low 16 bits go in the HELLO.
        #[arg(long)]
        ntp_time: u32,
    },
    /// Authenticated-request MAC = HMAC-SHA256(K_auth, c ‖ EBID ‖ epoch(3) ‖ time(4)) (§7, Annex C).
    RequestMac {
        /// K_auth: 64 hex digits.
        #[arg(long)]
        kauth: String,
        /// The request code c: 2 ESR, 3 unregister, 4 delete history, 5 ESR ack, 6 status reset.
        #[arg(long)]
        code: u8,
        /// The EBID: 16 hex digits.
        #[arg(long)]
        ebid: String,
        /// The EBID's epoch, decimal (< 2^24).
        #[arg(long)]
        epoch: u32,
        /// The request time, NTP seconds (decimal).
        #[arg(long)]
        ntp_time: u32,
    },
    /// Splits a 16-byte HELLO into its fields (§5.2 step 1).
    DecodeHello {
        /// The HELLO: 32 hex digits.
        hello: String,
    },
}

/// Parses `hex` as exactly `N` bytes, naming the flag in errors.
fn hex_array<const N: usize>(flag: &str, hex: &str) -> Result<[u8; N]> {
    let bytes = Zeroizing::new(hex::decode(hex.trim()).with_context(|| format!("{flag}: not valid hex"))?);
    bytes.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!("{flag}: expected {N} bytes ({} hex digits), got {} bytes", 2 * N, bytes.len())
    })
}

fn parse_epoch(n: u32) -> Result<Epoch> {
    Epoch::new(n)
        .with_context(|| format!("--epoch: {n} does not fit in 24 bits (max {})", Epoch::MAX.number()))
}

fn parse_id(s: &str) -> Result<Id> {
    let s = s.trim();
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    }
    .with_context(|| format!("--id: {s:?} is not a decimal or 0x-prefixed hex number"))?;
    Id::new(v).with_context(|| format!("--id: {v} does not fit in 40 bits"))
}

fn parse_code(c: u8) -> Result<RequestCode> {
    match RequestCode::from_byte(c) {
        Some(code) if code.is_request() => Ok(code),
        _ => {
            bail!("--code: {c} is not a request code (2 ESR, 3 unregister, 4 delete history, 5 ack, 6 reset)")
        }
    }
}

/// Runs one `robert crypto` operation, writing its result to `out`.
pub fn run(args: &CryptoArgs, out: &mut impl Write) -> Result<()> {
    let value = match &args.op {
        Op::Skinny { key, block, decrypt } => {
            let key = Zeroizing::new(hex_array::<24>("--key", key)?);
            let cipher = Skinny64_192::new(&key);
            let block = hex_array::<8>("--block", block)?;
            let result = if *decrypt { cipher.decrypt_block(block) } else { cipher.encrypt_block(block) };
            let name = if *decrypt { "plaintext" } else { "ciphertext" };
            Output::One(name, hex::encode(result))
        }
        Op::Ebid { ks, epoch, id } => {
            let cipher = EbidCipher::new(&ServerKey::new(hex_array::<24>("--ks", ks)?));
            let ebid = cipher.encrypt(parse_epoch(*epoch)?, parse_id(id)?);
            Output::One("ebid", hex::encode(ebid.as_bytes()))
        }
        Op::Ecc { kg, ebid, cc } => {
            let kg_bytes = Zeroizing::new(hex::decode(kg.trim()).context("--kg: not valid hex")?);
            let key = FederationKey::new(&kg_bytes).map_err(|_| {
                anyhow::anyhow!("--kg: expected 16, 24 or 32 bytes, got {} bytes", kg_bytes.len())
            })?;
            let ebid = Ebid::new(hex_array::<8>("--ebid", ebid)?);
            let ecc = key.encrypt_country(&ebid, CountryCode::new(*cc));
            Output::One("ecc", hex::encode([ecc.value()]))
        }
        Op::Hello { kauth, ecc, ebid, ntp_time } => {
            let key = AuthKey::new(&KAuth::new(hex_array::<32>("--kauth", kauth)?));
            let [ecc] = hex_array::<1>("--ecc", ecc)?;
            let ebid = Ebid::new(hex_array::<8>("--ebid", ebid)?);
            let hello = Hello::build(&key, Ecc::new(ecc), ebid, NtpTime::new(*ntp_time));
            Output::One("hello", hex::encode(hello.to_bytes()))
        }
        Op::RequestMac { kauth, code, ebid, epoch, ntp_time } => {
            let key = AuthKey::new(&KAuth::new(hex_array::<32>("--kauth", kauth)?));
            let code = parse_code(*code)?;
            let ebid = Ebid::new(hex_array::<8>("--ebid", ebid)?);
            let mac = key.request_mac(code, &ebid, parse_epoch(*epoch)?, NtpTime::new(*ntp_time));
            Output::One("mac", hex::encode(mac))
        }
        Op::DecodeHello { hello } => {
            let h = Hello::from_bytes(hex_array::<16>("HELLO", hello)?);
            Output::Fields(vec![
                ("ecc", hex::encode([h.ecc().value()])),
                ("ebid", hex::encode(h.ebid().as_bytes())),
                ("time16", hex::encode(h.time().value().to_be_bytes())),
                ("mac", hex::encode(h.mac())),
            ])
        }
    };
    value.write(args.json, out)
}

enum Output {
    One(&'static str, String),
    Fields(Vec<(&'static str, String)>),
}

impl Output {
    fn write(self, as_json: bool, out: &mut impl Write) -> Result<()> {
        match (self, as_json) {
            (Output::One(_, v), false) => writeln!(out, "{v}")?,
            (Output::One(k, v), true) => writeln!(out, "{}", json!({ k: v }))?,
            (Output::Fields(fields), false) => {
                for (k, v) in fields {
                    writeln!(out, "{k} {v}")?;
                }
            }
            (Output::Fields(fields), true) => {
                let map: serde_json::Map<String, serde_json::Value> =
                    fields.into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
                writeln!(out, "{}", serde_json::Value::Object(map))?;
            }
        }
        Ok(())
    }
}
