//! Route matching: host first (exact, then wildcard by longest suffix, then any host), then path
//! (exact before prefix, longer prefixes first), then routes that name methods before those that
//! take any method. The most specific match wins.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tollgate_crds::path::routing_form;
use tollgate_crds::snapshot::HostMatch;

use super::route::RouteEntry;

/// Routes indexed by host.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Arc<RouteEntry>>>,
    /// (suffix such as `.example.com`, routes), longest suffix first.
    wildcard: Vec<(String, Vec<Arc<RouteEntry>>)>,
    any_host: Vec<Arc<RouteEntry>>,
}

impl RouteTable {
    /// Indexes `routes` (already in the snapshot's match order).
    pub fn new(routes: Vec<Arc<RouteEntry>>) -> Self {
        let mut table = Self::default();
        let mut wildcard: HashMap<String, Vec<Arc<RouteEntry>>> = HashMap::new();
        for route in routes {
            if route.route.hosts.is_empty() {
                table.any_host.push(route.clone());
            }
            for host in &route.route.hosts {
                match host {
                    HostMatch::Exact(name) => table
                        .exact
                        .entry(name.clone())
                        .or_default()
                        .push(route.clone()),
                    HostMatch::Wildcard(suffix) => wildcard
                        .entry(suffix.clone())
                        .or_default()
                        .push(route.clone()),
                }
            }
        }
        for list in table
            .exact
            .values_mut()
            .chain(wildcard.values_mut())
            .chain(std::iter::once(&mut table.any_host))
        {
            list.sort_by(|a, b| {
                a.route
                    .specificity()
                    .cmp(&b.route.specificity())
                    .then_with(|| a.id.cmp(&b.id))
            });
        }
        table.wildcard = wildcard.into_iter().collect();
        table
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        table
    }

    /// The route for a request. `host` is lower-case without port.
    pub fn route_for(
        &self,
        host: &str,
        path: &str,
        method: &http::Method,
    ) -> Option<&Arc<RouteEntry>> {
        // Servlet containers ignore `;` parameters: `/v1/reports;x` must find `/v1/reports`.
        let path = routing_form(path);
        let path = path.as_ref();
        let in_list = |list: &'_ [Arc<RouteEntry>]| -> Option<usize> {
            list.iter().position(|r| {
                r.route.path.matches(path)
                    && (r.route.methods.is_empty()
                        || r.route
                            .methods
                            .iter()
                            .any(|m| m.as_str() == method.as_str()))
            })
        };
        if let Some(list) = self.exact.get(host)
            && let Some(i) = in_list(list)
        {
            return list.get(i);
        }
        for (suffix, list) in &self.wildcard {
            if host.len() > suffix.len()
                && host.ends_with(suffix.as_str())
                && let Some(i) = in_list(list)
            {
                return list.get(i);
            }
        }
        in_list(&self.any_host).and_then(|i| self.any_host.get(i))
    }
}

