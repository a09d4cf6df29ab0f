//! A WebSocket upgrade (`GET` with `Upgrade: websocket`, or HTTP/2's extended CONNECT made to look
//! like one), admitted and charged like any request: sent to the route's backend (over HTTP/1.1)
//! with its upgrade headers, and when the backend switches protocols (101), both connections
//! (or the client's HTTP/2 stream) are taken over and relayed ([`crate::upstream::websocket`]) in a task
//! of their own, which holds the listener's drain receiver: shutdown waits for it to close the
//! connection with a close frame.

use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use jiff::Timestamp;

use super::checks::Verdict;
use super::problem::ProblemKind;
use super::{ClientConn, Proxy, ProxyBody};
use crate::config::RouteEntry;
use crate::http1::raw_headers::RawHeaders;
use crate::quota::CounterStore;
use crate::upstream::forward::{ForwardContext, RequestBody, upstream_request};
use crate::upstream::websocket::{self, Limits};

const SEC_WEBSOCKET_KEY: header::HeaderName = header::HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: header::HeaderName =
    header::HeaderName::from_static("sec-websocket-version");
const SEC_WEBSOCKET_ACCEPT: header::HeaderName =
    header::HeaderName::from_static("sec-websocket-accept");

impl<S: CounterStore> Proxy<S> {
    /// Sends the upgrade to the route's backend; on its 101, relays the two connections.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_upgrade(
        &self,
        mut req: Request<RequestBody>,
        raw: &RawHeaders,
        v: &mut Verdict<'_>,
        route: &RouteEntry,
        client: &ClientConn,
        now: Timestamp,
        path: &str,
    ) -> (Response<ProxyBody>, Option<ProblemKind>, Option<Instant>) {
        let Some(upstream) = route.upstream.as_ref() else {
            let (resp, kind) = self
                .failed(
                    v,
                    now,
                    ProblemKind::BackendUnavailable,
                    "The API's backend URL is unusable.",
                    path,
                )
                .await;
            return (resp, kind, None);
        };
        let client_upgrade = hyper::upgrade::on(&mut req);
        let cx = ForwardContext {
            upstream,
            tenant: v.tenant.map(|t| &t.header),
            client_ip: &client.ip_header,
            tls: client.tls,
            authority: req.uri().authority().cloned(),
            identity_encoding: false,
        };
        let Ok(mut backend_req) = upstream_request(req, raw, &cx, true) else {
            let (resp, kind) = self
                .failed(
                    v,
                    now,
                    ProblemKind::BadRequest,
                    "The request target cannot be forwarded.",
                    path,
                )
                .await;
            return (resp, kind, None);
        };
        // The two hop-by-hop headers an upgrade is made of, for this hop.
        let headers = backend_req.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // An HTTP/2 client sends no key (RFC 8441 section 5): the proxy makes the one this hop
        // needs, and checks the backend's answer to it.
        let own_key = match v.websocket_over_h2 {
            true => {
                let key = websocket::new_key();
                if let Ok(value) = HeaderValue::from_str(&key) {
                    headers.insert(SEC_WEBSOCKET_KEY, value);
                }
                headers
                    .entry(SEC_WEBSOCKET_VERSION)
                    .or_insert(HeaderValue::from_static("13"));
                Some(key)
            }
            false => None,
        };
        let started = Instant::now();
        let due = started + Duration::from_millis(route.route.timeout_ms);
        let sent =
            tokio::time::timeout_at(due.into(), self.client.http1.request(backend_req)).await;
        let mut resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let err = crate::upstream::pool::UpstreamError::Connect {
                    authority: upstream.authority.clone(),
                    reason: e.to_string(),
                };
                let (resp, kind) = self.backend_failed(err, v, route, now, path).await;
                return (resp, kind, None);
            }
            Err(_) => {
                let err = crate::upstream::pool::UpstreamError::TimedOut;
                let (resp, kind) = self.backend_failed(err, v, route, now, path).await;
                return (resp, kind, None);
            }
        };
        if v.websocket_over_h2 && resp.status().is_success() {
            // Relayed, this 2xx would open the client's stream as a tunnel to nothing.
            let err = crate::upstream::pool::UpstreamError::Connect {
                authority: upstream.authority.clone(),
                reason: format!(
                    "the backend answered a WebSocket upgrade with {} instead of switching",
                    resp.status()
                ),
            };
            let (resp, kind) = self.backend_failed(err, v, route, now, path).await;
            return (resp, kind, None);
        }
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The backend refused the upgrade: its answer goes to the client as any answer.
            let resp = crate::upstream::forward::downstream_response(resp)
                .map(crate::upstream::pool::UpstreamBody::detached);
            return (self.relayed(resp, v, route, now), None, Some(started));
        }
        if let Some(key) = &own_key {
            let accepted = resp
                .headers()
                .get(SEC_WEBSOCKET_ACCEPT)
                .is_some_and(|a| a.as_bytes() == websocket::accept_for(key).as_bytes());
            if !accepted {
                let err = crate::upstream::pool::UpstreamError::Connect {
                    authority: upstream.authority.clone(),
                    reason: "the backend switched to WebSocket without the Sec-WebSocket-Accept its key calls for".to_owned(),
                };
                let (resp, kind) = self.backend_failed(err, v, route, now, path).await;
                return (resp, kind, None);
            }
        }
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        // Admitted and served: the request's own price is what it costs (as a direct response's;
        // a connection's messages are not metered).
        if let Some(mut meter) = self.meter_for(
            v,
            route,
            route.route.metering,
            StatusCode::SWITCHING_PROTOCOLS,
            (None, None),
            now,
            false,
        ) {
            meter.finish(true);
        }
        let limits = Limits {
            idle: Duration::from_millis(route.route.websocket_idle_ms),
            lifetime: Duration::from_millis(route.route.websocket_lifetime_ms),
        };
        let metrics = self.metrics.clone();
        let route_id = route.id.clone();
        let stop = client.stop.clone();
        // The connection keeps its place under --max-connections while it is relayed, and (an
        // HTTP/2 connection, whose other streams go on) counts as busy for its idle timeout.
        let place = client.place.clone();
        let busy = client.busy.get().map(|busy| (busy.0)());
        tokio::spawn(async move {
            let _held = (place, busy);
            let (Ok(client_io), Ok(backend_io)) = tokio::join!(client_upgrade, backend_upgrade)
            else {
                metrics.websocket_ended("upgrade_failed");
                return;
            };
            let opened = Instant::now();
            metrics.websockets_open.inc();
            // Counted as they go: a connection open for hours shows its traffic meanwhile.
            let to_backend = metrics
                .websocket_bytes
                .with_label_values(&[&route_id, "client_to_backend"]);
            let to_client = metrics
                .websocket_bytes
                .with_label_values(&[&route_id, "backend_to_client"]);
            let (end, _) = websocket::relay(
                hyper_util::rt::TokioIo::new(client_io),
                hyper_util::rt::TokioIo::new(backend_io),
                limits,
                stop,
                |direction, bytes| match direction {
                    websocket::Direction::FromClient => to_backend.inc_by(bytes),
                    websocket::Direction::FromBackend => to_client.inc_by(bytes),
                },
            )
            .await;
            metrics.websockets_open.dec();
            metrics.websocket_ended(end.label());
            metrics
                .websocket_duration
                .observe(opened.elapsed().as_secs_f64());
        });
        // The client gets the backend's 101 with the headers that make it one.
        let mut switching = Response::new(http_body_util::Either::Left(http_body_util::Full::new(
            bytes::Bytes::new(),
        )));
        *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        // Hop-by-hop headers the backend sent stay on its hop; the two that make the answer a
        // switch are set for the client's.
        let (parts, _) = crate::upstream::forward::downstream_response(resp).into_parts();
        *switching.headers_mut() = parts.headers;
        let headers = switching.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        if v.websocket_over_h2 {
            // HTTP/2: a 200 opens the stream as the WebSocket; the accept was this hop's.
            *switching.status_mut() = StatusCode::OK;
            switching.headers_mut().remove(SEC_WEBSOCKET_ACCEPT);
        } else {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        (switching, None, Some(started))
    }
}
