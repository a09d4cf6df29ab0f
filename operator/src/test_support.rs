//! What unit tests of several modules share.

/// A client of an API server that is down: a loopback port nothing listens on.
pub fn unreachable_api_server() -> kube::Client {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}").parse().expect("a URL");
    kube::Client::try_from(kube::Config::new(url)).expect("a client")
}
