//! What an API key looks like and how it is stored: `fmk_<id>_<secret>`, where `id` (12 hex
//! digits) names the key in lists and logs and `secret` is 32 bytes from the OS's random source
//! (64 hex digits). Only the SHA-256 of the whole key is stored.
//!
//! Why a plain SHA-256 and not a password hash (argon2, bcrypt): a key carries 256 random bits,
//! so nobody holding the database can guess it back from its hash whatever the hash's speed;
//! slow hashes protect low-entropy passwords and would only add milliseconds to every request.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every key, so a key is recognisable in a file or a leaked paste.
pub const PREFIX: &str = "fmk_";
/// Hex digits of the public id.
const ID_HEX: usize = 12;
/// Hex digits of the secret.
const SECRET_HEX: usize = 64;

/// A freshly made key: the text handed to its owner once, and what is stored.
#[derive(Clone)]
pub struct NewKey {
    /// The public id.
    pub id: String,
    /// The whole key, shown once.
    pub key: String,
    /// SHA-256 of the whole key.
    pub hash: [u8; 32],
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "NewKey({})", self.id)
    }
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

impl NewKey {
    /// Makes a key from the operating system's random source.
    pub fn generate() -> Result<Self, RandomError> {
        let mut id = [0u8; ID_HEX / 2];
        let mut secret = [0u8; SECRET_HEX / 2];
        getrandom::fill(&mut id).map_err(|err| RandomError(err.to_string()))?;
        getrandom::fill(&mut secret).map_err(|err| RandomError(err.to_string()))?;
        let id = hex(&id);
        let key = format!("{PREFIX}{id}_{}", hex(&secret));
        let hash = digest(key.as_bytes());
        Ok(Self { id, key, hash })
    }
}

/// The public id of a well-formed key, `None` for anything else.
pub fn key_id(key: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(key).ok()?;
    let rest = text.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_only = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    (id.len() == ID_HEX && secret.len() == SECRET_HEX && hex_only(id) && hex_only(secret))
        .then_some(id)
}

/// SHA-256 of `key`.
pub fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Whether `key` hashes to `stored`, compared in constant time.
pub fn matches(key: &[u8], stored: &[u8]) -> bool {
    bool::from(digest(key).as_slice().ct_eq(stored))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_well_formed_matches_its_hash_and_is_never_printed() {
        let new = NewKey::generate().expect("random");
        assert_eq!(key_id(new.key.as_bytes()), Some(new.id.as_str()));
        assert!(matches(new.key.as_bytes(), &new.hash));
        let mut other = new.key.clone().into_bytes();
        let last = other.len() - 1;
        other[last] = if other[last] == b'0' { b'1' } else { b'0' };
        assert!(!matches(&other, &new.hash));
        assert!(!format!("{new:?}").contains(&new.key[16..]));
        let second = NewKey::generate().expect("random");
        assert_ne!(new.key, second.key, "keys are random");
    }

    #[test]
    fn malformed_keys_have_no_id() {
        assert_eq!(key_id(b""), None);
        assert_eq!(key_id(b"fmk_abc_def"), None);
        assert_eq!(
            key_id(format!("fmk_{}_{}", "g".repeat(12), "0".repeat(64)).as_bytes()),
            None
        );
        assert_eq!(
            key_id(format!("fmk_{}_{}", "a".repeat(12), "0".repeat(64)).as_bytes()),
            Some("aaaaaaaaaaaa")
        );
    }
}
