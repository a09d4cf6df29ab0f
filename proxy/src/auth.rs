//! API keys: taken from `Authorization: Bearer <key>` or `X-Api-Key: <key>`, hashed with SHA-256,
//! and looked up by digest. The key itself is never stored, logged or forwarded.

use http::HeaderName;
use sha2::{Digest, Sha256};

use crate::client_headers::ClientHeaders;

/// Header carrying an API key as an alternative to `Authorization: Bearer`.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// Longest key accepted; longer values are rejected without hashing.
const MAX_KEY_LEN: usize = 512;

/// Where the key was found (that header is removed before forwarding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `Authorization: Bearer`.
    Authorization,
    /// `X-Api-Key`.
    XApiKey,
}

/// The SHA-256 digest of the presented key and where it came from; `None` when no usable key was sent.
pub fn presented_key(headers: ClientHeaders<'_>) -> Option<([u8; 32], KeySource)> {
    if let Some(bytes) = headers.get(&http::header::AUTHORIZATION)
        && bytes.len() > 7
        && bytes[..7].eq_ignore_ascii_case(b"bearer ")
    {
        return digest(bytes[7..].trim_ascii()).map(|d| (d, KeySource::Authorization));
    }
    headers
        .get(&X_API_KEY)
        .and_then(|v| digest(v.trim_ascii()))
        .map(|d| (d, KeySource::XApiKey))
}

fn digest(key: &[u8]) -> Option<[u8; 32]> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(Sha256::digest(key).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use tollgate_crds::snapshot::KeyDigest;

    fn key(headers: &HeaderMap) -> Option<([u8; 32], KeySource)> {
        presented_key(ClientHeaders::Map(headers))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn digest_matches_the_compiled_key_digest() {
        let (d, src) = key(&headers(&[("authorization", "Bearer abc123")])).expect("key");
        assert_eq!(hex::encode(d), KeyDigest::of(b"abc123").0);
        assert_eq!(src, KeySource::Authorization);
        let (d, src) = key(&headers(&[("x-api-key", "abc123")])).expect("key");
        assert_eq!(hex::encode(d), KeyDigest::of(b"abc123").0);
        assert_eq!(src, KeySource::XApiKey);
        assert!(
            key(&headers(&[("authorization", "bearer abc123")])).is_some(),
            "scheme is case-insensitive"
        );
    }

    #[test]
    fn no_key_or_unusable_key() {
        assert!(key(&headers(&[])).is_none());
        assert!(key(&headers(&[("authorization", "Basic dXNlcjpwYXNz")])).is_none());
        assert!(key(&headers(&[("authorization", "Bearer ")])).is_none());
        assert!(key(&headers(&[("x-api-key", &"k".repeat(600))])).is_none());
    }
}
