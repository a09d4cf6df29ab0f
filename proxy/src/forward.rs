//! Forwarding to backends over a pooled hyper client, bodies streamed both ways.
//!
//! Rewrites the request as a reverse proxy must (RFC 9110 section 7.6): hop-by-hop headers and the
//! headers named in `Connection` are dropped, the API key header is removed, client-sent
//! `X-Tollgate-*` headers are stripped (a caller can never impersonate a tenant), and
//! `X-Tollgate-Tenant`, `X-Forwarded-For`, `-Proto` and `-Host` are set.

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

    let headers = req.headers_mut();
    let original_host = headers.get(header::HOST).cloned();
    remove_hop_by_hop(headers);
    strip_tollgate_headers(headers);
    match cx.key_source {
        Some(KeySource::Authorization) => {
            headers.remove(header::AUTHORIZATION);
        }
        Some(KeySource::XApiKey) => {
            headers.remove(X_API_KEY);
        }
        None => {}
    }
    if let Some(tenant) = cx.tenant {
        headers.insert(X_TOLLGATE_TENANT, tenant.clone());
    }
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prior) => {
            let mut v = Vec::with_capacity(prior.len() + 2 + cx.client_ip.len());
            v.extend_from_slice(prior);
            v.extend_from_slice(b", ");
            v.extend_from_slice(cx.client_ip.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(v)).ok()
        }
        None => Some(cx.client_ip.clone()),
    };
    if let Some(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if cx.tls { "https" } else { "http" }),
    );
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(header::HOST, cx.upstream.host_header.clone());
    Ok(req)
}

/// Drops hop-by-hop headers from a backend response before it goes to the client.
pub fn downstream_response<B>(mut resp: Response<B>) -> Response<B> {
    remove_hop_by_hop(resp.headers_mut());
    resp
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none, or only `Connection: keep-alive`: find what is present in one
    // scan, then remove just that (a hashed removal per known name cost more than the rest).
    let named = |k: &HeaderName| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|token| {
                token
                    .trim_ascii()
                    .eq_ignore_ascii_case(k.as_str().as_bytes())
            })
    };
    let has_connection = headers.contains_key(header::CONNECTION);
    // Transfer-Encoding is recomputed for the next hop.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|&k| {
            k == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(k) || (has_connection && named(k))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

fn strip_tollgate_headers(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-tollgate-"))
        .cloned()
        .collect();
    for name in ours {
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
    fn client_tollgate_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-tollgate-tenant",
            HeaderValue::from_static("victim/tenant"),
        );
        h.insert("X-Tollgate-Anything", HeaderValue::from_static("x"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_tollgate_headers(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-other"]
        );
    }
}
