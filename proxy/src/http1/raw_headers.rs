//! Header lines kept as the bytes they are, with an index of names and values: a backend's
//! end-to-end response headers (relayed), a request's headers as Tollgate's HTTP/1.1 engine
//! received them, and the proxy's own `RateLimit` lines on a relayed response.
//!
//! Building an `http::HeaderMap` from a backend head (a name lookup, a hash and an insert per
//! header, two allocations) only to write the same bytes out again was ~5% of the proxy's
//! instructions per request. A received head is split off its read buffer instead and its lines
//! indexed where they are ([`LineIndex`], [`RawHeaders::received`]); the HTTP/1.1 engine writes
//! relayed lines after the proxy's own headers, and the hyper path turns them into map entries
//! ([`merge_into`]). Headers the proxy sets itself win: a relayed line whose name the response map
//! or the proxy's own lines ([`OwnLines`]) have is left out. [`RawHeadersBuilder`] makes lines by
//! hand (tests, benchmarks).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header lines; empty for a message hyper parsed or the proxy made.
#[derive(Debug, Clone, Default)]
pub struct RawHeaders {
    block: Bytes,
    /// Where each header's name and value are in `block`, in order: found once, when the block
    /// is made (scanning the block for each lookup cost more than the map it replaces).
    spans: Vec<Span>,
}

#[derive(Debug, Clone)]
struct Span {
    name: Range<usize>,
    value: Range<usize>,
}

/// Appends lines to a new [`RawHeaders`] (tests and benchmarks; the proxy indexes received heads
/// where they are, see [`LineIndex`]).
#[derive(Debug)]
pub struct RawHeadersBuilder {
    block: BytesMut,
    spans: Vec<Span>,
}

impl RawHeadersBuilder {
    /// Room for `capacity` bytes of lines.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            block: BytesMut::with_capacity(capacity),
            spans: Vec::with_capacity(8),
        }
    }

    /// Adds one header. `name` and `value` must be as httparse accepted them (a token; no CR or
    /// LF in the value).
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let b = &mut self.block;
        let start = b.len();
        b.extend_from_slice(name);
        b.extend_from_slice(b": ");
        let value_start = b.len();
        b.extend_from_slice(value);
        self.spans.push(Span {
            name: start..start + name.len(),
            value: value_start..b.len(),
        });
        b.extend_from_slice(b"\r\n");
    }

    /// The lines added.
    pub fn finish(self) -> RawHeaders {
        RawHeaders {
            block: self.block.freeze(),
            spans: self.spans,
        }
    }
}

/// Header lines the proxy writes itself on a relayed response (its `RateLimit` headers): one
/// buffer of `name: value\r\n` lines and their names, known when the proxy was built. Made once
/// per request and written whole: an index of spans (a [`RawHeaders`] costs three allocations)
/// would cost more than it saves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnLines {
    block: Vec<u8>,
    /// The lines' names, in order.
    names: &'static [&'static str],
}

impl OwnLines {
    /// One line per name (a lowercase token), in order, with the value `write_value(i, out)`
    /// appends for the `i`th (visible ASCII).
    pub fn new(
        names: &'static [&'static str],
        capacity: usize,
        mut write_value: impl FnMut(usize, &mut Vec<u8>),
    ) -> Self {
        let mut block = Vec::with_capacity(capacity);
        for (i, name) in names.iter().enumerate() {
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(b": ");
            write_value(i, &mut block);
            block.extend_from_slice(b"\r\n");
        }
        Self { block, names }
    }

    /// The lines as they are written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.block
    }

    /// Each line (for the hyper path, which needs map entries).
    pub fn lines(&self) -> impl Iterator<Item = Line<'_>> {
        self.block.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|&b| b == b':')?;
            Some(Line {
                name: &line[..colon],
                value: line[colon + 1..].trim_ascii(),
            })
        })
    }

    /// Whether a line is named `name`, in any case.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.names
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// Where a received head's header lines are, found while it is parsed: before its bytes are
/// taken out of the read buffer (see [`RawHeaders::received`]).
#[derive(Debug)]
pub struct LineIndex(Vec<Span>);

impl LineIndex {
    /// The lines of `head`, as httparse found them (`headers` are slices of `head`).
    pub fn of<'h, 'b: 'h>(
        head: &[u8],
        headers: impl IntoIterator<Item = &'h httparse::Header<'b>>,
    ) -> Self {
        let base = head.as_ptr() as usize;
        let offset = |part: &[u8]| part.as_ptr() as usize - base;
        Self(
            headers
                .into_iter()
                .map(|h| {
                    let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
                    Span {
                        name: name..name + h.name.len(),
                        value: value..value + h.value.len(),
                    }
                })
                .collect(),
        )
    }
}

/// One relayed header.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// As the sender spelled it.
    pub name: &'a [u8],
    /// Without surrounding whitespace.
    pub value: &'a [u8],
}

impl RawHeaders {
    /// A received head's lines: `head` is its bytes, `index` where its lines are.
    pub fn received(head: Bytes, index: LineIndex) -> Self {
        Self {
            block: head,
            spans: index.0,
        }
    }

