//! Writes the Tollgate CRDs to `deploy/crds.yaml` (or the path given as the only argument, `-` for stdout).
use std::process::ExitCode;

fn main() -> ExitCode {
    let target = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds.yaml").to_owned());
    let yaml = match tollgate_crds::crds_yaml() {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("crdgen: cannot render the CRDs: {err}");
            return ExitCode::FAILURE;
        }
    };
    if target == "-" {
        print!("{yaml}");
        return ExitCode::SUCCESS;
    }
    match std::fs::write(&target, yaml) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crdgen: cannot write {target}: {err}");
            ExitCode::FAILURE
        }
    }
}
