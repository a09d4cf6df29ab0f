//! The request path made safe to route on: one spelling per path, so the route the proxy matches
//! is the path the backend serves.
//!
//! Backends resolve `..`, merge slashes and decode `%2e` before they look at a path (nginx, most
//! frameworks). If the proxy routed on the raw bytes, `/free/../paid/x` would match a route on
//! `/free` (and that route's subscription and plan) and be served by the backend as `/paid/x`.
//! So before routing, as Envoy's `normalize_path` + `merge_slashes` and nginx do:
//!
//! - percent-encoded unreserved characters are decoded (RFC 3986 section 6.2.2.2: `%2e` is `.`),
//!   and the hex digits of other escapes upper-cased;
//! - runs of `/` become one;
//! - `.` and `..` segments are resolved (RFC 3986 section 5.2.4; `..` never climbs above `/`).
//!
//! The request is then routed and forwarded with that path (the query is untouched). Spellings
//! whose meaning depends on the backend are refused with 400 instead: a dot-segment hidden behind
//! an encoded slash or backslash (`..%2F`, `%5C..`), a raw backslash next to one, and a
//! dot-segment with parameters (`..;`, which Java servlet containers resolve as `..`). Encoded
//! slashes elsewhere (`/projects/group%2Fname`) are kept as they are.

use http::Uri;
use http::uri::PathAndQuery;

/// Normalizes `uri`'s path in place. `Err`: why the path is refused (a sentence for the client).
#[inline]
pub fn normalize(uri: &mut Uri) -> Result<(), &'static str> {
    let path = uri.path();
    if !path.starts_with('/') || !needs_work(path.as_bytes()) {
        return Ok(()); // the common case: nothing to decode, merge or resolve
    }
    rewrite(uri)
}

/// The rare case, kept out of the request path's code.
#[cold]
fn rewrite(uri: &mut Uri) -> Result<(), &'static str> {
    let path = uri.path();
    let normalized = normalized(path)?;
    if normalized == path {
        return Ok(());
    }
    let target = match uri.query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| INVALID)?);
    *uri = Uri::from_parts(parts).map_err(|_| INVALID)?;
    Ok(())
}

const INVALID: &str = "The request path is not valid: fix its percent-encoding.";
const AMBIGUOUS: &str = "The request path hides a `.` or `..` segment behind an encoded slash or \
     backslash, or gives one parameters (such as `..%2F` or `..;`); backends disagree on what that \
     means. Send the path with its dot-segments resolved.";

/// Whether `path` might change: it has an escape, a backslash, or a `/` followed by `/` or `.`.
#[inline]
fn needs_work(path: &[u8]) -> bool {
    let mut after_slash = false;
    for &b in path {
        if b == b'%' || b == b'\\' || (after_slash && (b == b'/' || b == b'.')) {
            return true;
        }
        after_slash = b == b'/';
    }
    false
}

/// `path` (starting with `/`) in its one spelling, or why it is refused.
fn normalized(path: &str) -> Result<String, &'static str> {
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    // A path that ends in `/`, `/.` or `/..` names a directory: it keeps its trailing slash.
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ if hides_dot_segment(segment) => return Err(AMBIGUOUS),
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Decodes escapes of unreserved characters; upper-cases the hex digits of the others. Works on
/// bytes: a path may hold UTF-8, which passes through untouched.
fn decode_unreserved(path: &str) -> Result<String, &'static str> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(high), Some(low)) = (
            bytes.get(i + 1).and_then(|h| hex(*h)),
            bytes.get(i + 2).and_then(|l| hex(*l)),
        ) else {
            return Err(INVALID);
        };
        let value = high << 4 | low;
        if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
            out.push(value);
        } else {
            out.extend_from_slice(&[
                b'%',
                HEX_DIGITS[usize::from(high)],
                HEX_DIGITS[usize::from(low)],
            ]);
        }
        i += 3;
    }
    // Only ASCII escapes were replaced, by ASCII: still the UTF-8 it was.
    String::from_utf8(out).map_err(|_| INVALID)
}

const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Whether a segment (not itself `.` or `..`) holds a dot-segment that some backend would find:
/// split at encoded slashes and backslashes (escapes already upper-cased) and raw backslashes,
/// or before `;` parameters.
fn hides_dot_segment(segment: &str) -> bool {
    if !segment.contains('.') {
        return false;
    }
    segment
        .split("%2F")
        .flat_map(|s| s.split("%5C"))
        .flat_map(|s| s.split('\\'))
        .any(|part| {
            let name = part.split(';').next().unwrap_or(part);
            name == "." || name == ".."
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize_path(path: &str) -> Result<String, &'static str> {
        let mut uri: Uri = path.parse().expect("test URI");
        normalize(&mut uri)?;
        Ok(uri.path_and_query().map_or("", |pq| pq.as_str()).to_owned())
    }

    #[test]
    fn plain_paths_are_left_alone() {
        for path in [
            "/",
            "/v1/chat",
            "/a/b/",
            "/a.b/c..d/.e",
            "/a;v=1/b",
            "/files/a%2Fb",
        ] {
            assert_eq!(normalize_path(path).as_deref(), Ok(path), "{path}");
        }
    }

    #[test]
    fn dot_segments_slashes_and_unreserved_escapes_have_one_spelling() {
        for (path, expected) in [
            ("/free/../paid/x", "/paid/x"),
            ("/free/./../paid/x", "/paid/x"),
            ("/free/%2e%2e/paid/x", "/paid/x"),
            ("/free/.%2E/paid/x", "/paid/x"),
            ("/free/%2E/x", "/free/x"),
            ("//paid//x", "/paid/x"),
            ("/free//../paid/x", "/paid/x"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("//", "/"),
            ("/%7Euser/%61pi", "/~user/api"),
            ("/a%2fb/%3f", "/a%2Fb/%3F"),
            ("/a/../b?x=/../y&z=%2e", "/b?x=/../y&z=%2e"),
        ] {
            assert_eq!(normalize_path(path).as_deref(), Ok(expected), "{path}");
        }
    }

    #[test]
    fn dot_segments_that_backends_read_differently_are_refused() {
        for path in [
            "/free/..%2Fpaid/x",
            "/free/..%2fpaid/x",
            "/free/%2F..%2Fpaid",
            "/free/%2e%2e%2fpaid/x",
            "/free/..%5Cpaid/x",
            "/free/..;/paid/x",
            "/free/.;x/paid",
            "/free/%2e%2e;jsessionid=1/paid",
        ] {
            assert_eq!(normalize_path(path), Err(AMBIGUOUS), "{path}");
        }
    }

    #[test]
    fn broken_escapes_are_refused() {
        for path in ["/a%", "/a%2", "/a%zz", "/%%41"] {
            assert_eq!(normalize_path(path), Err(INVALID), "{path}");
        }
    }

    #[test]
    fn absolute_form_keeps_its_scheme_and_authority() {
        let mut uri: Uri = "http://api.example.com/a/../b?q=1".parse().expect("uri");
        normalize(&mut uri).expect("normalizes");
        assert_eq!(uri.to_string(), "http://api.example.com/b?q=1");
    }

    #[test]
    fn backslashes_next_to_dot_segments_are_refused() {
        // http::Uri refuses a raw backslash, so this checks the segment rule on its own.
        assert!(hides_dot_segment("..\\paid"));
        assert!(!hides_dot_segment("a\\b.c"));
    }
}
