//! X25519 key pairs and the text form of public keys.
//!
//! NSM's WIREGUARD mechanism carries public keys in `src_public_key` / `dst_public_key` as the standard
//! base64 of the 32 key bytes (44 characters with one `=`), exactly as `wg pubkey` prints them. Private
//! keys never leave the forwarder that made them: [`KeyPair`] does not print or export its secret.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;

use super::WireguardError;

/// A WireGuard (X25519) public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl FromStr for PublicKey {
    type Err = WireguardError;

    /// Parses the standard base64 of 32 bytes (as `wg pubkey` prints); surrounding blanks are ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| WireguardError::BadKey {
            text: text.to_string(),
            reason,
        };
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| bad(format!("not standard base64 ({e})")))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| bad(format!("{} bytes, a key has 32", b.len())))?;
        Ok(Self(key))
    }
}

impl fmt::Display for PublicKey {
    /// Standard base64, the form NSM's mechanism parameters carry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A private key and its public key. The private key is only handed to the link's tunnel.
#[derive(Clone)]
pub struct KeyPair {
    secret: x25519::StaticSecret,
    public: PublicKey,
}

impl KeyPair {
    /// A fresh key pair from the kernel's random source (NSM makes one per connection).
    pub fn generate() -> Result<Self, WireguardError> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(WireguardError::KeyGeneration)?;
        Ok(Self::from_secret_bytes(bytes))
    }

    /// The key pair of a given private key (clamped as X25519 requires). For tests and key files.
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = x25519::StaticSecret::from(bytes);
        let public = PublicKey(x25519::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// The public key, to put in the mechanism's `src_public_key` / `dst_public_key`.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn secret(&self) -> x25519::StaticSecret {
        self.secret.clone()
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_through_base64() {
        let pair = KeyPair::generate().unwrap();
        let text = pair.public().to_string();
        assert_eq!(text.len(), 44);
        assert!(text.ends_with('='));
        assert_eq!(text.parse::<PublicKey>().unwrap(), pair.public());
        assert_eq!(
            format!(" {text}\n").parse::<PublicKey>().unwrap(),
            pair.public()
        );
    }

    #[test]
    fn known_vector_matches_wg_pubkey() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let secret: [u8; 32] = STANDARD
            .decode("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")
            .unwrap()
            .try_into()
            .unwrap();
        let pair = KeyPair::from_secret_bytes(secret);
        assert_eq!(
            pair.public().to_string(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn two_generated_pairs_differ() {
        assert_ne!(
            KeyPair::generate().unwrap().public(),
            KeyPair::generate().unwrap().public()
        );
    }

    #[test]
    fn bad_text_is_refused_with_the_reason() {
        for (text, want) in [
            ("", "0 bytes"),
            ("not base64!", "not standard base64"),
            ("AAAA", "3 bytes"),
            (
                "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo=",
                "not standard base64",
            ),
            // 44 characters, but 33 bytes.
            ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "33 bytes"),
        ] {
            let err = text.parse::<PublicKey>().unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("bad WireGuard public key"), "{err}");
        }
    }

    #[test]
    fn debug_does_not_show_the_private_key() {
        let secret = [7u8; 32];
        let shown = format!("{:?}", KeyPair::from_secret_bytes(secret));
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains(&STANDARD.encode(secret)));
    }
}
