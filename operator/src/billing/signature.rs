//! The `Stripe-Signature` header: `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`, where each `v1` is
//! HMAC-SHA256 of `"<t>.<raw body>"` keyed with an endpoint's signing secret (the whole `whsec_…`
//! string, as bytes). Any `v1` matching any configured secret passes, so a secret can be rotated
//! without a gap; `v0` (test-mode decoys) and unknown schemes are ignored.

use jiff::Timestamp;
use ring::hmac;

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("no Stripe-Signature header")]
    Missing,
    /// The header has no `t=` or no `v1=`.
    #[error("the Stripe-Signature header has no timestamp or no v1 signature")]
    Malformed,
    /// No configured secret produced any of the signatures.
    #[error("no v1 signature matches a configured signing secret")]
    NoMatch,
    /// Signed too long ago (a replay) or too far in the future (a replay captured by a clock that
    /// runs behind, or a clock far off).
    #[error("signed at {signed}, more than {tolerance_secs} s from the operator's clock ({now})")]
    Stale {
        /// The header's timestamp.
        signed: Timestamp,
        /// The operator's clock.
        now: Timestamp,
        /// The tolerance.
        tolerance_secs: i64,
    },
}

impl SignatureError {
    /// The metric label for this refusal.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Missing | Self::Malformed | Self::NoMatch => "bad_signature",
            Self::Stale { .. } => "stale_timestamp",
        }
    }
}

/// Checks `header` for `body` against `secrets`: Ok when a `v1` signature matches one of them and
/// the timestamp is within `tolerance_secs` of `now`, either way. Stripe's own libraries refuse
/// only old timestamps; refusing far-future ones too means a captured delivery cannot be replayed
/// for longer than the tolerance when the operator's clock runs behind.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    tolerance_secs: i64,
    now: Timestamp,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    // The timestamp as sent (signed as sent) and as a number.
    let mut timestamp: Option<(&str, i64)> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse().ok().map(|n| (t, n)),
            Some(("v1", sig)) => {
                if let Ok(sig) = hex::decode(sig) {
                    signatures.push(sig);
                }
            }
            _ => {}
        }
    }
    let (Some((t_sent, t)), false) = (timestamp, signatures.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    let mut signed_payload = Vec::with_capacity(body.len() + 12);
    signed_payload.extend_from_slice(t_sent.as_bytes());
    signed_payload.push(b'.');
    signed_payload.extend_from_slice(body);
    let matched = secrets.iter().any(|secret| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        // Constant-time comparison.
        signatures
            .iter()
            .any(|sig| hmac::verify(&key, &signed_payload, sig).is_ok())
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    let signed = Timestamp::from_second(t).map_err(|_| SignatureError::Malformed)?;
    if now.as_second().abs_diff(t) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Stale {
            signed,
            now,
            tolerance_secs,
        });
    }
    Ok(())
}

/// The header Stripe would send for `body` signed with `secret` at `t` (for tests and tools).
pub fn sign(body: &[u8], secret: &str, t: i64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed_payload = t.to_string().into_bytes();
    signed_payload.push(b'.');
    signed_payload.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(hmac::sign(&key, &signed_payload).as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    fn now() -> Timestamp {
        Timestamp::now()
    }

    #[test]
    fn a_signature_from_any_configured_secret_passes() {
        let t = now().as_second();
        let header = sign(b"{}", SECRET, t);
        let secrets = vec!["whsec_old".to_owned(), SECRET.to_owned()];
        assert_eq!(verify(Some(&header), b"{}", &secrets, 300, now()), Ok(()));
        // Several v1 values (Stripe sends one per active secret while rolling): any may match.
        let other = sign(b"{}", "whsec_other", t);
        let both = format!("{other},{}", header.split_once(',').expect("two parts").1);
        assert_eq!(
            verify(Some(&both), b"{}", &[SECRET.to_owned()], 300, now()),
            Ok(())
        );
    }

    #[test]
    fn tampered_bodies_wrong_secrets_and_malformed_headers_are_refused() {
        let t = now().as_second();
        let header = sign(b"{\"a\":1}", SECRET, t);
        let secrets = [SECRET.to_owned()];
        assert_eq!(
            verify(Some(&header), b"{\"a\":2}", &secrets, 300, now()),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(
                Some(&header),
                b"{\"a\":1}",
                &["whsec_x".to_owned()],
                300,
                now()
            ),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(None, b"{}", &secrets, 300, now()),
            Err(SignatureError::Missing)
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "garbage"] {
            assert_eq!(
                verify(Some(bad), b"{}", &secrets, 300, now()),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        // The timestamp is signed as sent: another spelling of the same number does not match.
        let respelled = header.replacen("t=", "t=+", 1);
        assert_eq!(
            verify(Some(&respelled), b"{\"a\":1}", &secrets, 300, now()),
            Err(SignatureError::NoMatch)
        );
        // v0 is a test-mode decoy, never a valid signature on its own.
        let v0 = header.replace("v1=", "v0=");
        assert_eq!(
            verify(Some(&v0), b"{\"a\":1}", &secrets, 300, now()),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn a_signature_older_than_the_tolerance_is_stale() {
        let t = now().as_second() - 301;
        let header = sign(b"{}", SECRET, t);
        let err = verify(Some(&header), b"{}", &[SECRET.to_owned()], 300, now());
        assert!(matches!(err, Err(SignatureError::Stale { .. })), "{err:?}");
        assert_eq!(err.expect_err("stale").outcome(), "stale_timestamp");
        let recent = sign(b"{}", SECRET, now().as_second() - 200);
        assert_eq!(
            verify(Some(&recent), b"{}", &[SECRET.to_owned()], 300, now()),
            Ok(())
        );
        // The same tolerance into the future (one instant for signing and checking).
        let at = now();
        let ahead = sign(b"{}", SECRET, at.as_second() + 300);
        assert_eq!(
            verify(Some(&ahead), b"{}", &[SECRET.to_owned()], 300, at),
            Ok(())
        );
        let far_ahead = sign(b"{}", SECRET, at.as_second() + 301);
        let err = verify(Some(&far_ahead), b"{}", &[SECRET.to_owned()], 300, at);
        assert!(matches!(err, Err(SignatureError::Stale { .. })), "{err:?}");
    }
}
