//! Request signatures: a client proves it holds a user's secret without sending it.
//!
//! A signed request carries one header value (gRPC metadata `authorization`, or the data
//! port's authentication frame):
//!
//! ```text
//! SLUICE-HMAC-SHA256 Credential=<access key>, Timestamp=<ms since the epoch>, Nonce=<32 hex>, Signature=<64 hex>
//! ```
//!
//! The signature is HMAC-SHA256 under the secret over [`string_to_sign`]: the scheme, the
//! access key, the resource the request is for ([`resource`]: the server as the client
//! addressed it and the gRPC method path, or the data port's name), the timestamp and the
//! nonce. A signature is good for one method on one server: captured, it cannot be replayed
//! to another broker, nor relabelled with another access key. The server checks the key, the signature (in constant time), that the
//! timestamp is within its replay window of its own clock, and that it has not seen the
//! nonce before ([`ReplayGuard`]). A nonce is a signer's random session id (8 bytes) and a
//! counter (8 bytes, big-endian) it increments per request ([`Signer`]), so the server's
//! memory per client is a sliding window, whatever the request rate. Transport integrity of the request
//! body is TLS's job; the signature binds the identity to one request of one method.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{ApiError, ErrorCode};

/// The metadata key (gRPC) carrying the signature.
pub const AUTH_HEADER: &str = "authorization";
/// The scheme name, first in the header and in the string to sign.
pub const SCHEME: &str = "SLUICE-HMAC-SHA256";
/// The default replay window: timestamps further than this from the server's clock are stale.
pub const DEFAULT_WINDOW_MS: i64 = 5 * 60 * 1000;
/// The method a data-port connection's authentication frame signs.
pub const DATA_PORT_RESOURCE: &str = "/sluice.DataPort";
/// Longest access key accepted.
pub const MAX_ACCESS_KEY_LEN: usize = 128;
/// Longest header value parsed.
pub const MAX_HEADER_LEN: usize = 512;

/// A user's credentials. The secret is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a request is not authenticated (each is UNAUTHENTICATED on the wire, with its reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed(&'static str),
    UnknownKey(String),
    BadSignature,
    Stale {
        skew_ms: i64,
        window_ms: i64,
    },
    Replayed,
    /// The server remembers as many client sessions of this key (or in all) as it can.
    TooManySessions,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => write!(f, "the request carries no signature"),
            AuthError::Malformed(why) => write!(f, "malformed signature: {why}"),
            AuthError::UnknownKey(k) => write!(f, "unknown access key {k:?}"),
            AuthError::BadSignature => write!(
                f,
                "the signature does not match (wrong secret, or signed for another server or method)"
            ),
            AuthError::Stale { skew_ms, window_ms } => write!(
                f,
                "stale timestamp: {skew_ms} ms from the server's clock, the window is {window_ms} ms"
            ),
            AuthError::Replayed => write!(f, "replayed request: this nonce was used already"),
            AuthError::TooManySessions => write!(
                f,
                "too many client sessions of this access key within the replay window; retry later"
            ),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(ErrorCode::Unauthenticated, e.to_string())
    }
}

/// A parsed signature header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub access_key: String,
    pub timestamp_ms: i64,
    pub nonce: [u8; 16],
    pub signature: [u8; 32],
}

/// Reads a secret from a file (secrets never go on a command line): its bytes without a
/// trailing newline. A missing, unreadable or empty file is an error naming the file.
pub fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("secret file {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(bytes)
}

/// What a request to `method` at `target` (the `host:port` the client dialed; empty for a
/// nameserver, which signatures do not bind) signs.
pub fn resource(target: &str, method: &str) -> String {
    format!("{target}{method}")
}

/// What the signature covers.
pub fn string_to_sign(
    access_key: &str,
    resource: &str,
    timestamp_ms: i64,
    nonce: &[u8; 16],
) -> String {
    format!(
        "{SCHEME}\n{access_key}\n{resource}\n{timestamp_ms}\n{}",
        crate::hex::encode(nonce)
    )
}

pub(crate) fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

/// The header value signing a request for `resource` at `timestamp_ms` with `nonce` (never
/// reused: [`Signer`] makes them).
pub fn sign(creds: &Credentials, resource: &str, timestamp_ms: i64, nonce: [u8; 16]) -> String {
    let mut m = mac(&creds.secret);
    m.update(string_to_sign(&creds.access_key, resource, timestamp_ms, &nonce).as_bytes());
    let signature = m.finalize().into_bytes();
    format!(
        "{SCHEME} Credential={}, Timestamp={timestamp_ms}, Nonce={}, Signature={}",
        creds.access_key,
        crate::hex::encode(&nonce),
        crate::hex::encode(&signature)
    )
}

/// Parses a header value; any deviation from the format is `Malformed`.
pub fn parse(value: &str) -> Result<Signed, AuthError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(AuthError::Malformed("too long"));
    }
    let rest = value
        .strip_prefix(SCHEME)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(AuthError::Malformed("unknown scheme"))?;
    let mut fields = rest.split(", ");
    let mut field = |name: &'static str| {
        fields
            .next()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('='))
            .ok_or(AuthError::Malformed(name))
    };
    let access_key = field("Credential")?;
    let timestamp = field("Timestamp")?;
    let nonce = field("Nonce")?;
    let signature = field("Signature")?;
    if fields.next().is_some() {
        return Err(AuthError::Malformed("fields after Signature"));
    }
    if access_key.is_empty()
        || access_key.len() > MAX_ACCESS_KEY_LEN
        || !access_key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',')
    {
        return Err(AuthError::Malformed("Credential"));
    }
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::Malformed("Timestamp"));
    }
    Ok(Signed {
        access_key: access_key.to_string(),
        timestamp_ms: timestamp
            .parse()
            .map_err(|_| AuthError::Malformed("Timestamp"))?,
        nonce: crate::hex::decode(nonce).ok_or(AuthError::Malformed("Nonce"))?,
        signature: crate::hex::decode(signature).ok_or(AuthError::Malformed("Signature"))?,
    })
}

/// Checks a parsed signature for one of `resources` (the names a server answers to): the key
/// (through `secret_of`), the signature, the timestamp against `now_ms` and `window_ms`. The
/// replay check is [`ReplayGuard`]'s.
pub fn verify<S: AsRef<str>>(
    signed: &Signed,
    resources: &[S],
    secret_of: impl FnOnce(&str) -> Option<Vec<u8>>,
    now_ms: i64,
    window_ms: i64,
) -> Result<(), AuthError> {
    let secret = secret_of(&signed.access_key)
        .ok_or_else(|| AuthError::UnknownKey(signed.access_key.clone()))?;
    let matches = resources.iter().any(|r| {
        let mut m = mac(&secret);
        let text = string_to_sign(
            &signed.access_key,
            r.as_ref(),
            signed.timestamp_ms,
            &signed.nonce,
        );
        m.update(text.as_bytes());
        m.verify_slice(&signed.signature).is_ok()
    });
    if !matches {
        return Err(AuthError::BadSignature);
    }
    let skew_ms = signed.timestamp_ms.saturating_sub(now_ms);
    if skew_ms.saturating_abs() > window_ms {
        return Err(AuthError::Stale { skew_ms, window_ms });
    }
    Ok(())
}

pub mod replay;
mod signer;

pub use replay::ReplayGuard;
pub use signer::{unwrap_secret, wrap_secret, Signer, MAX_SECRET_LEN};

#[cfg(test)]
mod tests;
