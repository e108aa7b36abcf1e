//! Errors of the protocol core.
//!
//! Two kinds, kept apart on purpose:
//! - [`DecodeError`]: bytes that do not have the shape of the protocol item (wrong length, value out of
//!   range). It names the item, never its content, so it may be shown to the peer that sent it.
//! - [`Rejected`]: a well-formed item that fails a cryptographic or protocol check (MAC, δ, epoch,
//!   AEAD tag). It carries no detail at all, so that every such failure looks the same to a peer
//!   (spec §6.2 and §7 "silently rejected").

use core::fmt;

/// A byte string or number that does not decode to the protocol item it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The item has the wrong number of bytes.
    #[error("{what}: expected {expected} bytes, got {got}")]
    Length {
        /// Name of the item (a field name, never its value).
        what: &'static str,
        /// Expected length, in bytes.
        expected: usize,
        /// Actual length, in bytes.
        got: usize,
    },
    /// The item's value is outside its domain (a 24-bit epoch above 2^24 - 1, say).
    #[error("{what}: value out of range")]
    Range {
        /// Name of the item.
        what: &'static str,
    },
    /// The item is not valid base64 (standard alphabet, with padding).
    #[error("{what}: not valid base64")]
    Base64 {
        /// Name of the item.
        what: &'static str,
    },
    /// The item's bytes do not have the item's layout (a length that is no whole number of
    /// entries, say).
    #[error("{what}: {reason}")]
    Layout {
        /// Name of the item.
        what: &'static str,
        /// What is wrong, in a fixed phrase.
        reason: &'static str,
    },
    /// The item is not a valid key of its kind (a point not on P-256, say).
    #[error("{what}: not a valid key")]
    Key {
        /// Name of the item.
        what: &'static str,
    },
}

impl DecodeError {
    /// Returns `Ok(())` if `got == expected`, else a [`DecodeError::Length`].
    pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), Self> {
        if got == expected { Ok(()) } else { Err(Self::Length { what, expected, got }) }
    }

    /// The name of the item that failed to decode (for problem documents).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Length { what, .. }
            | Self::Range { what }
            | Self::Base64 { what }
            | Self::Layout { what, .. }
            | Self::Key { what } => what,
        }
    }
}

/// A protocol check failed. Deliberately opaque: see the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Rejected;

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rejected")
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rejected")
    }
}

impl core::error::Error for Rejected {}