/// The request host: the URI authority (HTTP/2, absolute-form) or the Host header, lower-cased,
/// without port. Empty when neither is present.
pub fn request_host<'a>(uri: &'a http::Uri, host_header: Option<&'a [u8]>) -> Cow<'a, str> {
    let raw = uri
        .host()
        .or_else(|| {
            host_header
                .and_then(|h| std::str::from_utf8(h).ok())
                .map(strip_port)
        })
        .unwrap_or_default()
        .trim_end_matches('.');
    // Borrowed unless it must change: hosts are almost always sent in lower case.
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal keeps its brackets: "[::1]:8080" -> "[::1]".
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;
    use tollgate_crds::resources::HttpMethod;
    use tollgate_crds::snapshot::{ObjectKey, PathMatch, Route, RouteBackend, Snapshot};

    fn route(name: &str, hosts: &[&str], path: PathMatch, methods: &[HttpMethod]) -> Route {
        Route {
            key: ObjectKey::new("ns", name),
            generation: 1,
            hosts: hosts
                .iter()
                .map(|h| match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Wildcard(suffix.to_owned()),
                    None => HostMatch::Exact((*h).to_owned()),
                })
                .collect(),
            path,
            methods: methods.to_vec(),
            backend: RouteBackend::Http {
                base_url: "http://127.0.0.1:1".into(),
            },
            timeout_ms: 1000,
            request_headers: vec![],
            metering: Default::default(),
            approval: Default::default(),
            approved_tenants: vec![],
            rejected_tenants: vec![],
            lifecycle: Default::default(),
            sunset: None,
            deprecated_at: None,
            workload_selector: None,
            caller_api: None,
            models: Default::default(),
            fallbacks: vec![],
            prompt: None,
            websocket: false,
            websocket_idle_ms: tollgate_crds::snapshot::DEFAULT_WEBSOCKET_IDLE_MS,
            websocket_lifetime_ms: tollgate_crds::snapshot::DEFAULT_WEBSOCKET_LIFETIME_MS,
            http2: false,
        }
    }

    fn table(routes: Vec<Route>) -> ProxyConfig {
        let mut snapshot = Snapshot {
            routes,
            ..Default::default()
        };
        snapshot.sort_routes();
        ProxyConfig::build(1, snapshot)
    }

    fn matched(c: &ProxyConfig, host: &str, path: &str, method: http::Method) -> Option<String> {
        c.routes
            .route_for(host, path, &method)
            .map(|r| r.route.key.name.clone())
    }

    #[test]
    fn most_specific_route_wins() {
        use http::Method;
        let c = table(vec![
            route("any", &[], PathMatch::Prefix("/".into()), &[]),
            route(
                "wild",
                &["*.example.com"],
                PathMatch::Prefix("/v1".into()),
                &[],
            ),
            route(
                "exact-prefix",
                &["api.example.com"],
                PathMatch::Prefix("/v1".into()),
                &[],
            ),
            route(
                "exact-long",
                &["api.example.com"],
                PathMatch::Prefix("/v1/chat".into()),
                &[],
            ),
            route(
                "exact-path",
                &["api.example.com"],
                PathMatch::Exact("/v1/chat/models".into()),
                &[],
            ),
            route(
                "post-only",
                &["api.example.com"],
                PathMatch::Prefix("/v1/chat".into()),
                &[HttpMethod::POST],
            ),
        ]);
        assert_eq!(
            matched(&c, "api.example.com", "/v1/chat/models", Method::GET).as_deref(),
            Some("exact-path")
        );
        assert_eq!(
            matched(&c, "api.example.com", "/v1/chat/x", Method::POST).as_deref(),
            Some("post-only")
        );
        assert_eq!(
            matched(&c, "api.example.com", "/v1/chat/x", Method::GET).as_deref(),
            Some("exact-long")
        );
        assert_eq!(
            matched(&c, "api.example.com", "/v1/other", Method::GET).as_deref(),
            Some("exact-prefix")
        );
        assert_eq!(
            matched(&c, "eu.example.com", "/v1/other", Method::GET).as_deref(),
            Some("wild")
        );
        assert_eq!(
            matched(&c, "example.com", "/v1/other", Method::GET).as_deref(),
            Some("any")
        );
        // An exact host with no matching path falls back to wildcard and then any-host routes.
        assert_eq!(
            matched(&c, "api.example.com", "/health", Method::GET).as_deref(),
            Some("any")
        );
    }

    #[test]
    fn no_route_when_method_or_path_do_not_match() {
        let c = table(vec![route(
            "r",
            &["api.example.com"],
            PathMatch::Exact("/a".into()),
            &[HttpMethod::GET],
        )]);
        assert_eq!(
            matched(&c, "api.example.com", "/a", http::Method::DELETE),
            None
        );
        assert_eq!(
            matched(&c, "api.example.com", "/a/b", http::Method::GET),
            None
        );
        assert_eq!(
            matched(&c, "other.example.com", "/a", http::Method::GET),
            None
        );
    }

    fn host_of(req: &http::Request<()>) -> Cow<'_, str> {
        let host = req.headers().get(http::header::HOST);
        request_host(req.uri(), host.map(http::HeaderValue::as_bytes))
    }

    #[test]
    fn host_is_taken_without_port_and_lower_cased() {
        let req = http::Request::get("/x")
            .header("host", "API.Example.com:8080")
            .body(())
            .expect("request");
        assert_eq!(host_of(&req), "api.example.com");
        let req = http::Request::get("/x")
            .header("host", "[::1]:8080")
            .body(())
            .expect("request");
        assert_eq!(host_of(&req), "[::1]");
        for (host, expected) in [
            ("api.example.com.", "api.example.com"),
            ("Api.Example.Com.:443", "api.example.com"),
            ("[::1]", "[::1]"),
            ("", ""),
        ] {
            let req = http::Request::get("/x")
                .header("host", host)
                .body(())
                .expect("request");
            assert_eq!(host_of(&req), expected, "{host:?}");
        }
        // An absolute-form target's host wins over the Host header.
        let req = http::Request::get("http://Abs.Example/x")
            .header("host", "other")
            .body(())
            .expect("request");
        assert_eq!(host_of(&req), "abs.example");
    }
}
