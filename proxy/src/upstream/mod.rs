//! The outbound side: the request a backend sees (`forward`), the pooled HTTP/1.1 connections
//! to backends (`pool`) and the exchange written on them (`h1`), the HTTP/2 connections (`h2`),
//! and WebSockets relayed once upgraded (`websocket`).

pub mod forward;
pub mod h1;
pub mod h2;
pub mod pool;
pub mod websocket;

use http::HeaderValue;

/// A parsed backend base URL.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port.
    pub authority: http::uri::Authority,
    /// Path prefix to prepend (no trailing slash; empty for none).
    pub base_path: String,
    /// Host header value for the backend.
    pub host_header: HeaderValue,
    /// Headers added to every request (provider credentials from Secrets); a client's header of
    /// the same name is dropped.
    pub request_headers: Vec<(http::HeaderName, HeaderValue)>,
}

/// The backend a route forwards to, from its base URL (`None` if unusable).
pub fn parse_upstream(base_url: &str) -> Option<Upstream> {
    let uri: http::Uri = base_url.parse().ok()?;
    let scheme = uri.scheme()?.clone();
    let authority = uri.authority()?.clone();
    let base_path = uri.path().trim_end_matches('/').to_owned();
    let host_header = HeaderValue::from_str(authority.as_str()).ok()?;
    Some(Upstream {
        scheme,
        authority,
        base_path,
        host_header,
        request_headers: Vec::new(),
    })
}
