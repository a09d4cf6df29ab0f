//! Forwarding to backends over a pooled hyper client, bodies streamed both ways.
//!
//! Rewrites the request as a reverse proxy must (RFC 9110 section 7.6): hop-by-hop headers and the
//! headers named in `Connection` are dropped, the API key header is removed, client-sent
//! `X-Tollgate-*` headers are stripped (a caller can never impersonate a tenant), and
//! `X-Tollgate-Tenant`, `X-Forwarded-For`, `-Proto` and `-Host` are set.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::auth::{KeySource, X_API_KEY};
use crate::config::Upstream;

/// The pooled client used for every backend.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// A client's request body on its way to the backend.
#[derive(Debug)]
pub enum RequestBody {
    /// No body: the requests Tollgate's own HTTP/1.1 engine serves (`server_h1`).
    Empty,
    /// A body streamed from a connection hyper serves.
    Streaming(Incoming),
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Empty => http_body::SizeHint::with_exact(0),
            Self::Streaming(body) => body.size_hint(),
        }
    }
}

/// Header with the authenticated tenant, for backends.
pub const X_TOLLGATE_TENANT: HeaderName = HeaderName::from_static("x-tollgate-tenant");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Builds the client: keep-alive pool, HTTP/1.1 to backends, TLS with the Mozilla root store.
pub fn client() -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https)
}

/// What the rewrite needs to know about the request.
#[derive(Debug)]
pub struct ForwardContext<'a> {
    /// Backend.
    pub upstream: &'a Upstream,
    /// `X-Tollgate-Tenant` value.
    pub tenant: Option<&'a HeaderValue>,
    /// Where the API key came from.
    pub key_source: Option<KeySource>,
    /// Client IP, as a header value.
    pub client_ip: &'a HeaderValue,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

/// Rewrites a client request into the backend request. The URI is origin-form (`/path?query`) for
/// a direct HTTP/1.1 connection, or absolute (`https://host/path`) for the generic client.
pub fn upstream_request(
    mut req: Request<RequestBody>,
    cx: &ForwardContext<'_>,
    absolute: bool,
) -> Result<Request<RequestBody>, http::Error> {
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let uri = if absolute {
        Uri::builder()
            .scheme(cx.upstream.scheme.clone())
            .authority(cx.upstream.authority.clone())
            .path_and_query(format!("{}{}", cx.upstream.base_path, path_and_query))
            .build()?
    } else if cx.upstream.base_path.is_empty() {
        // The client's path and query as they came (a reference-counted clone, no copy).
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = None;
        parts.authority = None;
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        Uri::from_parts(parts).map_err(http::Error::from)?
    } else {
        Uri::builder()
            .path_and_query(format!("{}{}", cx.upstream.base_path, path_and_query))
            .build()?
    };
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let mut headers = HeaderMap::with_capacity(req.headers().len() + 5);
    forwarded_headers(req.headers(), cx, |name, value| {
        headers.append(name.clone(), value.clone());
    });
    *req.headers_mut() = headers;
    Ok(req)
}

/// The origin-form request head for a bodiless request on a direct HTTP/1.1 connection, written
/// straight from the client's request (the same rules as [`upstream_request`], no map rebuilt).
pub fn request_head<B>(req: &Request<B>, cx: &ForwardContext<'_>) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(cx.upstream.base_path.as_bytes());
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    forwarded_headers(req.headers(), cx, |name, value| {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    });
    head.extend_from_slice(b"\r\n");
    head
}

/// Calls `emit` with each header the backend gets: `Host` (the backend's), the client's headers
/// minus hop-by-hop ones, the API key, `X-Forwarded-*` and `X-Tollgate-*`, then Tollgate's
/// `X-Tollgate-Tenant` and `X-Forwarded-For`, `-Proto` and `-Host`.
fn forwarded_headers(
    headers: &HeaderMap,
    cx: &ForwardContext<'_>,
    mut emit: impl FnMut(&HeaderName, &HeaderValue),
) {
    emit(&header::HOST, &cx.upstream.host_header);
    let key_header = match cx.key_source {
        Some(KeySource::Authorization) => Some(header::AUTHORIZATION.as_str()),
        Some(KeySource::XApiKey) => Some(X_API_KEY),
        None => None,
    };
    let hop_by_hop = HopByHop::of(headers);
    for (name, value) in headers {
        let replaced = *name == header::HOST
            || *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_PROTO
            || *name == X_FORWARDED_HOST
            || name.as_str().starts_with("x-tollgate-");
        if replaced || key_header == Some(name.as_str()) || hop_by_hop.applies_to(name) {
            continue;
        }
        emit(name, value);
    }
    if let Some(tenant) = cx.tenant {
        emit(&X_TOLLGATE_TENANT, tenant);
    }
    match headers.get(&X_FORWARDED_FOR) {
        Some(prior) => {
            let mut v = Vec::with_capacity(prior.len() + 2 + cx.client_ip.len());
            v.extend_from_slice(prior.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(cx.client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
                emit(&X_FORWARDED_FOR, &v);
            }
        }
        None => emit(&X_FORWARDED_FOR, cx.client_ip),
    }
    emit(
        &X_FORWARDED_PROTO,
        &HeaderValue::from_static(if cx.tls { "https" } else { "http" }),
    );
    if let Some(host) = headers.get(header::HOST) {
        emit(&X_FORWARDED_HOST, host);
    }
}

/// Drops hop-by-hop headers from a backend response before it goes to the client.
pub fn downstream_response<B>(mut resp: Response<B>) -> Response<B> {
    remove_hop_by_hop(resp.headers_mut());
    resp
}

/// Always hop-by-hop, in lower case.
const FIXED_HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
    b"transfer-encoding",
];

