//! What an annotated pod asks for, and the native sidecar (an init container with `restartPolicy:
//! Always`) that gives it: started before the app's containers, ready before they start, and
//! stopped after them, so a Job's pod still completes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource, ResourceFieldSelector,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::annotations as a;

/// The injected container's name; a pod that has one is left as it is.
pub const CONTAINER: &str = "tollgate-proxy";
/// The volume with the ServiceAccount token the sidecar presents to the operator.
const TOKEN_VOLUME: &str = "tollgate-token";
/// The sidecar's state directory (counters, the last configuration).
const STATE_VOLUME: &str = "tollgate-state";
const TOKEN_DIR: &str = "/var/run/secrets/tollgate";
const STATE_DIR: &str = "/var/lib/tollgate";

/// Why a pod that asks for a sidecar cannot get one: the pod is refused with this message, so
/// that a typo never leaves an app running without the plans it was meant to enforce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// An annotation's value is not what it must be.
    #[error("annotation {name}: {problem}")]
    Annotation {
        /// The annotation.
        name: &'static str,
        /// What is wrong, and what is expected.
        problem: String,
    },
    /// The pod already uses a port the sidecar needs.
    #[error("the sidecar needs port {port} ({what}), and container {container} declares it")]
    PortTaken {
        /// The port.
        port: u16,
        /// What the sidecar uses it for.
        what: &'static str,
        /// The container that declares it.
        container: String,
    },
}

/// Which way the sidecar faces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Guards the pod's API: listens on the pod's service port, forwards to the app on localhost.
    Ingress {
        /// The port clients (the Service) reach the pod on.
        listen: u16,
        /// The app's port, on localhost.
        app: u16,
    },
    /// Meters the app's own calls to providers: listens on localhost only.
    Egress {
        /// The port the app calls on 127.0.0.1.
        listen: u16,
        /// The Tenant (in the pod's namespace) whose plan the calls are charged to.
        tenant: String,
    },
}

/// What a pod's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The direction and its ports.
    pub mode: Mode,
    /// Resource overrides: (requests.cpu, requests.memory, limits.cpu, limits.memory).
    pub resources: [Option<String>; 4],
}

/// Defaults for every sidecar, from the operator's flags (the chart's values).
#[derive(Debug, Clone)]
pub struct Template {
    /// The proxy image.
    pub image: String,
    /// Its pull policy.
    pub image_pull_policy: String,
    /// The operator's configuration stream, as sidecars reach it.
    pub control_plane: String,
    /// The CA of the operator's serving certificate (PEM), given to the sidecar in an
    /// environment variable: it is public, and the sidecar's namespace cannot mount the
    /// operator's Secret.
    pub ca_pem: String,
    /// The audience of the ServiceAccount token the sidecar presents.
    pub token_audience: String,
    /// Default resources: (requests.cpu, requests.memory, limits.cpu, limits.memory).
    pub resources: [Option<String>; 4],
    /// The sidecar's admin port (metrics, probes), on every pod address.
    pub admin_port: u16,
    /// The egress sidecar's port on localhost when the pod names none.
    pub egress_port: u16,
}

