//! The echo backend of the end-to-end tests on a real node: an HTTP/1.1 server that answers every
//! request with a JSON description of it (method, path, headers) and of who answered (the pod's
//! name from `POD_NAME`), so a test can see what the proxy forwarded and which pod served it. Each
//! request is also logged on stdout (method, path, `X-Tollgate-Tenant`): what reached the backend.
//! Shipped as a test-only image (tests/src/images.rs); it exits at once on SIGTERM.
//!
//! Two more roles, for the sidecar tests:
//! - `--provider-key VALUE`: also a provider (`tollgate_tests::llm_backend`): chat completions
//!   and the like are answered as OpenAI, Anthropic or Gemini would, and refused with 401 unless
//!   `Authorization` is VALUE (the key only the gateway holds).
//! - `--call URL --times N`: an app calling a provider the way an SDK does (a chat completion
//!   POST with a placeholder key), N times, printing `status CODE` for each; exits 0 once done.
//!
//! Usage:
//!
//! ```text
//! echo-backend [--listen 0.0.0.0:8080] [--provider-key VALUE]
//! echo-backend --call URL [--times N]
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tollgate_tests::llm_backend;

const USAGE: &str = "usage: echo-backend [--listen ADDRESS:PORT] [--provider-key VALUE]   (default 0.0.0.0:8080)\n       echo-backend --call URL [--times N]";

/// What the command line asks for.
enum Role {
    Serve {
        listen: SocketAddr,
        provider_key: Option<String>,
    },
    Call {
        url: String,
        times: u32,
    },
}

fn role() -> Result<Role, String> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut provider_key, mut call, mut times) =
        ("0.0.0.0:8080".to_owned(), None, None, 1u32);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--provider-key" => provider_key = Some(value()?),
            "--call" => call = Some(value()?),
            "--times" => {
                let v = value()?;
                times = v
                    .parse()
                    .map_err(|_| format!("--times {v:?} is not a count\n{USAGE}"))?;
            }
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if let Some(url) = call {
        return Ok(Role::Call { url, times });
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: {e}\n{USAGE}"))?;
    Ok(Role::Serve {
        listen,
        provider_key,
    })
}

type AnyBody = BoxBody<Bytes, Infallible>;

async fn describe(req: Request<Incoming>) -> Response<AnyBody> {
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
    json_response(hyper::StatusCode::OK, description.to_string())
}

fn json_response(status: hyper::StatusCode, body: String) -> Response<AnyBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A provider's answer, or its 401 to a call without the key.
async fn provide(req: Request<Incoming>, key: &str) -> Response<AnyBody> {
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == key.as_bytes());
    println!(
        "{} {} provider-key={}",
        req.method(),
        req.uri(),
        if authorized {
            "valid"
        } else {
            "missing-or-wrong"
        }
    );
    if !authorized {
        return json_response(
            hyper::StatusCode::UNAUTHORIZED,
            r#"{"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}}"#
                .to_owned(),
        );
    }
    llm_backend::answer(req).await
}

async fn serve(listen: SocketAddr, provider_key: Option<String>) -> std::process::ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("echo-backend: cannot listen on {listen}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("echo-backend: listening on {listen}");
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                eprintln!("echo-backend: cannot watch SIGTERM: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    let provider_key: std::sync::Arc<Option<String>> = std::sync::Arc::new(provider_key);
    loop {
        tokio::select! {
            _ = terminate.recv() => return std::process::ExitCode::SUCCESS,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let provider_key = provider_key.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let provider_key = provider_key.clone();
                        async move {
                            Ok::<_, Infallible>(match provider_key.as_deref() {
                                Some(key) if llm_backend::handles(req.uri().path()) => provide(req, key).await,
                                _ => describe(req).await,
                            })
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

/// Calls `url` `times` times as an app's SDK would; prints each status.
async fn call(url: &str, times: u32) -> std::process::ExitCode {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        eprintln!("echo-backend: --call {url:?} is not a URL");
        return std::process::ExitCode::from(2);
    };
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let body = r#"{"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "Say hello."}]}"#;
    for _ in 0..times {
        let status = async {
            let stream = tokio::net::TcpStream::connect(&authority).await?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = Request::post(uri.clone())
                .header(hyper::header::HOST, &authority)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(
                    hyper::header::AUTHORIZATION,
                    "Bearer placeholder-the-app-has-no-key",
                )
                .body(Full::new(Bytes::from_static(body.as_bytes())))?;
            let resp = send.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<u16, Box<dyn std::error::Error + Send + Sync>>(status)
        }
        .await;
        match status {
            Ok(status) => println!("status {status}"),
            Err(e) => {
                eprintln!("echo-backend: calling {url}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match role() {
        Ok(Role::Serve {
            listen,
            provider_key,
        }) => serve(listen, provider_key).await,
        Ok(Role::Call { url, times }) => call(&url, times).await,
        Err(message) => {
            eprintln!("{message}");
            std::process::ExitCode::from(2)
        }
    }
}
