//! The request path in its one spelling ([`tollgate_crds::path`]) before the request is routed
//! and forwarded: the route matched is the path the backend serves, and `/free/../paid/x` is a
//! request for `/paid/x` with `/paid`'s subscription and plan. Paths without a normal form are
//! refused with 400. The query is untouched.

use http::Uri;
use http::uri::PathAndQuery;
use tollgate_crds::path::{PathError, needs_normalizing, normalize_path};

/// Normalizes `uri`'s path in place. `Err`: why the path is refused (a sentence for the client).
#[inline]
pub fn normalize(uri: &mut Uri) -> Result<(), &'static str> {
    let path = uri.path();
    if !path.starts_with('/') || !needs_normalizing(path.as_bytes()) {
        return Ok(()); // the common case: nothing to decode, merge or resolve
    }
    rewrite(uri)
}

/// The rare case, kept out of the request path's code.
#[cold]
fn rewrite(uri: &mut Uri) -> Result<(), &'static str> {
    let normal = match normalize_path(uri.path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(normal)) => normal,
        Err(PathError::Malformed) => return Err(MALFORMED),
        Err(PathError::Ambiguous) => return Err(AMBIGUOUS),
    };
    let target = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| MALFORMED)?);
    *uri = Uri::from_parts(parts).map_err(|_| MALFORMED)?;
    Ok(())
}

const MALFORMED: &str = "The request path is not valid: a `%` must be followed by two hex digits.";
const AMBIGUOUS: &str = "The request path hides a `.` or `..` segment behind an encoded slash or \
     backslash, or gives one parameters (such as `..%2F` or `..;`); backends disagree on what that \
     means. Send the path with its dot-segments resolved.";

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(target: &str) -> Result<String, &'static str> {
        let mut uri: Uri = target.parse().expect("test URI");
        normalize(&mut uri)?;
        Ok(uri.to_string())
    }

    #[test]
    fn the_path_changes_and_the_query_does_not() {
        assert_eq!(
            normalized("/a/../b?x=/../y&z=%2e").as_deref(),
            Ok("/b?x=/../y&z=%2e")
        );
        assert_eq!(normalized("/v1/chat?q=1").as_deref(), Ok("/v1/chat?q=1"));
    }

    #[test]
    fn absolute_form_keeps_its_scheme_and_authority() {
        assert_eq!(
            normalized("http://api.example.com/a/../b?q=1").as_deref(),
            Ok("http://api.example.com/b?q=1")
        );
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(normalized("/a/..%2Fb"), Err(AMBIGUOUS));
        assert_eq!(normalized("/a%zz"), Err(MALFORMED));
    }
}
