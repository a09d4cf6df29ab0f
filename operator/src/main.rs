use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = tollgate_operator::cli::Cli::parse();
    tollgate_operator::init_logging(cli.log_format);
    match tollgate_operator::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tollgate-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
