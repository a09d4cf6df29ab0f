//! Prometheus (Debian's) scrapes a running operator and proxy; the documented metrics are there;
//! promtool accepts both endpoints and the chart's alerting rules, and their unit tests pass.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tollgate_tests::fleet::{Fleet, eventually, get};
use tollgate_tests::process::{Supervised, free_port};
use tollgate_tests::repo_root;

fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Result<std::process::Output> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus) is needed")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)?;
    }
    Ok(child.wait_with_output()?)
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    let rules = repo_root().join("charts/tollgate/files/alerts.yaml");
    let out = promtool(&["check", "rules", &rules.display().to_string()], None)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let tests = repo_root().join("tests/prometheus/alerts_test.yaml");
    let out = promtool(&["test", "rules", &tests.display().to_string()], None)?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn prometheus_scrapes_the_operator_and_the_proxy() -> Result<()> {
    let mut fleet = Fleet::new("prom").await?;
    fleet.start_operator().await?;
    fleet.wait_leader(0).await?;
    fleet.ns.apply_ok(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: hello}\nspec: {match: {pathPrefix: /hello}, backend: {directResponse: {status: 200}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: k, labels: {tollgate.dev/api-key: \"true\"}}\nstringData: {apiKey: key-prom}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec: {apiKeys: [{secretRef: {name: k}}], subscriptions: [{apiRouteRef: {name: hello}}]}\n",
    )?;
    fleet.start_proxy("proxy-a")?;
    fleet.wait_status(0, "/hello", "key-prom", 200).await?;
    let (operator, proxy) = (fleet.operators[0].admin, fleet.proxies[0].admin);
    for admin in [operator, proxy] {
        let body = get(admin, "/metrics", &[]).await?.body;
        let out = promtool(&["check", "metrics"], Some(&body))?;
        assert!(
            out.status.success(),
            "promtool check metrics {admin}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let dir = fleet.dir().join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: tollgate-operator\n  static_configs: [{{targets: ['{operator}']}}]\n\
             - job_name: tollgate-proxy\n  static_configs: [{{targets: ['{proxy}']}}]\n"
        ),
    )?;
    let port = free_port()?;
    let _prometheus = Supervised::spawn(
        "prometheus",
        std::path::Path::new("/usr/bin/prometheus"),
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &dir.join("prometheus.log"),
        None,
    )?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for metric in [
        "tollgate_proxy_requests_total",
        "tollgate_proxy_config_version",
        "tollgate_proxy_control_plane_connected",
        "tollgate_proxy_request_duration_seconds_bucket",
        "tollgate_operator_snapshot_version",
        "tollgate_operator_connected_proxies",
        "tollgate_operator_leader",
        "tollgate_operator_compile_duration_seconds_count",
    ] {
        eventually(
            Duration::from_secs(30),
            &format!("Prometheus to have {metric}"),
            || async {
                let reply = get(addr, &format!("/api/v1/query?query={metric}"), &[])
                    .await
                    .ok()?;
                let doc = reply.json();
                doc["data"]["result"]
                    .as_array()
                    .filter(|r| !r.is_empty())
                    .map(|_| ())
            },
        )
        .await?;
    }
    // The alert expressions evaluate against real series: the fleet is healthy, so the
    // "behind config" expression is empty.
    let q = "min(tollgate_proxy_config_version)%20%3C%20max(tollgate_operator_snapshot_version)";
    let reply = get(addr, &format!("/api/v1/query?query={q}"), &[]).await?;
    assert_eq!(
        reply.json()["data"]["result"].as_array().map(Vec::len),
        Some(0),
        "{:?}",
        reply.json()
    );
    Ok(())
}
