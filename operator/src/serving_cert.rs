//! The configuration stream's serving certificate: read from a Secret, or generated once
//! (self-signed, so it is its own CA) and stored in that Secret for every replica and proxy to use.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// PEM certificate and key.
#[derive(Debug, Clone)]
pub struct ServingCert {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
    /// The CA that clients trust it by (`ca.crt`; the certificate itself when self-signed).
    pub ca_pem: Vec<u8>,
}

/// Loads the certificate from `namespace/name`, creating it if missing.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
    sans: &[String],
) -> Result<ServingCert> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    for _ in 0..3 {
        if let Some(secret) = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading Secret {namespace}/{name}"))?
        {
            return from_secret(&secret)
                .with_context(|| format!("Secret {namespace}/{name} lacks tls.crt/tls.key"));
        }
        let generated = generate(namespace, sans)?;
        let mut data = BTreeMap::new();
        data.insert("tls.crt".to_owned(), ByteString(generated.cert_pem.clone()));
        data.insert("tls.key".to_owned(), ByteString(generated.key_pem.clone()));
        data.insert("ca.crt".to_owned(), ByteString(generated.cert_pem.clone()));
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "tollgate".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "generated the configuration stream's serving certificate");
                return Ok(generated);
            }
            // Another replica created it at the same time: use theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("creating Secret {namespace}/{name}")),
        }
    }
    anyhow::bail!("could not read or create Secret {namespace}/{name}")
}

fn from_secret(secret: &Secret) -> Option<ServingCert> {
    let data = secret.data.as_ref()?;
    let cert_pem = data.get("tls.crt")?.0.clone();
    Some(ServingCert {
        ca_pem: data
            .get("ca.crt")
            .map_or_else(|| cert_pem.clone(), |c| c.0.clone()),
        cert_pem,
        key_pem: data.get("tls.key")?.0.clone(),
    })
}

fn generate(namespace: &str, extra: &[String]) -> Result<ServingCert> {
    let mut names: Vec<String> = vec![
        "tollgate-operator".into(),
        format!("tollgate-operator.{namespace}"),
        format!("tollgate-operator.{namespace}.svc"),
        format!("tollgate-operator.{namespace}.svc.cluster.local"),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    names.extend(extra.iter().cloned());
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tollgate-operator");
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok(ServingCert {
        cert_pem: cert.pem().into_bytes(),
        ca_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
    })
}

/// A rustls server configuration for the certificate.
pub fn server_config(cert: &ServingCert) -> Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert.cert_pem)
        .collect::<Result<_, _>>()
        .context("parsing tls.crt")?;
    let key = PrivateKeyDer::from_pem_slice(&cert.key_pem).context("parsing tls.key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("tls.crt and tls.key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