/// The annotations' request, `None` when the pod does not ask for a sidecar.
pub fn wanted(annotations: &BTreeMap<String, String>) -> Result<Option<Wanted>, InjectError> {
    let Some(kind) = annotations.get(a::INJECT) else {
        return Ok(None);
    };
    let port = |name: &'static str| -> Result<Option<u16>, InjectError> {
        annotations
            .get(name)
            .map(|v| match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(InjectError::Annotation {
                    name,
                    problem: format!("{v:?} is not a port (1-65535)"),
                }),
            })
            .transpose()
    };
    let required = |name: &'static str, port: Option<u16>| {
        port.ok_or(InjectError::Annotation {
            name,
            problem: format!("required with {}: {kind}", a::INJECT),
        })
    };
    let mode = match kind.trim() {
        "ingress" => {
            let listen = required(a::LISTEN_PORT, port(a::LISTEN_PORT)?)?;
            let app = required(a::APP_PORT, port(a::APP_PORT)?)?;
            if listen == app {
                return Err(InjectError::Annotation {
                    name: a::APP_PORT,
                    problem: format!(
                        "the app must listen on another port than the sidecar's {listen}"
                    ),
                });
            }
            Mode::Ingress { listen, app }
        }
        "egress" => {
            let tenant = annotations
                .get(a::TENANT)
                .map(|t| t.trim().to_owned())
                .filter(|t| is_dns_label(t))
                .ok_or(InjectError::Annotation {
                    name: a::TENANT,
                    problem: "required with tollgate.dev/inject: egress: the name of the Tenant (in the pod's namespace) the calls are charged to".to_owned(),
                })?;
            let listen = port(a::LISTEN_PORT)?.unwrap_or(0);
            Mode::Egress { listen, tenant }
        }
        other => {
            return Err(InjectError::Annotation {
                name: a::INJECT,
                problem: format!("{other:?} is neither ingress nor egress"),
            });
        }
    };
    let mut resources: [Option<String>; 4] = Default::default();
    for (slot, name) in resources.iter_mut().zip(a::RESOURCES) {
        if let Some(v) = annotations.get(name) {
            let v = v.trim();
            if !is_quantity(v) {
                return Err(InjectError::Annotation {
                    name,
                    problem: format!("{v:?} is not a quantity (like 50m, 0.5, 64Mi)"),
                });
            }
            *slot = Some(v.to_owned());
        }
    }
    Ok(Some(Wanted { mode, resources }))
}

/// The JSON patch (RFC 6902) that adds the sidecar to `pod`; empty when the pod has it already.
pub fn patch(template: &Template, pod: &Pod, wanted: &Wanted) -> Result<Vec<Value>, InjectError> {
    let Some(spec) = &pod.spec else {
        return Ok(Vec::new());
    };
    let init = spec.init_containers.as_deref().unwrap_or_default();
    if init
        .iter()
        .chain(&spec.containers)
        .any(|c| c.name == CONTAINER)
    {
        return Ok(Vec::new());
    }
    // On the node's network, the sidecar's ports and localhost would be the node's: an egress
    // sidecar's identity (every request on 127.0.0.1 is the tenant's) would be anyone's there.
    if spec.host_network == Some(true) {
        return Err(InjectError::Annotation {
            name: a::INJECT,
            problem:
                "a pod on the host's network (hostNetwork: true) cannot have a Tollgate sidecar"
                    .to_owned(),
        });
    }
    let mode = match &wanted.mode {
        Mode::Egress { listen: 0, tenant } => Mode::Egress {
            listen: template.egress_port,
            tenant: tenant.clone(),
        },
        m => m.clone(),
    };
    let listen = match &mode {
        Mode::Ingress { listen, .. } | Mode::Egress { listen, .. } => *listen,
    };
    // The sidecar's own two ports, and the app's, must differ.
    let app = match &mode {
        Mode::Ingress { app, .. } => Some(*app),
        Mode::Egress { .. } => None,
    };
    if listen == template.admin_port || app == Some(template.admin_port) {
        return Err(InjectError::Annotation {
            name: if listen == template.admin_port {
                a::LISTEN_PORT
            } else {
                a::APP_PORT
            },
            problem: format!(
                "port {} is the sidecar's admin port (metrics and probes); choose another",
                template.admin_port
            ),
        });
    }
    for (port, what) in [
        (listen, "its listener"),
        (template.admin_port, "its admin port"),
    ] {
        let declared = init.iter().chain(&spec.containers).find(|c| {
            c.ports
                .iter()
                .flatten()
                .any(|p| p.container_port == i32::from(port))
        });
        if let Some(c) = declared {
            return Err(InjectError::PortTaken {
                port,
                what,
                container: c.name.clone(),
            });
        }
    }
    let resources = resources(&template.resources, &wanted.resources)?;
    let container = sidecar(template, &mode, &resources);
    let mut ops = Vec::new();
    // First among the init containers: the proxy is up before anything else in the pod runs.
    let container = serde_json::to_value(container).unwrap_or(Value::Null);
    if spec.init_containers.is_none() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}));
    }
    // The token volume needs a ServiceAccount: the one the ServiceAccount admission plugin
    // would have named, where it is not enabled.
    if spec.service_account_name.is_none() {
        ops.push(json!({"op": "add", "path": "/spec/serviceAccountName", "value": "default"}));
    }
    let volumes = [token_volume(template), state_volume()]
        .map(|v| serde_json::to_value(v).unwrap_or(Value::Null));
    if spec.volumes.is_none() {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    } else {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    }
    // Says what was injected, for people and for the operator (which workload this sidecar
    // serves). `~1` is `/` in a JSON pointer.
    let injected = match &mode {
        Mode::Ingress { listen, app } => format!("ingress listen={listen} app={app}"),
        Mode::Egress { listen, tenant } => format!("egress listen={listen} tenant={tenant}"),
    };
    if pod.metadata.annotations.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    ops.push(json!({"op": "add", "path": "/metadata/annotations/tollgate.dev~1injected", "value": injected}));
    Ok(ops)
}

