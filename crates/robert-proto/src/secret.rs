//! Secrets as types (STYLE §7): never `Copy`, `Debug` prints `[redacted]`, zeroized on drop,
//! compared in constant time. Turning one into bytes is explicit (`expose_secret`) and rare.

use core::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// `N` secret bytes. The building block of every named key type below.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes<const N: usize>([u8; N]);

impl<const N: usize> SecretBytes<N> {
    /// Takes ownership of `bytes` (the caller should zeroize its own copies).
    pub fn new(bytes: [u8; N]) -> Self {
        Self(bytes)
    }

    /// Copies `bytes` if it has exactly `N` bytes.
    pub fn from_slice(what: &'static str, bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        crate::DecodeError::check_len(what, N, bytes.len())?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(Self(out))
    }

    /// Draws `N` bytes from a cryptographic RNG.
    pub fn random(rng: &mut (impl rand_core::CryptoRng + ?Sized)) -> Self {
        let mut out = [0u8; N];
        rng.fill_bytes(&mut out);
        Self(out)
    }

    /// The secret bytes. Every call site is a place where a secret leaves its type: keep them few.
    pub fn expose_secret(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> fmt::Debug for SecretBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<const N: usize> ConstantTimeEq for SecretBytes<N> {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl<const N: usize> PartialEq for SecretBytes<N> {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl<const N: usize> Eq for SecretBytes<N> {}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, ZeroizeOnDrop)]
        pub struct $name(SecretBytes<$len>);

        impl $name {
            /// Length of the key in bytes.
            pub const LEN: usize = $len;

            /// Wraps key bytes.
            pub fn new(bytes: [u8; $len]) -> Self {
                Self(SecretBytes::new(bytes))
            }

            /// Copies key bytes from a slice of exactly the right length.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
                SecretBytes::from_slice(stringify!($name), bytes).map(Self)
            }

            /// A fresh random key.
            pub fn random(rng: &mut (impl rand_core::CryptoRng + ?Sized)) -> Self {
                Self(SecretBytes::random(rng))
            }

            /// The key bytes (for storage under a key-encryption key, or for a crypto primitive).
            pub fn expose_secret(&self) -> &[u8; $len] {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> subtle::Choice {
                self.0.ct_eq(&other.0)
            }
        }
    };
}

secret_key!(
    /// `K_A^auth` (§3.2): shared by App A and the server, authenticates A's HELLOs and requests.
    KAuth,
    32
);
secret_key!(
    /// `K_A^enc` (§3.2): shared by App A and the server, encrypts the EBID lists sent to A.
    KEnc,
    32
);
secret_key!(
    /// `K_S` (§3.1): the server key of one day; the SKINNY-64/192 key that makes EBIDs (192 bits).
    ServerKey,
    24
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = KAuth::new([0xab; 32]);
        let s = format!("{k:?}");
        assert_eq!(s, "KAuth([redacted])");
        assert!(!s.contains("ab"));
        assert_eq!(format!("{:?}", SecretBytes::new([0x42u8; 4])), "[redacted]");
    }

    #[test]
    fn equality_is_by_value() {
        assert_eq!(KEnc::new([1; 32]), KEnc::new([1; 32]));
        assert_ne!(KEnc::new([1; 32]), KEnc::new([2; 32]));
        assert!(bool::from(ServerKey::new([3; 24]).ct_eq(&ServerKey::new([3; 24]))));
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(KAuth::from_slice(&[0; 31]).is_err());
        assert!(KAuth::from_slice(&[0; 32]).is_ok());
    }
}
