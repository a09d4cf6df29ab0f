//! Sidecars without a kubelet: a pod created with the sidecar the injection webhook would give it,
//! a token bound to that pod, and the proxy run with the injected container's arguments and
//! environment, as the kubelet would run it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::Value;
use tollgate_operator::inject::sidecar::{Template, patch, wanted};

use crate::fleet::{Fleet, logged_addresses};
use crate::process::Supervised;
use crate::{TestNamespace, workspace_binary};

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    /// The proxy process.
    pub process: Supervised,
    /// Its listener (loopback).
    pub listen: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
    /// Its state directory (unique to it: finds its process).
    pub state_dir: PathBuf,
}

/// The webhook's template, as the chart's defaults give it, with the fleet operator's CA.
pub fn template(fleet: &Fleet) -> Result<Template> {
    Ok(Template {
        image: "tollgate-proxy:test".into(),
        image_pull_policy: "IfNotPresent".into(),
        control_plane: "https://tollgate-operator.tollgate-system.svc:8443".into(),
        ca_pem: std::fs::read_to_string(fleet.ca_file())?,
        token_audience: "tollgate".into(),
        resources: [
            Some("20m".into()),
            Some("32Mi".into()),
            None,
            Some("64Mi".into()),
        ],
        admin_port: 15090,
        egress_port: 15080,
    })
}

/// What the kubelet would run for the injected container of `pod`: its arguments (with the
/// `$(VAR)`s expanded from its environment) and environment, and its pod-bound token. A shared
/// test machine needs a few things instead of the pod's own: the operator's local address,
/// loopback addresses (the pod's ports are free ports the test annotated), a temporary state
/// directory, and `extra` arguments.
pub fn run_sidecar(fleet: &Fleet, pod: &Pod, token: &str, extra: &[String]) -> Result<Sidecar> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.first())
        .context("no injected container")?;
    let dir = fleet.dir().join(format!("sidecar-{name}"));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token.trim())?;
    let mut env: Vec<(String, String)> = vec![("RUST_LOG".into(), "info".into())];
    for var in container.env.iter().flatten() {
        env.push((
            var.name.clone(),
            kubelet_value(var, container, &name, &namespace)?,
        ));
    }
    let expand = |arg: &str| {
        env.iter().fold(arg.to_owned(), |arg, (k, v)| {
            arg.replace(&format!("$({k})"), v)
        })
    };
    let mut args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|arg| {
            let arg = expand(arg);
            match arg.split_once('=') {
                Some(("--control-plane", _)) => {
                    format!("--control-plane={}", fleet.operators[0].url)
                }
                Some(("--control-plane-token-file", _)) => {
                    format!("--control-plane-token-file={}", token_file.display())
                }
                Some(("--admin-listen", _)) => "--admin-listen=127.0.0.1:0".to_owned(),
                Some(("--listen", addr)) => {
                    format!("--listen={}", addr.replace("0.0.0.0", "127.0.0.1"))
                }
                Some(("--state-dir", _)) => format!("--state-dir={}", dir.join("state").display()),
                _ => arg,
            }
        })
        .collect();
    args.extend(extra.iter().cloned());
    let log = dir.join("proxy.log");
    let process = Supervised::spawn_with_env(
        "tollgate-proxy",
        &workspace_binary("tollgate-proxy")?,
        &args,
        &log,
        None,
        &env.iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect::<Vec<_>>(),
    )?;
    let addresses = logged_addresses(&log, "tollgate-proxy serving", &["listen=", "admin="])?;
    Ok(Sidecar {
        process,
        listen: addresses[0],
        admin: addresses[1],
        state_dir: dir.join("state"),
    })
}

/// The value the kubelet gives an environment variable of the injected container; an error for
/// a source this harness does not mirror, so that it never runs a sidecar unlike the kubelet.
fn kubelet_value(
    var: &k8s_openapi::api::core::v1::EnvVar,
    container: &k8s_openapi::api::core::v1::Container,
    name: &str,
    namespace: &str,
) -> Result<String> {
    if let Some(value) = &var.value {
        return Ok(value.clone());
    }
    let source = var.value_from.as_ref();
    let field = source
        .and_then(|s| s.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    let resource = source
        .and_then(|s| s.resource_field_ref.as_ref())
        .map(|r| r.resource.as_str());
    match (field, resource) {
        (Some("metadata.name"), _) => Ok(name.to_owned()),
        (Some("metadata.namespace"), _) => Ok(namespace.to_owned()),
        // The kubelet's rule for the default divisor of 1: whole CPUs, rounded up.
        (_, Some("requests.cpu")) => {
            let request = container
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("cpu"))
                .context("requests.cpu asked for, none set")?;
            let cpus = match request.0.strip_suffix('m') {
                Some(millis) => millis.parse::<f64>()? / 1000.0,
                None => request.0.parse::<f64>()?,
            };
            Ok(cpus.ceil().to_string())
        }
        _ => anyhow::bail!("the test harness cannot mirror the kubelet for {var:?}"),
    }
}

/// Creates `pod` in `ns` with the sidecar the webhook would give it (the webhook itself is tested
/// in tests/e2e/injection.rs; one MutatingWebhookConfiguration name is allowed, so the tests do not share it), and a
/// token bound to it with the sidecar's audience.
pub async fn injected_pod(
    ns: &TestNamespace,
    template: &Template,
    pod: Value,
) -> Result<(Pod, String)> {
    let asked: Pod = serde_json::from_value(pod.clone())?;
    let annotations = asked.metadata.annotations.clone().unwrap_or_default();
    let wanted = wanted(&annotations)?.context("the pod asks for a sidecar")?;
    let ops = patch(template, &asked, &wanted)?;
    let mut injected = pod;
    let ops: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
    json_patch::patch(&mut injected, &ops)?;
    ns.kubectl_ok_stdin(&["create", "-f", "-"], &injected.to_string())?;
    let name = asked.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let created = pods.get(&name).await?;
    let uid = created.metadata.uid.clone().unwrap_or_default();
    let token = ns.kubectl_ok(&[
        "create",
        "token",
        "default",
        "--audience",
        "tollgate",
        "--duration",
        "1h",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        &name,
        "--bound-object-uid",
        &uid,
    ])?;
    Ok((created, token))
}