/// Which headers of a message are hop-by-hop (RFC 9110 section 7.6.1): the fixed list, plus
/// `Transfer-Encoding` (recomputed for the next hop) and every name listed in `Connection`.
pub(crate) struct HopByHop<'a> {
    /// `Connection`'s values, when they name a header beyond the fixed list (the common
    /// `keep-alive` and `close` do not).
    named: Option<http::header::GetAll<'a, HeaderValue>>,
}

impl<'a> HopByHop<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let connection = headers.get_all(header::CONNECTION);
        let names_others = connection
            .iter()
            .flat_map(connection_tokens)
            .any(|token| &*token != b"close" && !Self::fixed(&token));
        Self {
            named: names_others.then_some(connection),
        }
    }

    /// The fixed list, by lower-case name (header names in a map are lower case).
    pub(crate) fn fixed(name: &[u8]) -> bool {
        FIXED_HOP_BY_HOP.contains(&name)
    }

    /// [`Self::fixed`] for a name as it arrived, in any case.
    pub(crate) fn fixed_any_case(name: &[u8]) -> bool {
        FIXED_HOP_BY_HOP
            .iter()
            .any(|fixed| fixed.eq_ignore_ascii_case(name))
    }

    fn applies_to(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        Self::fixed(name)
            || self.named.as_ref().is_some_and(|values| {
                values
                    .iter()
                    .flat_map(connection_tokens)
                    .any(|t| *t == *name)
            })
    }
}

/// The tokens of a `Connection` value, lower-cased for comparison with header names; a token
/// with upper case letters is copied, the usual lower-case one is borrowed.
fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = Cow<'_, [u8]>> {
    raw_connection_tokens(value.as_bytes())
}

/// [`connection_tokens`] of a raw header value.
pub(crate) fn raw_connection_tokens(value: &[u8]) -> impl Iterator<Item = Cow<'_, [u8]>> {
    value.split(|&b| b == b',').map(|token| {
        let token = token.trim_ascii();
        if token.iter().any(u8::is_ascii_uppercase) {
            Cow::Owned(token.to_ascii_lowercase())
        } else {
            Cow::Borrowed(token)
        }
    })
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Find what is present in one scan, then remove just that: most messages carry none, or
    // only `Connection: keep-alive`.
    let hop_by_hop = HopByHop::of(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|&k| hop_by_hop.applies_to(k))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn connection_tokens_match_any_case_and_spacing() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" X-Hop-One ,x-hop-two"),
        );
        h.insert("x-hop-one", HeaderValue::from_static("1"));
        h.insert("x-hop-two", HeaderValue::from_static("2"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-hop-three", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-hop-three"]
        );
    }

    #[test]
    fn both_forwarding_paths_rewrite_the_headers_alike() {
        let upstream = Upstream {
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("backend:8080"),
            base_path: "/base".into(),
            host_header: HeaderValue::from_static("backend:8080"),
        };
        let tenant = HeaderValue::from_static("shop/acme");
        let client_ip = HeaderValue::from_static("10.0.0.7");
        let cx = ForwardContext {
            upstream: &upstream,
            tenant: Some(&tenant),
            key_source: Some(KeySource::Authorization),
            client_ip: &client_ip,
            tls: true,
        };
        let request = || {
            Request::get("/v1/x?q=1")
                .header("host", "api.example.com")
                .header("authorization", "Bearer secret")
                .header("x-tollgate-tenant", "victim/tenant")
                .header("X-Tollgate-Anything", "x")
                .header("x-forwarded-for", "192.0.2.1")
                .header("x-forwarded-proto", "gopher")
                .header("connection", "keep-alive, X-Hop")
                .header("x-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("te", "trailers")
                .header("accept", "a")
                .header("accept", "b")
                .body(RequestBody::Empty)
                .expect("request")
        };
        let expected = [
            ("host", "backend:8080"),
            ("accept", "a"),
            ("accept", "b"),
            ("x-tollgate-tenant", "shop/acme"),
            ("x-forwarded-for", "192.0.2.1, 10.0.0.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
        ];
        let head = String::from_utf8(request_head(&request(), &cx)).expect("text");
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("GET /base/v1/x?q=1 HTTP/1.1"));
        let inline: Vec<(String, String)> = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        let rewritten = upstream_request(request(), &cx, false).expect("rewritten");
        assert_eq!(rewritten.uri(), "/base/v1/x?q=1");
        let mapped: Vec<(String, String)> = rewritten
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(inline, expected);
        let mut mapped_sorted = mapped.clone();
        mapped_sorted.sort();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        assert_eq!(
            mapped_sorted, expected_sorted,
            "same headers, map order aside"
        );
    }
}
