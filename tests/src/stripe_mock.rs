//! stripe-mock, Stripe's own API test server (built by tests/testenv/provision.sh), answering
//! with its bundled fixtures except for the one subscription a test sets.
//!
//! stripe-mock is stateless: `GET /v1/subscriptions/{id}` answers its subscription fixture with
//! the id substituted. A test that needs the subscription to change restarts it with another.

use std::path::Path;

use anyhow::{Context, Result};

use crate::process::{Supervised, free_port};
use crate::testenv_bin;

/// A running stripe-mock.
#[derive(Debug)]
pub struct StripeMock {
    /// Its base URL (`http://127.0.0.1:PORT`), for `--stripe-api-base`.
    pub url: String,
    port: u16,
    process: Supervised,
}

/// A key stripe-mock accepts (`sk_test_…`).
pub const API_KEY: &str = "sk_test_tollgate";

impl StripeMock {
    /// Starts one on a free port whose subscriptions belong to `customer` with `status`.
    pub fn start(dir: &Path, customer: &str, status: &str) -> Result<Self> {
        Self::start_on(dir, free_port()?, customer, status)
    }

    /// Stops this one and starts another on the same port with `status`.
    pub fn restart(self, dir: &Path, customer: &str, status: &str) -> Result<Self> {
        let mut old = self;
        // The port must be free again before the new one binds it.
        old.process.stop_and_wait();
        Self::start_on(dir, old.port, customer, status)
    }

    fn start_on(dir: &Path, port: u16, customer: &str, status: &str) -> Result<Self> {
        let bin = testenv_bin()?;
        let bundled = std::fs::read(bin.join("stripe-mock-fixtures3.json"))
            .context("stripe-mock's fixtures (tests/testenv/provision.sh copies them)")?;
        let mut fixtures: serde_json::Value = serde_json::from_slice(&bundled)?;
        let subscription = &mut fixtures["resources"]["subscription"];
        anyhow::ensure!(subscription.is_object(), "no subscription fixture");
        subscription["customer"] = customer.into();
        subscription["status"] = status.into();
        let file = dir.join(format!("stripe-fixtures-{port}-{status}.json"));
        std::fs::write(&file, serde_json::to_vec(&fixtures)?)?;
        let log = dir.join(format!("stripe-mock-{port}.log"));
        let process = Supervised::spawn(
            "stripe-mock",
            &bin.join("stripe-mock"),
            &[
                "-http-port".into(),
                port.to_string(),
                "-fixtures".into(),
                file.display().to_string(),
            ],
            &log,
            None,
        )?;
        // Ready when it answers.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "stripe-mock did not listen on {port}: {}",
                process.log_tail()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            process,
        })
    }
}