    /// No lines.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The headers in the order the sender sent them.
    pub fn lines(&self) -> impl Iterator<Item = Line<'_>> {
        self.spans.iter().map(|s| Line {
            name: self.part(&s.name),
            value: self.part(&s.value).trim_ascii(),
        })
    }

    /// The values of the lines named `name` (any case), in order. Only the names are looked at
    /// until one matches (a lookup runs several times per request).
    pub fn values<'s, 'n>(
        &'s self,
        name: &'n [u8],
    ) -> impl Iterator<Item = &'s [u8]> + use<'s, 'n> {
        self.spans
            .iter()
            .filter(move |s| {
                s.name.len() == name.len() && self.part(&s.name).eq_ignore_ascii_case(name)
            })
            .map(|s| self.part(&s.value).trim_ascii())
    }

    /// The first value of `name` (lowercase), if relayed.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.values(name.as_bytes()).next()
    }

    /// Whether a line is named `name`, in any case.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.values(name).next().is_some()
    }

    /// The bytes of a span (the spans were made with the block, so `get` always finds them).
    fn part(&self, span: &Range<usize>) -> &[u8] {
        self.block.get(span.clone()).unwrap_or_default()
    }

    /// The value bytes of `line` as a shared slice of this buffer (no copy).
    fn shared_value(&self, line: &Line<'_>) -> Bytes {
        self.block.slice_ref(line.value)
    }
}

/// Whether `map` has a header named `name` (any case). A linear scan: the proxy's own headers are
/// a handful, and hashing each relayed name would cost more.
pub fn map_has(map: &HeaderMap, name: &[u8]) -> bool {
    map.keys()
        .any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// Sets each of `lines` in `map`, replacing values of the same name.
pub fn override_into(lines: &OwnLines, map: &mut HeaderMap) {
    for line in lines.lines() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line.name),
            HeaderValue::from_bytes(line.value),
        ) {
            map.insert(name, value);
        }
    }
}

/// Adds the relayed lines to `map`, except names `map` has already (the proxy's own headers).
pub fn merge_into(raw: RawHeaders, map: &mut HeaderMap) {
    if raw.is_empty() {
        return;
    }
    let ours: Vec<HeaderName> = map.keys().cloned().collect();
    for line in raw.lines() {
        let Ok(name) = HeaderName::from_bytes(line.name) else {
            continue;
        };
        if ours.contains(&name) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_maybe_shared(raw.shared_value(&line)) {
            map.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(lines: &[(&str, &str)]) -> RawHeaders {
        let mut b = RawHeadersBuilder::with_capacity(64);
        for (name, value) in lines {
            b.push(name.as_bytes(), value.as_bytes());
        }
        b.finish()
    }

    #[test]
    fn lines_come_back_in_order_with_their_bytes() {
        let r = raw(&[
            ("Content-Type", "text/plain"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        let lines: Vec<_> = r.lines().map(|l| (l.name, l.value)).collect();
        assert_eq!(
            lines,
            [
                (&b"Content-Type"[..], &b"text/plain"[..]),
                (b"Set-Cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
            ]
        );
        assert_eq!(r.get("content-type"), Some(&b"text/plain"[..]));
        assert!(!r.contains(b"date"));
        assert!(RawHeaders::default().lines().next().is_none());
    }

    #[test]
    fn merging_keeps_the_proxys_headers_and_every_repeated_relayed_one() {
        let mut map = HeaderMap::new();
        map.insert("ratelimit", HeaderValue::from_static("\"ours\";r=1"));
        let r = raw(&[
            ("RateLimit", "\"backend\";r=9"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]);
        merge_into(r, &mut map);
        assert_eq!(map.get_all("ratelimit").iter().count(), 1);
        assert_eq!(map["ratelimit"], "\"ours\";r=1");
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(map_has(&map, b"RATELIMIT"));
        assert!(!map_has(&map, b"date"));
    }

    #[test]
    fn the_proxys_lines_replace_and_the_backends_fill_in_on_the_hyper_path() {
        let own = OwnLines::new(&["ratelimit-policy", "ratelimit"], 64, |i, out| {
            out.extend_from_slice(if i == 0 {
                b"\"ours\";q=5;w=1"
            } else {
                b"\"ours\";r=1"
            });
        });
        let relayed = raw(&[("RateLimit", "\"backend\";r=9"), ("X-A", "1")]);
        let mut map = HeaderMap::new();
        map.insert("ratelimit", HeaderValue::from_static("stale"));
        override_into(&own, &mut map);
        merge_into(relayed, &mut map);
        let ratelimit: Vec<_> = map.get_all("ratelimit").iter().collect();
        assert_eq!(ratelimit, ["\"ours\";r=1"]);
        assert_eq!(map["x-a"], "1");
        assert_eq!(map["ratelimit-policy"], "\"ours\";q=5;w=1");
        assert!(own.contains(b"RateLimit") && !own.contains(b"x-a"));
        let names: Vec<_> = own.lines().map(|l| l.name).collect();
        assert_eq!(names, [&b"ratelimit-policy"[..], b"ratelimit"]);
    }
}