/// The pod's resource overrides over the defaults, kept consistent: a request raised above a
/// default limit raises that limit, a limit lowered below a default request lowers that request;
/// a pod whose own request exceeds its own limit is refused.
fn resources(
    defaults: &[Option<String>; 4],
    overrides: &[Option<String>; 4],
) -> Result<[Option<String>; 4], InjectError> {
    let mut merged: [Option<String>; 4] =
        std::array::from_fn(|i| overrides[i].clone().or_else(|| defaults[i].clone()));
    // (request, limit) slots: cpu, memory.
    for (request, limit) in [(0, 2), (1, 3)] {
        let (Some(r), Some(l)) = (&merged[request], &merged[limit]) else {
            continue;
        };
        if amount(r) <= amount(l) {
            continue;
        }
        match (overrides[request].is_some(), overrides[limit].is_some()) {
            (true, false) => merged[limit] = merged[request].clone(),
            (false, true) => merged[request] = merged[limit].clone(),
            _ => {
                return Err(InjectError::Annotation {
                    name: a::RESOURCES[request],
                    problem: format!("{r} is more than the limit {l}"),
                });
            }
        }
    }
    Ok(merged)
}

/// A quantity in base units (cores, bytes), for comparing a request with a limit.
fn amount(quantity: &str) -> f64 {
    let digits = quantity.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let number: f64 = digits.parse().unwrap_or(0.0);
    let scale = match &quantity[digits.len()..] {
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    };
    number * scale
}

/// Whether a quantity (`0`, `0m`, `0.0`) is zero; the API server validates the rest.
fn is_zero(quantity: &str) -> bool {
    quantity
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse::<f64>()
        .is_ok_and(|v| v == 0.0)
}

