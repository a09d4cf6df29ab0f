//! Sidecar injection: a mutating admission webhook that gives annotated pods, in namespaces that
//! opted in, a tollgate-proxy native sidecar.
//!
//! - [`annotations`]: what a pod (and its namespace) says.
//! - [`sidecar`]: what the annotations ask for, and the JSON patch that adds the sidecar.
//! - [`webhook`]: the HTTPS endpoint the API server calls (`POST /inject`), on every replica.
//! - [`ca_bundle`]: keeps the MutatingWebhookConfiguration's `caBundle` equal to the operator's
//!   serving CA, so the API server trusts the endpoint.
//!
//! Where the webhook may act is decided by its configuration (the chart's): only namespaces
//! labelled `tollgate.dev/injection: enabled`, never kube-system or the operator's own namespace,
//! `failurePolicy: Fail` there (a pod that asked for a sidecar never runs without it) and nowhere
//! else. The webhook checks the namespace too, in case a hand-written configuration is wider.

pub mod ca_bundle;
pub mod sidecar;
pub mod webhook;

/// The annotations and labels injection reads.
pub mod annotations {
    /// On a pod: `ingress` or `egress`.
    pub const INJECT: &str = "tollgate.dev/inject";
    /// On a pod: the port the sidecar listens on (ingress: the pod's service port, required;
    /// egress: on 127.0.0.1, default 15080).
    pub const LISTEN_PORT: &str = "tollgate.dev/listen-port";
    /// On an ingress pod: the app's port on localhost (required).
    pub const APP_PORT: &str = "tollgate.dev/app-port";
    /// On an egress pod: the Tenant (in the pod's namespace) its calls are charged to.
    pub const TENANT: &str = "tollgate.dev/tenant";
    /// On a pod: resource overrides for the sidecar, in this order: requests.cpu,
    /// requests.memory, limits.cpu, limits.memory.
    pub const RESOURCES: [&str; 4] = [
        "tollgate.dev/proxy-cpu",
        "tollgate.dev/proxy-memory",
        "tollgate.dev/proxy-cpu-limit",
        "tollgate.dev/proxy-memory-limit",
    ];
    /// Set on an injected pod: what was injected.
    pub const INJECTED: &str = "tollgate.dev/injected";
    /// On a namespace: `enabled` opts it in.
    pub const NAMESPACE_LABEL: &str = "tollgate.dev/injection";
}
