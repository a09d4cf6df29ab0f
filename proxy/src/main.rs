use std::process::ExitCode;

use clap::Parser;

// mimalloc: fewer cycles per request than glibc malloc for the proxy's many small, short-lived
// allocations (measured in docs/performance.md); built without transparent huge pages (below).
#[global_allocator]
static GLOBAL: tollgate_alloc::Allocator = tollgate_alloc::Allocator;

fn main() -> ExitCode {
    no_transparent_huge_pages();
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

/// No transparent huge pages: each 2 MiB page counts whole in the resident memory however little
/// of it is in use, 8 MiB of a proxy's 20 MiB at rest, for no throughput a benchmark here could
/// see (docs/performance.md, "Transparent huge pages"). mimalloc is built not to ask for them
/// (its `no_thp` feature); this covers kernels set to give them unasked (`enabled=always`).
fn no_transparent_huge_pages() {
    // Best effort: a kernel without the prctl only costs memory.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}
