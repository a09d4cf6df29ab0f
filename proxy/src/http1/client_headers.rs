//! The client's request headers as the proxy reads them: hyper's map (HTTP/2, and HTTP/1.1
//! connections hyper serves), or the header lines Tollgate's HTTP/1.1 engine kept as they
//! arrived. The engine builds no map: a map per request (an allocation, a name lookup, a hash and
//! an insert per header, then the drop) cost more than the few lookups the proxy makes.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::http1::raw_headers::RawHeaders;

/// A request's headers.
#[derive(Debug, Clone, Copy)]
pub enum ClientHeaders<'a> {
    /// Parsed by hyper.
    Map(&'a HeaderMap),
    /// As received by the HTTP/1.1 engine (validated by httparse).
    Raw(&'a RawHeaders),
}

/// A header that must appear at most once appeared more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// One client header.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    /// From a map: forwarding to another map clones it without parsing it again.
    Typed(&'a HeaderName, &'a HeaderValue),
    /// From raw lines, the name as the client spelled it.
    Raw {
        /// Name.
        name: &'a [u8],
        /// Value, trimmed.
        value: &'a [u8],
    },
}

impl<'a> Field<'a> {
    /// The API key this field carries, if it is one Tollgate reads keys from: `Authorization`
    /// with the Bearer scheme, or `X-Api-Key` (see `pipeline::auth`). Such fields are never
    /// forwarded.
    pub fn api_key(self) -> Option<&'a [u8]> {
        let (name, value) = (self.name(), self.value());
        if name.eq_ignore_ascii_case(b"authorization") {
            (value.len() >= 7 && value[..7].eq_ignore_ascii_case(b"bearer "))
                .then(|| value[7..].trim_ascii())
        } else if name.eq_ignore_ascii_case(b"x-api-key") {
            Some(value.trim_ascii())
        } else {
            None
        }
    }

    /// The name (lower case from a map, as sent from raw lines).
    pub fn name(self) -> &'a [u8] {
        match self {
            Self::Typed(name, _) => name.as_str().as_bytes(),
            Self::Raw { name, .. } => name,
        }
    }

    /// The value.
    pub fn value(self) -> &'a [u8] {
        match self {
            Self::Typed(_, value) => value.as_bytes(),
            Self::Raw { value, .. } => value,
        }
    }
}

impl<'a> ClientHeaders<'a> {
    /// The raw lines when the engine kept any, else the map.
    pub fn of(map: &'a HeaderMap, raw: &'a RawHeaders) -> Self {
        if raw.is_empty() {
            Self::Map(map)
        } else {
            Self::Raw(raw)
        }
    }

    /// The first value of `name`.
    pub fn get(self, name: &HeaderName) -> Option<&'a [u8]> {
        match self {
            Self::Map(map) => map.get(name).map(HeaderValue::as_bytes),
            Self::Raw(raw) => raw.get(name.as_str()),
        }
    }

    /// The value of `name` if it is sent at most once.
    pub fn single(self, name: &HeaderName) -> Result<Option<&'a [u8]>, Repeated> {
        let mut found = None;
        let mut seen = |value: &'a [u8]| match found {
            Some(_) => Err(Repeated),
            None => {
                found = Some(value);
                Ok(())
            }
        };
        match self {
            Self::Map(map) => map
                .get_all(name)
                .iter()
                .try_for_each(|v| seen(v.as_bytes()))?,
            Self::Raw(raw) => raw.values(name.as_str().as_bytes()).try_for_each(seen)?,
        }
        Ok(found)
    }

    /// Every value of `name`, in order.
    pub fn get_all(self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        let (map, raw) = match self {
            Self::Map(map) => (
                Some(map.get_all(name).iter().map(HeaderValue::as_bytes)),
                None,
            ),
            Self::Raw(raw) => (None, Some(raw.values(name.as_str().as_bytes()))),
        };
        map.into_iter().flatten().chain(raw.into_iter().flatten())
    }

    /// Each header, in order.
    pub fn for_each(self, mut f: impl FnMut(Field<'a>)) {
        match self {
            Self::Map(map) => map.iter().for_each(|(n, v)| f(Field::Typed(n, v))),
            Self::Raw(raw) => raw.lines().for_each(|l| {
                f(Field::Raw {
                    name: l.name,
                    value: l.value,
                });
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::raw_headers::RawHeadersBuilder;

    #[test]
    fn a_map_and_raw_lines_read_the_same() {
        let pairs = [("Host", "a.example"), ("Accept", "x"), ("accept", "y")];
        let mut map = HeaderMap::new();
        let mut raw = RawHeadersBuilder::with_capacity(64);
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_static(v),
            );
            raw.push(n.as_bytes(), v.as_bytes());
        }
        let raw = raw.finish();
        let none = RawHeaders::default();
        for headers in [
            ClientHeaders::of(&map, &none),
            ClientHeaders::of(&map, &raw),
        ] {
            assert_eq!(headers.get(&http::header::HOST), Some(&b"a.example"[..]));
            assert_eq!(headers.get(&http::header::COOKIE), None);
            assert_eq!(
                headers.single(&http::header::HOST),
                Ok(Some(&b"a.example"[..]))
            );
            assert_eq!(headers.single(&http::header::COOKIE), Ok(None));
            assert_eq!(headers.single(&http::header::ACCEPT), Err(Repeated));
            let accept: Vec<_> = headers.get_all(&http::header::ACCEPT).collect();
            assert_eq!(accept, [b"x", b"y"]);
            let mut names = Vec::new();
            headers.for_each(|f| names.push(f.name().to_ascii_lowercase()));
            assert_eq!(names, [&b"host"[..], b"accept", b"accept"]);
        }
        assert!(matches!(
            ClientHeaders::of(&map, &raw),
            ClientHeaders::Raw(_)
        ));
    }
}
