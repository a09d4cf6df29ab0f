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

use crate::http1::client_headers::{ClientHeaders, Field};
use crate::http1::raw_headers::RawHeaders;
use crate::upstream::Upstream;

/// The pooled generic clients for backends (plain HTTP/1.1 backends use [`crate::upstream::pool`]
/// instead).
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    /// HTTP/1.1: HTTPS backends.
    pub http1: Client<HttpsConnector<HttpConnector>, RequestBody>,
    /// HTTP/2: gRPC calls and routes with `protocol: HTTP2`, h2c (prior knowledge) to http://
    /// backends and ALPN h2 over TLS, many calls on each connection.
    pub http2: std::sync::Arc<crate::upstream::h2::Http2Pool<RequestBody>>,
}

/// A client's request body on its way to the backend.
#[derive(Debug)]
pub enum RequestBody {
    /// No body: the requests Tollgate's own HTTP/1.1 engine serves (`server_h1`).
    Empty,
    /// A body streamed from a connection hyper serves.
    Streaming(Incoming),
    /// A body read whole before forwarding (a metered call, read to reserve its usage), sent
    /// once.
    Buffered(Option<Bytes>),
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
            Self::Buffered(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(http_body::Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Streaming(body) => body.is_end_stream(),
            Self::Buffered(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Empty => http_body::SizeHint::with_exact(0),
            Self::Streaming(body) => body.size_hint(),
            Self::Buffered(bytes) => {
                http_body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Header with the authenticated tenant, for backends.
pub const X_TOLLGATE_TENANT: HeaderName = HeaderName::from_static("x-tollgate-tenant");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Builds the clients: keep-alive pools, TLS trusting the Mozilla root store and `extra_roots`
/// (a private CA, or a test provider's).
pub fn client(
    extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
) -> Result<UpstreamClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots.add(cert)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // The connector sets each client's ALPN (http/1.1, or h2) on its copy of the TLS config.
    let http1 = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http.clone());
    let http2 = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http2()
        .wrap_connector(http);
    Ok(UpstreamClient {
        http1: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(http1),
        http2: std::sync::Arc::new(crate::upstream::h2::Http2Pool::new(http2)),
    })
}

/// What the rewrite needs to know about the request.
#[derive(Debug)]
pub struct ForwardContext<'a> {
    /// Backend.
    pub upstream: &'a Upstream,
    /// `X-Tollgate-Tenant` value.
    pub tenant: Option<&'a HeaderValue>,
    /// Client IP, as a header value.
    pub client_ip: &'a HeaderValue,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The authority of the request target, when it had one (HTTP/2's `:authority`, an
    /// absolute-form HTTP/1.1 target): the host the request was routed on, which RFC 9112 puts
    /// before the `Host` header. `None` for the usual origin-form request.
    pub authority: Option<http::uri::Authority>,
    /// Ask the backend for an uncompressed answer (`Accept-Encoding: identity`): a metered call's
    /// usage is read from it.
    pub identity_encoding: bool,
}

/// Rewrites a client request into the backend request. The URI is origin-form (`/path?query`) for
/// a direct HTTP/1.1 connection, or absolute (`https://host/path`) for the generic client.
pub fn upstream_request(
    mut req: Request<RequestBody>,
    raw: &RawHeaders,
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
    let client = ClientHeaders::of(req.headers(), raw);
    let mut headers = HeaderMap::with_capacity(req.headers().len() + 5);
    forwarded_headers(client, cx, |field| match field {
        Field::Typed(name, value) => {
            headers.append(name.clone(), value.clone());
        }
        // Raw lines reach this path only for a bodiless request with a method the inline
        // exchange does not retry (a POST without a body): parsed here, once.
        Field::Raw { name, value } => {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
    });
    if let RequestBody::Buffered(body) = req.body() {
        // The body read whole may have been rewritten: its length is the one sent.
        let length = body.as_ref().map_or(0, Bytes::len);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    *req.headers_mut() = headers;
    Ok(req)
}

/// The origin-form request head for a bodiless request on a direct HTTP/1.1 connection, written
/// straight from the client's request (the same rules as [`upstream_request`], no map rebuilt).
pub fn request_head<B>(req: &Request<B>, raw: &RawHeaders, cx: &ForwardContext<'_>) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(cx.upstream.base_path.as_bytes());
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    forwarded_headers(ClientHeaders::of(req.headers(), raw), cx, |field| {
        head.extend_from_slice(field.name());
        head.extend_from_slice(b": ");
        head.extend_from_slice(field.value());
        head.extend_from_slice(b"\r\n");
    });
    head.extend_from_slice(b"\r\n");
    head
}

/// Calls `emit` with each header the backend gets: `Host` (the backend's), the client's headers
/// minus hop-by-hop ones, the API key, `X-Forwarded-*` and `X-Tollgate-*`, then Tollgate's
/// `X-Tollgate-Tenant` and `X-Forwarded-For`, `-Proto` and `-Host`.
fn forwarded_headers<'a>(
    headers: ClientHeaders<'a>,
    cx: &'a ForwardContext<'_>,
    mut emit: impl FnMut(Field<'_>),
) {
    // One pass for what the rewrite needs to know first (a header named in `Connection` may come
    // before it), one to emit.
    let (mut client_host, mut prior_xff, mut names_others) = (None, None, false);
    headers.for_each(|field| {
        let name = field.name();
        if client_host.is_none() && name.eq_ignore_ascii_case(b"host") {
            client_host = Some(field);
        } else if prior_xff.is_none() && name.eq_ignore_ascii_case(b"x-forwarded-for") {
            prior_xff = Some(field.value());
        } else if name.eq_ignore_ascii_case(b"connection") {
            names_others |= HopByHop::names_others(field.value());
        }
    });
    let hop_by_hop = HopByHop {
        named: names_others.then_some(headers),
    };

    emit(Field::Typed(&header::HOST, &cx.upstream.host_header));
    // No header Tollgate reads a key from reaches the backend (a backend that checks keys itself
    // must see no key but the tenant header); `Authorization` with another scheme is the
    // backend's own credentials, and passes.
    headers.for_each(|field| {
        let name = field.name();
        if field.api_key().is_some() || replaced_or_hop_by_hop(name) || hop_by_hop.names(name) {
            return;
        }
        if cx.identity_encoding && name.eq_ignore_ascii_case(b"accept-encoding") {
            return;
        }
        // Dropped in any case and with `_` for `-`, as CGI-style backends read names.
        let injected = &cx.upstream.request_headers;
        if injected
            .iter()
            .any(|(n, _)| same_header_name(name, n.as_str().as_bytes()))
        {
            return;
        }
        emit(field);
    });
    for (name, value) in &cx.upstream.request_headers {
        emit(Field::Typed(name, value));
    }
    if cx.identity_encoding {
        emit(Field::Raw {
            name: b"accept-encoding",
            value: b"identity",
        });
    }
    if let Some(tenant) = cx.tenant {
        emit(Field::Typed(&X_TOLLGATE_TENANT, tenant));
    }
    match prior_xff {
        Some(prior) => {
            let mut v = Vec::with_capacity(prior.len() + 2 + cx.client_ip.len());
            v.extend_from_slice(prior);
            v.extend_from_slice(b", ");
            v.extend_from_slice(cx.client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
                emit(Field::Typed(&X_FORWARDED_FOR, &v));
            }
        }
        None => emit(Field::Typed(&X_FORWARDED_FOR, cx.client_ip)),
    }
    emit(Field::Typed(
        &X_FORWARDED_PROTO,
        &HeaderValue::from_static(if cx.tls { "https" } else { "http" }),
    ));
    // The host the request was routed on: the target's authority, else the Host header.
    match (&cx.authority, client_host) {
        (Some(authority), _) => emit(Field::Raw {
            name: b"x-forwarded-host",
            value: authority.as_str().as_bytes(),
        }),
        (None, Some(Field::Typed(_, host))) => emit(Field::Typed(&X_FORWARDED_HOST, host)),
        (None, Some(Field::Raw { value, .. })) => emit(Field::Raw {
            name: b"x-forwarded-host",
            value,
        }),
        (None, None) => {}
    }
}

/// Client headers Tollgate owns: dropped from requests, set only by the proxy.
const TOLLGATE_PREFIX: &[u8] = b"x-tollgate-";

/// Whether `name` is `listed` (lower case, with `-`) in any case and with `_` for any `-`.
/// CGI-style servers (wsgiref, PHP, many WSGI and Rack stacks) map `-` to `_` and fold case, so
/// to them `X_Tollgate_Tenant` is `X-Tollgate-Tenant`.
fn same_header_name(name: &[u8], listed: &[u8]) -> bool {
    name.len() == listed.len()
        && name
            .iter()
            .zip(listed)
            .all(|(&n, &l)| n.to_ascii_lowercase() == l || (n == b'_' && l == b'-'))
}

/// Whether a client header is one the proxy sets itself (`Host`, `X-Forwarded-*`,
/// `X-Tollgate-*`), carries API keys (`X-Api-Key`), or is always hop-by-hop, in any case and
/// with `_` for `-` (see [`same_header_name`]: a backend must not read a client's
/// `X_Tollgate_Tenant` as the proxy's). Sorted by length first: one or two comparisons per header
/// instead of one per listed name.
fn replaced_or_hop_by_hop(name: &[u8]) -> bool {
    let is = |listed: &[u8]| same_header_name(name, listed);
    let owned = name
        .get(..TOLLGATE_PREFIX.len())
        .is_some_and(|p| same_header_name(p, TOLLGATE_PREFIX));
    owned
        || match name.len() {
            2 => is(b"te"),
            4 => is(b"host"),
            9 => is(b"x-api-key"),
            7 => is(b"trailer") || is(b"upgrade"),
            10 => is(b"connection") || is(b"keep-alive"),
            15 => is(b"x-forwarded-for"),
            16 => is(b"x-forwarded-host") || is(b"proxy-connection"),
            17 => is(b"x-forwarded-proto") || is(b"transfer-encoding"),
            18 => is(b"proxy-authenticate"),
            19 => is(b"proxy-authorization"),
            _ => false,
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
    /// The headers, when their `Connection` names a header beyond the fixed list (the common
    /// `keep-alive` and `close` do not).
    named: Option<ClientHeaders<'a>>,
}

impl<'a> HopByHop<'a> {
    fn of(headers: ClientHeaders<'a>) -> Self {
        let names_others = headers.get_all(&header::CONNECTION).any(Self::names_others);
        Self {
            named: names_others.then_some(headers),
        }
    }

    /// Whether a `Connection` value names a header beyond the fixed list (`close` and
    /// `keep-alive` do not).
    fn names_others(connection: &[u8]) -> bool {
        raw_connection_tokens(connection).any(|token| &*token != b"close" && !Self::fixed(&token))
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

    /// Whether `name` (any case) is hop-by-hop.
    fn applies_to(&self, name: &[u8]) -> bool {
        Self::fixed_any_case(name) || self.names(name)
    }

    /// Whether `Connection` names `name` (any case).
    fn names(&self, name: &[u8]) -> bool {
        self.named.is_some_and(|headers| {
            headers
                .get_all(&header::CONNECTION)
                .flat_map(raw_connection_tokens)
                .any(|t| t.eq_ignore_ascii_case(name))
        })
    }
}

/// The tokens of a `Connection` value, lower-cased for comparison with header names; a token
/// with upper case letters is copied, the usual lower-case one is borrowed.
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
    let hop_by_hop = HopByHop::of(ClientHeaders::Map(headers));
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|&k| hop_by_hop.applies_to(k.as_str().as_bytes()))
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
    fn every_fixed_hop_by_hop_name_is_dropped_from_requests_in_any_case() {
        for name in FIXED_HOP_BY_HOP {
            assert!(
                replaced_or_hop_by_hop(name),
                "{}",
                String::from_utf8_lossy(name)
            );
            assert!(replaced_or_hop_by_hop(&name.to_ascii_uppercase()));
        }
        for name in [
            &b"Host"[..],
            b"X-Forwarded-Proto",
            b"x-tollgate-tenant",
            b"X-TOLLGATE-x",
            b"X-Api-Key",
            // `_` for `-`, as CGI-style backends read names.
            b"X_Tollgate_Tenant",
            b"x_forwarded_for",
            b"X-Forwarded_Proto",
            b"x_api_key",
            b"Transfer_Encoding",
        ] {
            assert!(
                replaced_or_hop_by_hop(name),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        for name in [
            &b"accept"[..],
            b"x-tollgate",
            b"x_tollgate",
            b"hos",
            b"tee",
            b"x-api_keys",
        ] {
            assert!(!replaced_or_hop_by_hop(name));
        }
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
            request_headers: Vec::new(),
        };
        let tenant = HeaderValue::from_static("shop/acme");
        let client_ip = HeaderValue::from_static("10.0.0.7");
        let cx = ForwardContext {
            upstream: &upstream,
            tenant: Some(&tenant),
            client_ip: &client_ip,
            tls: true,
            authority: None,
            identity_encoding: false,
        };
        let sent = [
            ("host", "api.example.com"),
            ("authorization", "Bearer secret"),
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("x-tollgate-tenant", "victim/tenant"),
            ("X-Tollgate-Anything", "x"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-proto", "gopher"),
            ("connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("accept", "a"),
            ("accept", "b"),
            // What CGI-style servers read as the proxy's headers (before: forwarded, and
            // wsgiref merged X_Tollgate_Tenant into X-Tollgate-Tenant, spoofed value first).
            ("X_Tollgate_Tenant", "victim/tenant"),
            ("x_forwarded_for", "192.0.2.66"),
            ("X-Forwarded_Host", "evil.example"),
            ("x_api_key", "another-key"),
            ("X-API-Key", "secret"),
            ("x_custom", "kept"),
        ];
        // The same request as hyper parses it (a map) and as the HTTP/1.1 engine keeps it (lines).
        let request = |as_lines: bool| {
            let mut b = Request::get("/v1/x?q=1");
            let mut lines = crate::http1::raw_headers::RawHeadersBuilder::with_capacity(256);
            for (name, value) in sent {
                if as_lines {
                    lines.push(name.as_bytes(), value.as_bytes());
                } else {
                    b = b.header(name, value);
                }
            }
            (b.body(RequestBody::Empty).expect("request"), lines.finish())
        };
        let expected = [
            ("host", "backend:8080"),
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("accept", "a"),
            ("accept", "b"),
            ("x_custom", "kept"),
            ("x-tollgate-tenant", "shop/acme"),
            ("x-forwarded-for", "192.0.2.1, 10.0.0.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        for as_lines in [false, true] {
            let (req, raw) = request(as_lines);
            let head = String::from_utf8(request_head(&req, &raw, &cx)).expect("text");
            let mut lines = head.split("\r\n");
            assert_eq!(lines.next(), Some("GET /base/v1/x?q=1 HTTP/1.1"));
            let inline: Vec<(String, String)> = lines
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.split_once(": "))
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(inline, expected, "inline head, lines: {as_lines}");

            let (req, raw) = request(as_lines);
            let rewritten = upstream_request(req, &raw, &cx, false).expect("rewritten");
            assert_eq!(rewritten.uri(), "/base/v1/x?q=1");
            let mut mapped: Vec<(String, String)> = rewritten
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        v.to_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            mapped.sort();
            let mut expected_sorted = expected.clone();
            expected_sorted.sort();
            assert_eq!(
                mapped, expected_sorted,
                "same headers, map order aside; lines: {as_lines}"
            );
        }
    }
}
