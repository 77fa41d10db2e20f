//! The cluster token nodes and the coordinator authenticate each other with: both directions
//! send `Authorization: Bearer <token>` (node → coordinator on registration and heartbeats,
//! coordinator → node on every job call). Comparison is constant-time (`subtle`), so the time a
//! refusal takes says nothing about how much of a guess was right.

use subtle::ConstantTimeEq;
use thiserror::Error;

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// Environment variable both binaries read the token from (a file flag takes precedence).
pub const CLUSTER_TOKEN_ENV: &str = "FLEETMAP_CLUSTER_TOKEN";

/// Why a token or a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The configured token is unusable.
    #[error("the cluster token must be at least {MIN_TOKEN_LEN} visible ASCII characters without spaces (it has {len}); generate one with `openssl rand -hex 32`")]
    BadToken {
        /// Its length.
        len: usize,
    },
    /// The request carries no `Authorization: Bearer` header.
    #[error("this route needs the cluster token: send `Authorization: Bearer <token>`, the token every node and the coordinator share (--cluster-token-file or FLEETMAP_CLUSTER_TOKEN)")]
    Missing,
    /// The request carries a token that is not the cluster's.
    #[error("the cluster token sent is wrong; give this process the same --cluster-token-file (or FLEETMAP_CLUSTER_TOKEN) as the rest of the fleet")]
    Wrong,
}

/// A validated cluster token.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken {
    token: String,
    header: String,
}

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret (configs are logged with {:?}).
        f.write_str("ClusterToken(***)")
    }
}

impl ClusterToken {
    /// Validates `token` (surrounding whitespace, e.g. a file's final newline, is trimmed).
    pub fn new(token: &str) -> Result<Self, AuthError> {
        let token = token.trim();
        let visible = token.bytes().all(|b| b.is_ascii_graphic());
        if token.len() < MIN_TOKEN_LEN || !visible {
            return Err(AuthError::BadToken { len: token.len() });
        }
        Ok(Self {
            token: token.to_owned(),
            header: format!("Bearer {token}"),
        })
    }

    /// The `Authorization` header value to send.
    pub fn header_value(&self) -> &str {
        &self.header
    }

    /// Checks an `Authorization` header value received (`None`: the header is absent).
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let Some(sent) = strip_bearer(value) else {
            return Err(AuthError::Missing);
        };
        if bool::from(sent.ct_eq(self.token.as_bytes())) {
            Ok(())
        } else {
            Err(AuthError::Wrong)
        }
    }
}

/// The credential of a `Bearer` header value (scheme case-insensitive, RFC 6750); `None` when
/// the value is not a bearer credential. Shared with the coordinator's API key check.
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    strip_bearer(value)
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(&rest[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn the_right_token_passes_and_others_are_told_what_is_wrong() {
        let token = ClusterToken::new(&format!("{TOKEN}\n")).expect("valid");
        assert_eq!(token.header_value(), format!("Bearer {TOKEN}"));
        assert_eq!(
            token.verify(Some(format!("Bearer {TOKEN}").as_bytes())),
            Ok(())
        );
        assert_eq!(
            token.verify(Some(format!("bearer  {TOKEN}").as_bytes())),
            Ok(())
        );
        assert_eq!(token.verify(None), Err(AuthError::Missing));
        assert_eq!(token.verify(Some(b"Basic abc")), Err(AuthError::Missing));
        assert_eq!(token.verify(Some(b"Bearer ")), Err(AuthError::Missing));
        assert_eq!(
            token.verify(Some(format!("Bearer {TOKEN}x").as_bytes())),
            Err(AuthError::Wrong)
        );
        assert_eq!(
            token.verify(Some(b"Bearer 0123456789abcdef0124")),
            Err(AuthError::Wrong)
        );
        assert!(!format!("{token:?}").contains(TOKEN), "never logged");
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert_eq!(
            ClusterToken::new("short"),
            Err(AuthError::BadToken { len: 5 })
        );
        assert!(ClusterToken::new("0123456789 abcdef0123").is_err());
        assert!(ClusterToken::new("").is_err());
    }
}
