//! Writes a synthetic configuration (plans, routes, tenants, key Secrets) as YAML to stdout, for
//! benchmarks and memory checks: `synthetic TENANTS ROUTES [NAMESPACE]`.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize, default: usize| args.get(i).map_or(Ok(default), |v| v.parse::<usize>());
    let (Ok(tenants), Ok(routes)) = (parse(0, 10_000), parse(1, 1_000)) else {
        eprintln!("usage: synthetic [TENANTS=10000] [ROUTES=1000] [NAMESPACE=default]");
        return ExitCode::FAILURE;
    };
    let namespace = args.get(2).map_or("default", String::as_str);
    match tollgate_crds::synthetic::synthetic(namespace, tenants, routes).to_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synthetic: {e}");
            ExitCode::FAILURE
        }
    }
}
