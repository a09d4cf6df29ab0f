//! Writes a synthetic configuration (plans, routes, tenants, key Secrets) as YAML to stdout, for
//! benchmarks and memory checks.
use std::process::ExitCode;

use tollgate_crds::synthetic::{Shape, synthetic_shaped};

const USAGE: &str = "\
usage: synthetic [TENANTS=10000] [ROUTES=1000] [NAMESPACE=default] [--subscriptions N=3] [--keys N=1] [--one-secret]

Writes a world of TENANTS tenants (tenant-00000..., 10 plans) and ROUTES routes (/api/NNNNN) as
multi-document YAML to stdout. Each tenant subscribes to --subscriptions routes and has --keys
API keys (key-tenant-NNNNN, then key-tenant-NNNNN-K), in a Secret of its own or, with
--one-secret, all in one Secret.";

fn main() -> ExitCode {
    match shape_and_namespace(std::env::args().skip(1)) {
        Ok(Some((shape, namespace))) => match synthetic_shaped(&namespace, &shape).to_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("synthetic: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synthetic: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The world's shape and namespace from the arguments; `None` for `--help`.
fn shape_and_namespace(
    mut args: impl Iterator<Item = String>,
) -> Result<Option<(Shape, String)>, String> {
    let number = |name: &str, value: Option<String>| -> Result<usize, String> {
        let value = value.ok_or_else(|| format!("{name} needs a number"))?;
        value
            .parse()
            .map_err(|_| format!("{name}: {value:?} is not a whole number"))
    };
    let mut shape = Shape::new(10_000, 1_000);
    let mut namespace = "default".to_owned();
    let mut position = 0;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--subscriptions" => shape.subscriptions = number("--subscriptions", args.next())?,
            "--keys" => shape.keys = number("--keys", args.next())?,
            "--one-secret" => shape.one_secret = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            _ => {
                match position {
                    0 => shape.tenants = number("TENANTS", Some(arg))?,
                    1 => shape.routes = number("ROUTES", Some(arg))?,
                    2 => namespace = arg,
                    _ => return Err(format!("unexpected argument {arg:?}")),
                }
                position += 1;
            }
        }
    }
    Ok(Some((shape, namespace)))
}
