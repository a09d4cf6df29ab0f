//! The echo backend of the end-to-end tests on a real node: an HTTP/1.1 server that answers every
//! request with a JSON description of it (method, path, headers) and of who answered (the pod's
//! name from `POD_NAME`), so a test can see what the proxy forwarded and which pod served it. Each
//! request is also logged on stdout (method, path, `X-Tollgate-Tenant`): what reached the backend.
//! Shipped as a test-only image (tests/src/images.rs); it exits at once on SIGTERM.
//!
//!     echo-backend [--listen 0.0.0.0:8080]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

const USAGE: &str = "usage: echo-backend [--listen ADDRESS:PORT]   (default 0.0.0.0:8080)";

fn listen_address() -> Result<SocketAddr, String> {
    tollgate_tests::listen_argument(USAGE, "0.0.0.0:8080")
}

async fn describe(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let path = req.uri().to_string();
    // One line per request, for tests that count what reached the backend (`kubectl logs`).
    let tenant = req
        .headers()
        .get("x-tollgate-tenant")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    println!("{method} {path} tenant={tenant}");
    let body_len = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    let description = serde_json::json!({
        "pod": std::env::var("POD_NAME").unwrap_or_default(),
        "method": method,
        "path": path,
        "headers": headers,
        "bodyBytes": body_len,
    });
    let mut response = Response::new(Full::new(Bytes::from(description.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let address = match listen_address() {
        Ok(address) => address,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("echo-backend: cannot listen on {address}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("echo-backend: listening on {address}");
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                eprintln!("echo-backend: cannot watch SIGTERM: {e}");
                std::process::exit(1);
            }
        };
    loop {
        tokio::select! {
            _ = terminate.recv() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service_fn(describe))
                        .await;
                });
            }
        }
    }
}
