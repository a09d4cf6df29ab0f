//! Writes the Tollgate CRDs to `deploy/crds.yaml` and `charts/tollgate/crds/crds.yaml` (or to the
//! path given as the only argument, `-` for stdout).
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match tollgate_crds::crds_yaml() {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("crdgen: cannot render the CRDs: {err}");
            return ExitCode::FAILURE;
        }
    };
    let targets: Vec<String> = match std::env::args().nth(1) {
        Some(target) => vec![target],
        None => vec![
            concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds.yaml").to_owned(),
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../charts/tollgate/crds/crds.yaml"
            )
            .to_owned(),
        ],
    };
    for target in targets {
        if target == "-" {
            print!("{yaml}");
            continue;
        }
        if let Err(err) = std::fs::write(&target, &yaml) {
            eprintln!("crdgen: cannot write {target}: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
