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

/// Why the request's method or target cannot be routed, if it cannot. Refused rather than
/// forwarded: what the proxy would route on is not what the backend would read.
///
/// - A method with a lower-case letter (`get`): methods are case-sensitive, so `get` matched no
///   route that names `GET` and fell through to a broader one, while backends such as Werkzeug
///   served it as `GET`. Upper case only, as nginx requires.
/// - The asterisk form (`OPTIONS *`, a request about the server, not a resource): before, it went
///   to the backend as `OPTIONS /base*`.
/// - The authority form (`GET host:80`, meant for CONNECT): before, it was routed as `/`.
pub fn unroutable(method: &http::Method, uri: &Uri) -> Option<&'static str> {
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        Some(LOWER_CASE_METHOD)
    } else if uri.path() == "*" {
        Some(ASTERISK_FORM)
    } else if uri.scheme().is_none() && uri.authority().is_some() {
        Some(AUTHORITY_FORM)
    } else {
        None
    }
}

const LOWER_CASE_METHOD: &str = "Request methods are case-sensitive, and Tollgate takes them in \
     upper case: send `GET`, not `get`.";
const ASTERISK_FORM: &str = "A request for `*` (the server itself) is not routed to an API; send \
     a path.";
const AUTHORITY_FORM: &str = "A request target of only `host:port` (the form CONNECT uses) is not \
     routed to an API; send a path.";

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
    fn lower_case_methods_and_non_path_targets_are_not_routed() {
        let refused = |method: &str, target: &str| {
            let method = http::Method::from_bytes(method.as_bytes()).expect("method");
            unroutable(&method, &target.parse().expect("target"))
        };
        assert_eq!(refused("get", "/w/reports"), Some(LOWER_CASE_METHOD));
        assert_eq!(refused("Post", "/w"), Some(LOWER_CASE_METHOD));
        assert_eq!(refused("OPTIONS", "*"), Some(ASTERISK_FORM));
        assert_eq!(refused("GET", "host:80"), Some(AUTHORITY_FORM));
        for (method, target) in [
            ("GET", "/w/reports"),
            ("PURGE", "/cache"),
            ("M-SEARCH", "/"),
            ("GET", "http://api.example.com/x"),
        ] {
            assert_eq!(refused(method, target), None, "{method} {target}");
        }
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
