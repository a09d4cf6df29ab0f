//! API keys: taken from `Authorization: Bearer <key>` or `X-Api-Key: <key>`, hashed with SHA-256,
//! and looked up by digest. The key is never logged or forwarded, and never kept beyond the
//! connection that sent it (which remembers its last key to skip hashing it again).
//!
//! A request may carry its key in several of those headers, but only one key: every Bearer
//! `Authorization` line and every `X-Api-Key` line is read, and two different keys are refused
//! (400), never resolved by an order of precedence. Otherwise a request could be authorized as one
//! tenant while another key in it reached the backend, or while the backend read a different one.

use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::http1::client_headers::ClientHeaders;

/// Longest key accepted; longer values are rejected without hashing.
const MAX_KEY_LEN: usize = 512;

/// The request carried two different API keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConflictingKeys;

/// The SHA-256 digest of the presented key; `Ok(None)` when no usable key was sent. `memo` is
/// the connection's: a repeated key is not hashed again.
pub fn presented_key(
    headers: ClientHeaders<'_>,
    memo: &KeyMemo,
) -> Result<Option<[u8; 32]>, ConflictingKeys> {
    let mut key: Option<&[u8]> = None;
    let mut conflict = false;
    headers.for_each(|field| {
        if let Some(presented) = field.api_key() {
            match key {
                None => key = Some(presented),
                Some(first) => conflict |= first != presented,
            }
        }
    });
    if conflict {
        return Err(ConflictingKeys);
    }
    Ok(key.and_then(|k| memo.digest(k)))
}

/// The last key a connection presented, with its digest. A keep-alive client sends the same key
/// with every request; hashing it each time was the largest single cost of a request in
/// instruction counts. Only the digest is remembered from the key's bytes, so a configuration
/// change (a revoked key) applies at once: the lookup by digest is still made per request.
#[derive(Debug, Default)]
pub struct KeyMemo(Mutex<Option<Remembered>>);

#[derive(Debug)]
struct Remembered {
    key: Box<[u8]>,
    digest: [u8; 32],
}

impl KeyMemo {
    /// The digest of `key`, `None` if it is not a usable key (empty, too long, not visible ASCII).
    fn digest(&self, key: &[u8]) -> Option<[u8; 32]> {
        let usable = |key: &[u8]| {
            !key.is_empty() && key.len() <= MAX_KEY_LEN && key.iter().all(|b| b.is_ascii_graphic())
        };
        // Streams of one HTTP/2 connection may race for the memo: the loser hashes.
        let Ok(mut last) = self.0.try_lock() else {
            return usable(key).then(|| sha256(key));
        };
        // Only usable keys are remembered: the same bytes need no second check.
        if let Some(last) = last.as_ref()
            && same_bytes(&last.key, key)
        {
            return Some(last.digest);
        }
        if !usable(key) {
            return None;
        }
        let digest = sha256(key);
        *last = Some(Remembered {
            key: key.into(),
            digest,
        });
        Some(digest)
    }
}

fn sha256(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Compares every byte whatever the first difference: a client sharing a connection with another
/// (behind a pooling proxy) must not learn how much of a guess matches the other's key from how
/// long the comparison took.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use tollgate_crds::snapshot::KeyDigest;

    fn key(headers: &HeaderMap) -> Option<[u8; 32]> {
        presented_key(ClientHeaders::Map(headers), &KeyMemo::default()).expect("one key")
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
        let d = key(&headers(&[("authorization", "Bearer abc123")])).expect("key");
        assert_eq!(hex::encode(d), KeyDigest::of(b"abc123").0);
        let d = key(&headers(&[("x-api-key", "abc123")])).expect("key");
        assert_eq!(hex::encode(d), KeyDigest::of(b"abc123").0);
        assert!(
            key(&headers(&[("authorization", "bearer abc123")])).is_some(),
            "scheme is case-insensitive"
        );
    }

    #[test]
    fn a_connections_memo_gives_each_key_its_own_digest() {
        let memo = KeyMemo::default();
        let with = |value: &str| {
            presented_key(
                ClientHeaders::Map(&headers(&[("authorization", value)])),
                &memo,
            )
            .expect("one key")
            .map(hex::encode)
        };
        for _ in 0..2 {
            assert_eq!(with("Bearer abc123"), Some(KeyDigest::of(b"abc123").0));
        }
        // Another key on the same connection, of the same length and of another.
        assert_eq!(with("Bearer abc124"), Some(KeyDigest::of(b"abc124").0));
        assert_eq!(with("Bearer abc1234"), Some(KeyDigest::of(b"abc1234").0));
        assert_eq!(with("Bearer abc123"), Some(KeyDigest::of(b"abc123").0));
        assert_eq!(with("Bearer "), None);
        assert!(same_bytes(b"", b"") && !same_bytes(b"a", b"ab") && !same_bytes(b"ab", b"ac"));
    }

    #[test]
    fn one_key_in_several_headers_is_that_key_and_two_keys_are_refused() {
        // Before: the first Authorization line decided (a Basic one made the X-Api-Key count),
        // and a second tenant's Bearer key in the next line went on to the backend.
        let one = headers(&[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("authorization", "Bearer alice"),
            ("x-api-key", " alice "),
        ]);
        assert_eq!(key(&one), Some(sha256(b"alice")));
        for two in [
            [
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("authorization", "Bearer bob"),
                ("x-api-key", "alice"),
            ],
            [
                ("authorization", "Bearer alice"),
                ("x-api-key", "alice"),
                ("x-api-key", "bob"),
            ],
            [("x-api-key", "alice"), ("x-api-key", ""), ("accept", "*/*")],
        ] {
            assert_eq!(
                presented_key(ClientHeaders::Map(&headers(&two)), &KeyMemo::default()),
                Err(ConflictingKeys),
                "{two:?}"
            );
        }
    }

    #[test]
    fn no_key_or_unusable_key() {
        assert!(key(&headers(&[])).is_none());
        assert!(key(&headers(&[("authorization", "Basic dXNlcjpwYXNz")])).is_none());
        assert!(key(&headers(&[("authorization", "Bearer ")])).is_none());
        assert!(key(&headers(&[("x-api-key", &"k".repeat(600))])).is_none());
    }
}
