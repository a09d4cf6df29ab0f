//! The one spelling of a URL path that routes are matched on.
//!
//! Backends resolve `..`, merge slashes and decode `%2e` before they look at a path (nginx, most
//! frameworks). A proxy that routed on the raw bytes would match `/free/../paid/x` to a route on
//! `/free` (with that route's subscription and plan) while the backend serves `/paid/x`. So a
//! path gets one spelling, as Envoy's `normalize_path` + `merge_slashes` and nginx give it:
//!
//! - percent-encoded unreserved characters are decoded (RFC 3986 section 6.2.2.2: `%2e` is `.`),
//!   and the hex digits of other escapes upper-cased;
//! - runs of `/` become one;
//! - `.` and `..` segments are resolved (RFC 3986 section 5.2.4; `..` never climbs above `/`).
//!
//! Spellings whose meaning depends on the backend have none: a dot-segment hidden behind an
//! encoded slash or backslash (`..%2F`, `%5C..`) or a raw backslash, and a dot-segment with
//! parameters (`..;`, which Java servlet containers resolve as `..`). Encoded slashes elsewhere
//! (`/projects/group%2Fname`) are kept as they are.
//!
//! The proxy routes and forwards requests on this spelling; an ApiRoute's path must already be in
//! it, or no request could match.
//!
//! Matching then reads a path as the most lenient common backend would ([`PathMatch::matches`](
//! crate::snapshot::PathMatch::matches)), so that no spelling a backend treats as a route's path
//! falls through to a broader route (with a cheaper plan or no approval gate): in any ASCII case
//! (Express and ASP.NET route case-insensitively), with a trailing slash on an exact path (Spring
//! before 6, Express), and with `;` parameters of a segment ignored ([`routing_form`]; Tomcat and
//! Jetty strip them, so `/v1/reports;jsessionid=1` is `/v1/reports`). The request is forwarded as
//! it came (normalized as above): only the choice of route is lenient.

use std::borrow::Cow;

/// Why a path has no normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("it has a `%` not followed by two hex digits")]
    Malformed,
    /// A dot-segment behind an encoded slash or backslash, or with parameters.
    #[error(
        "it hides a `.` or `..` segment behind an encoded slash or backslash, or gives one \
         parameters (such as `..%2F` or `..;`), which backends read differently"
    )]
    Ambiguous,
}

/// `path` without the `;` parameters of its segments (`/a;x=1/b;y` is `/a/b`): what servlet
/// containers route on. Borrowed when there are none.
pub fn routing_form(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or_default());
    }
    Cow::Owned(out)
}

/// `path` (starting with `/`) in its normal form: borrowed when it already is.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || !needs_normalizing(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let normal = normalized(path)?;
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// Whether `path` might change: it has an escape, a backslash, or a `/` followed by `/` or `.`.
#[inline]
pub fn needs_normalizing(path: &[u8]) -> bool {
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
fn normalized(path: &str) -> Result<String, PathError> {
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    // A path that ends in `/`, `/.` or `/..` names a directory: it keeps its trailing slash.
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ if hides_dot_segment(segment) => return Err(PathError::Ambiguous),
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
fn decode_unreserved(path: &str) -> Result<String, PathError> {
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
            return Err(PathError::Malformed);
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
    String::from_utf8(out).map_err(|_| PathError::Malformed)
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

    #[test]
    fn routing_form_drops_segment_parameters_only() {
        assert_eq!(routing_form("/v1/reports;jsessionid=1"), "/v1/reports");
        assert_eq!(routing_form("/a;x=1/b;y/c"), "/a/b/c");
        assert_eq!(routing_form("/a;/b"), "/a/b");
        assert!(matches!(
            routing_form("/plain/path"),
            Cow::Borrowed("/plain/path")
        ));
    }

    fn normal(path: &str) -> Result<String, PathError> {
        normalize_path(path).map(Cow::into_owned)
    }

    #[test]
    fn paths_in_normal_form_are_borrowed() {
        for path in [
            "/",
            "/v1/chat",
            "/a/b/",
            "/a.b/c..d/.e",
            "/a;v=1/b",
            "/files/a%2Fb",
        ] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
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
            ("/caf\u{e9}/../x", "/x"),
            ("/caf\u{e9}//x", "/caf\u{e9}/x"),
        ] {
            assert_eq!(normal(path).as_deref(), Ok(expected), "{path}");
        }
    }

    #[test]
    fn dot_segments_that_backends_read_differently_have_no_normal_form() {
        for path in [
            "/free/..%2Fpaid/x",
            "/free/..%2fpaid/x",
            "/free/%2F..%2Fpaid",
            "/free/%2e%2e%2fpaid/x",
            "/free/..%5Cpaid/x",
            "/free/..\\paid/x",
            "/free/..;/paid/x",
            "/free/.;x/paid",
            "/free/%2e%2e;jsessionid=1/paid",
        ] {
            assert_eq!(normal(path), Err(PathError::Ambiguous), "{path}");
        }
    }

    #[test]
    fn broken_escapes_have_no_normal_form() {
        for path in ["/a%", "/a%2", "/a%zz", "/%%41"] {
            assert_eq!(normal(path), Err(PathError::Malformed), "{path}");
        }
    }
}
