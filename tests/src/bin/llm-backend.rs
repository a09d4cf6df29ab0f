//! The provider-compatible test backend (`tollgate_tests::llm_backend`) as a process, for the
//! benchmarks: OpenAI Chat Completions, Anthropic Messages and Gemini, JSON and streamed.
//!
//!     llm-backend [--listen 127.0.0.1:PORT]   (default 127.0.0.1:8090)

use std::net::SocketAddr;

const USAGE: &str = "usage: llm-backend [--listen ADDRESS:PORT]   (default 127.0.0.1:8090)";

fn listen_address() -> Result<SocketAddr, String> {
    tollgate_tests::listen_argument(USAGE, "127.0.0.1:8090")
}

fn main() -> std::process::ExitCode {
    let addr = match listen_address() {
        Ok(addr) => addr,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("llm-backend: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match tollgate_tests::llm_backend::LlmBackend::start_on(addr).await {
            Ok(backend) => {
                println!("llm-backend listening on {}", backend.addr);
                // Serves until killed.
                std::future::pending::<std::process::ExitCode>().await
            }
            Err(e) => {
                eprintln!("llm-backend: cannot listen on {addr}: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
