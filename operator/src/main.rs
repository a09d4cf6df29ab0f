use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = tollgate_operator::cli::Cli::parse();
    tollgate_operator::init_logging(cli.log_format);
    match tollgate_operator::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = tollgate_crds::error_chain::error_chain(e.as_ref());
            tracing::error!("{message}");
            eprintln!("tollgate-operator: {message}");
            ExitCode::FAILURE
        }
    }
}
