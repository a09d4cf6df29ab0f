use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tollgate_proxy::cli::Cli::parse();
    tollgate_proxy::init_logging(cli.log_format);
    match tollgate_proxy::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tollgate-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