fn sidecar(template: &Template, mode: &Mode, resources: &[Option<String>; 4]) -> Container {
    let (listen, bind) = match mode {
        Mode::Ingress { listen, .. } => (*listen, "0.0.0.0"),
        // Only the pod's own containers reach it.
        Mode::Egress { listen, .. } => (*listen, "127.0.0.1"),
    };
    let field = |path: &str| EnvVar {
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut env = vec![
        EnvVar {
            name: "POD_NAME".into(),
            ..field("metadata.name")
        },
        EnvVar {
            name: "POD_NAMESPACE".into(),
            ..field("metadata.namespace")
        },
        EnvVar {
            name: "TOLLGATE_CONTROL_PLANE_CA_PEM".into(),
            value: Some(template.ca_pem.clone()),
            ..EnvVar::default()
        },
    ];
    // As many runtime workers as CPUs requested (rounded up): the default, one per CPU of the
    // node, gives a sidecar that asked for 20m dozens of idle threads on a large node. A request
    // of zero, or none, keeps the default (the downward API would say 0, which is no count).
    if resources[0].as_deref().is_some_and(|cpu| !is_zero(cpu)) {
        env.push(EnvVar {
            name: "TOLLGATE_WORKER_THREADS".into(),
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some(CONTAINER.into()),
                    resource: "requests.cpu".into(),
                    divisor: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    let resource = |i: usize| resources[i].clone();
    let pair = |cpu: Option<String>, memory: Option<String>| {
        let map: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), Quantity(v?))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    let probe = |failure_threshold| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/readyz".into()),
            port: IntOrString::Int(i32::from(template.admin_port)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(1),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    };
    Container {
        name: CONTAINER.into(),
        image: Some(template.image.clone()),
        image_pull_policy: Some(template.image_pull_policy.clone()),
        // A native sidecar: runs for the pod's life, and the app starts once it is started.
        restart_policy: Some("Always".into()),
        args: Some(vec![
            format!("--control-plane={}", template.control_plane),
            format!("--control-plane-token-file={TOKEN_DIR}/token"),
            format!("--listen={bind}:{listen}"),
            format!("--admin-listen=0.0.0.0:{}", template.admin_port),
            format!("--state-dir={STATE_DIR}"),
            // The name the operator knows a sidecar by (its token names the pod); the kubelet
            // expands the variables from the environment above.
            "--proxy-name=$(POD_NAMESPACE)/$(POD_NAME)".to_owned(),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("tollgate-admin".into()),
            container_port: i32::from(template.admin_port),
            ..ContainerPort::default()
        }])
        .map(|mut ports| {
            if let Mode::Ingress { listen, .. } = mode {
                ports.insert(
                    0,
                    ContainerPort {
                        name: Some("tollgate".into()),
                        container_port: i32::from(*listen),
                        ..ContainerPort::default()
                    },
                );
            }
            ports
        }),
        // The app starts once the sidecar has its configuration (a minute at most to get it).
        startup_probe: Some(probe(60)),
        readiness_probe: Some(probe(3)),
        resources: Some(ResourceRequirements {
            requests: pair(resource(0), resource(1)),
            limits: pair(resource(2), resource(3)),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: STATE_VOLUME.into(),
                mount_path: STATE_DIR.into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

/// The pod's ServiceAccount token for the operator's audience, rotated by the kubelet: how the
/// sidecar proves which pod it serves.
fn token_volume(template: &Template) -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(template.token_audience.clone()),
                    expiration_seconds: Some(3600),
                    path: "token".into(),
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn state_volume() -> Volume {
    Volume {
        name: STATE_VOLUME.into(),
        empty_dir: Some(Default::default()),
        ..Volume::default()
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes quantity, loosely: digits with an optional fraction and suffix.
fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.parse::<f64>().is_ok_and(|n| n >= 0.0)
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn template() -> Template {
        Template {
            image: "tollgate-proxy:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            control_plane: "https://tollgate-operator.tollgate-system.svc:8443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\n...\n".into(),
            token_audience: "tollgate".into(),
            resources: [
                Some("20m".into()),
                Some("32Mi".into()),
                None,
                Some("64Mi".into()),
            ],
            admin_port: 15090,
            egress_port: 15080,
        }
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "app"}, "spec": spec})).expect("pod")
    }

    /// `pod` with `ops` applied, as the API server does.
    fn applied(pod: &Pod, ops: Vec<Value>) -> Pod {
        let mut doc = serde_json::to_value(pod).expect("json");
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).expect("patch");
        json_patch::patch(&mut doc, &patch).expect("the patch applies");
        serde_json::from_value(doc).expect("still a pod")
    }

    #[test]
    fn annotations_are_read_and_a_wrong_one_is_named() {
        assert_eq!(wanted(&annotations(&[("other", "x")])), Ok(None));
        let ingress = wanted(&annotations(&[
            (a::INJECT, "ingress"),
            (a::LISTEN_PORT, "8080"),
            (a::APP_PORT, "8081"),
            (a::RESOURCES[3], "128Mi"),
        ]));
        assert_eq!(
            ingress,
            Ok(Some(Wanted {
                mode: Mode::Ingress {
                    listen: 8080,
                    app: 8081
                },
                resources: [None, None, None, Some("128Mi".into())],
            }))
        );
        for (pairs, at_fault) in [
            (&[(a::INJECT, "sideways")][..], a::INJECT),
            (
                &[(a::INJECT, "ingress"), (a::APP_PORT, "8081")][..],
                a::LISTEN_PORT,
            ),
            (
                &[
                    (a::INJECT, "ingress"),
                    (a::LISTEN_PORT, "80x"),
                    (a::APP_PORT, "8081"),
                ][..],
                a::LISTEN_PORT,
            ),
            (
                &[
                    (a::INJECT, "ingress"),
                    (a::LISTEN_PORT, "8080"),
                    (a::APP_PORT, "8080"),
                ][..],
                a::APP_PORT,
            ),
            (&[(a::INJECT, "egress")][..], a::TENANT),
            (
                &[(a::INJECT, "egress"), (a::TENANT, "Team A")][..],
                a::TENANT,
            ),
            (
                &[
                    (a::INJECT, "egress"),
                    (a::TENANT, "team-a"),
                    (a::RESOURCES[0], "lots"),
                ][..],
                a::RESOURCES[0],
            ),
        ] {
            match wanted(&annotations(pairs)) {
                Err(InjectError::Annotation { name, .. }) => {
                    assert_eq!(name, at_fault, "{pairs:?}")
                }
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_sidecar_is_a_native_sidecar_first_in_line_and_injected_once() {
        let app = pod(
            json!({"containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8081}]}]}),
        );
        let wanted = Wanted {
            mode: Mode::Ingress {
                listen: 8080,
                app: 8081,
            },
            resources: [None, None, None, Some("128Mi".into())],
        };
        let ops = patch(&template(), &app, &wanted).expect("patch");
        let injected = applied(&app, ops);
        let spec = injected.spec.as_ref().expect("spec");
        let init = spec.init_containers.as_ref().expect("init containers");
        let sidecar = &init[0];
        assert_eq!(
            (sidecar.name.as_str(), sidecar.restart_policy.as_deref()),
            (CONTAINER, Some("Always"))
        );
        let args = sidecar.args.clone().unwrap_or_default();
        assert!(
            args.contains(&"--listen=0.0.0.0:8080".to_owned()),
            "{args:?}"
        );
        let resources = sidecar.resources.as_ref().expect("resources");
        assert_eq!(
            resources.limits.as_ref().and_then(|l| l.get("memory")),
            Some(&Quantity("128Mi".into())),
            "the pod's override"
        );
        assert_eq!(
            resources.requests.as_ref().and_then(|l| l.get("cpu")),
            Some(&Quantity("20m".into())),
            "the default"
        );
        let env: BTreeMap<&str, &EnvVar> = sidecar
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let workers = env["TOLLGATE_WORKER_THREADS"]
            .value_from
            .as_ref()
            .and_then(|v| v.resource_field_ref.as_ref())
            .map(|r| (r.container_name.as_deref(), r.resource.as_str()));
        assert_eq!(workers, Some((Some(CONTAINER), "requests.cpu")));
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, [TOKEN_VOLUME, STATE_VOLUME]);
        assert!(
            injected
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a[a::INJECTED] == "ingress listen=8080 app=8081")
        );
        // A second pass (a re-invocation, a pod re-submitted) changes nothing.
        assert_eq!(patch(&template(), &injected, &wanted), Ok(Vec::new()));

        // Existing init containers and volumes are kept, the sidecar goes first.
        let busy = pod(json!({
            "initContainers": [{"name": "migrate", "image": "app"}],
            "containers": [{"name": "app", "image": "app"}],
            "volumes": [{"name": "data", "emptyDir": {}}]}));
        let egress = Wanted {
            mode: Mode::Egress {
                listen: 0,
                tenant: "team-a".into(),
            },
            resources: Default::default(),
        };
        let injected = applied(&busy, patch(&template(), &busy, &egress).expect("patch"));
        let spec = injected.spec.expect("spec");
        let init: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(init, [CONTAINER, "migrate"]);
        assert_eq!(spec.volumes.map(|v| v.len()), Some(3));
        let args = spec.init_containers.expect("init")[0]
            .args
            .clone()
            .unwrap_or_default();
        assert!(
            args.contains(&"--listen=127.0.0.1:15080".to_owned()),
            "egress listens on localhost only: {args:?}"
        );
    }

    #[test]
    fn workers_follow_the_cpu_request_unless_it_is_zero_or_absent() {
        let workers = |cpu: Option<&str>| {
            let c = sidecar(
                &template(),
                &Mode::Egress {
                    listen: 15080,
                    tenant: "t".into(),
                },
                &[cpu.map(str::to_owned), None, None, None],
            );
            c.env
                .iter()
                .flatten()
                .any(|e| e.name == "TOLLGATE_WORKER_THREADS")
        };
        assert!(workers(Some("20m")));
        assert!(workers(Some("2")));
        for none in [None, Some("0"), Some("0m"), Some("0.0")] {
            assert!(!workers(none), "{none:?}: the downward API would say 0");
        }
    }

    #[test]
    fn the_sidecars_admin_port_is_not_given_away_and_resources_stay_consistent() {
        let app = pod(json!({"containers": [{"name": "app", "image": "app"}]}));
        let ingress = |listen, app| Wanted {
            mode: Mode::Ingress { listen, app },
            resources: Default::default(),
        };
        for (wanted, at_fault) in [
            (ingress(15090, 8081), a::LISTEN_PORT),
            (ingress(8080, 15090), a::APP_PORT),
        ] {
            match patch(&template(), &app, &wanted) {
                Err(InjectError::Annotation { name, .. }) => assert_eq!(name, at_fault),
                other => panic!("{wanted:?}: {other:?}"),
            }
        }
        let limits = |overrides: [Option<&str>; 4]| {
            resources(
                &template().resources,
                &overrides.map(|o| o.map(str::to_owned)),
            )
        };
        // A request above the default limit raises the limit; a limit below the default
        // request lowers the request.
        assert_eq!(
            limits([None, Some("128Mi"), None, None]),
            Ok([
                Some("20m".into()),
                Some("128Mi".into()),
                None,
                Some("128Mi".into())
            ])
        );
        assert_eq!(
            limits([None, None, Some("10m"), None]).map(|r| r[0].clone()),
            Ok(Some("10m".into()))
        );
        // The pod's own request over its own limit is refused, naming the request.
        match limits([None, Some("1Gi"), None, Some("512Mi")]) {
            Err(InjectError::Annotation { name, .. }) => assert_eq!(name, a::RESOURCES[1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_port_the_pod_already_uses_is_refused() {
        let app = pod(
            json!({"containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}]}),
        );
        let wanted = Wanted {
            mode: Mode::Ingress {
                listen: 8080,
                app: 8081,
            },
            resources: Default::default(),
        };
        assert_eq!(
            patch(&template(), &app, &wanted),
            Err(InjectError::PortTaken {
                port: 8080,
                what: "its listener",
                container: "app".into()
            })
        );
    }

    #[test]
    fn a_pod_on_the_hosts_network_is_refused() {
        let app =
            pod(json!({"hostNetwork": true, "containers": [{"name": "app", "image": "app"}]}));
        let wanted = Wanted {
            mode: Mode::Egress {
                listen: 0,
                tenant: "team-ml".into(),
            },
            resources: Default::default(),
        };
        let refused = patch(&template(), &app, &wanted).expect_err("refused");
        assert!(refused.to_string().contains("hostNetwork"), "{refused}");
    }
}
