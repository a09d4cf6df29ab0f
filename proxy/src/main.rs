use std::process::ExitCode;

use clap::Parser;

// mimalloc: fewer cycles per request than glibc malloc for the proxy's many small, short-lived
// allocations (measured in docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = tollgate_proxy::cli::Cli::parse();
    tollgate_proxy::init_logging(cli.log_format);
    match tollgate_proxy::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = tollgate_crds::error_chain::error_chain(e.as_ref());
            tracing::error!("{message}");
            eprintln!("tollgate-proxy: {message}");
            ExitCode::FAILURE
        }
    }
}
