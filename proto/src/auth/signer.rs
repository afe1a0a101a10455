//! The client side: signing requests, and wrapping a secret sent to the server.

use std::sync::atomic::{AtomicU64, Ordering};

use hmac::Mac;

use super::{mac, sign, AuthError, Credentials};

/// Longest secret a user may have.
pub const MAX_SECRET_LEN: usize = 1024;
const TAG_LEN: usize = 32;

/// Signs requests with one user's credentials. Each signature gets a fresh nonce: this
/// signer's session id and the next value of its counter (see [`super::ReplayGuard`]).
#[derive(Debug)]
pub struct Signer {
    creds: Credentials,
    session: [u8; 8],
    counter: AtomicU64,
}

impl Signer {
    /// `session` must be random (a restarted client must not reuse its predecessor's).
    pub fn new(creds: Credentials, session: [u8; 8]) -> Signer {
        Signer {
            creds,
            session,
            counter: AtomicU64::new(0),
        }
    }

    pub fn access_key(&self) -> &str {
        &self.creds.access_key
    }

    /// The next nonce.
    pub fn nonce(&self) -> [u8; 16] {
        let c = self.counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.session);
        n[8..].copy_from_slice(&c.to_be_bytes());
        n
    }

    /// The header value for one request to `resource`.
    pub fn sign(&self, resource: &str, now_ms: i64) -> String {
        sign(&self.creds, resource, now_ms, self.nonce())
    }

    /// A header value and `secret` wrapped under this signer's secret and the header's nonce,
    /// for a request that sets a user's secret.
    pub fn sign_wrapping(&self, resource: &str, now_ms: i64, secret: &[u8]) -> (String, Vec<u8>) {
        let nonce = self.nonce();
        (
            sign(&self.creds, resource, now_ms, nonce),
            wrap_secret(&self.creds.secret, &nonce, secret),
        )
    }
}

fn keystream_xor(key: &[u8], nonce: &[u8; 16], data: &mut [u8]) {
    for (i, chunk) in data.chunks_mut(32).enumerate() {
        let mut m = mac(key);
        m.update(b"SLUICE-WRAP\n");
        m.update(nonce);
        m.update(&u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes());
        let block = m.finalize().into_bytes();
        for (d, k) in chunk.iter_mut().zip(block.iter()) {
            *d ^= k;
        }
    }
}

fn tag(key: &[u8], nonce: &[u8; 16], ciphertext: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    let mut m = mac(key);
    m.update(b"SLUICE-WRAP-TAG\n");
    m.update(nonce);
    m.update(ciphertext);
    m
}

/// `secret` encrypted under `key` (the caller's secret) and `nonce` (the request's, never
/// reused), followed by a MAC over it: the secret never travels in clear, and a changed one
/// is detected.
pub fn wrap_secret(key: &[u8], nonce: &[u8; 16], secret: &[u8]) -> Vec<u8> {
    let mut out = secret.to_vec();
    keystream_xor(key, nonce, &mut out);
    let t = tag(key, nonce, &out).finalize().into_bytes();
    out.extend_from_slice(&t);
    out
}

/// The secret [`wrap_secret`] wrapped; `Malformed` when it was altered, wrapped under another
/// key or nonce, empty, or too long.
pub fn unwrap_secret(key: &[u8], nonce: &[u8; 16], wrapped: &[u8]) -> Result<Vec<u8>, AuthError> {
    let Some(split) = wrapped.len().checked_sub(TAG_LEN) else {
        return Err(AuthError::Malformed("wrapped secret too short"));
    };
    let (ciphertext, t) = wrapped.split_at(split);
    if ciphertext.is_empty() || ciphertext.len() > MAX_SECRET_LEN {
        return Err(AuthError::Malformed("secret length"));
    }
    tag(key, nonce, ciphertext)
        .verify_slice(t)
        .map_err(|_| AuthError::Malformed("wrapped secret does not verify"))?;
    let mut secret = ciphertext.to_vec();
    keystream_xor(key, nonce, &mut secret);
    Ok(secret)
}
