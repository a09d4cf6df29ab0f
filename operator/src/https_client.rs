//! The HTTP client the operator calls out with (Stripe's API, billing sinks, owners'
//! webhooks): HTTPS with the Mozilla roots, or plain HTTP for a test server or an in-cluster
//! receiver; HTTP/1.1.

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A client sending bodies of type `B`.
pub type HttpsClient<B> = Client<hyper_rustls::HttpsConnector<HttpConnector>, B>;

/// A new client (each keeps its own connection pool).
pub fn build<B>() -> HttpsClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}
