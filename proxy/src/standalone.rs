//! Standalone mode: the same YAML users would `kubectl apply`, read from a directory.
//!
//! Every `*.yaml`/`*.yml` file in the directory (not recursive) is read as a multi-document stream
//! of ApiRoute, Tenant, QuotaPolicy and v1 Secret manifests; other kinds are skipped with a warning;
//! objects without a namespace are in `default`. A file that fails to parse keeps its last good
//! version (the error names the file and line), so a typo never takes down what already works.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use tollgate_crds::compile::{Compiled, DEFAULT_NAMESPACE, Objects, compile};
use tollgate_crds::resources::{ApiRoute, QuotaPolicy, Tenant};

/// One object read from a manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// An ApiRoute.
    Route(Box<ApiRoute>),
    /// A Tenant.
    Tenant(Box<Tenant>),
    /// A QuotaPolicy.
    Plan(Box<QuotaPolicy>),
    /// A Secret.
    Secret(Box<Secret>),
}

/// A problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Reads a manifest directory, remembering the last good content of every file.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    last_good: BTreeMap<PathBuf, Vec<Manifest>>,
    fingerprint: Vec<(PathBuf, SystemTime, u64)>,
}

/// The result of one read.
#[derive(Debug)]
pub struct Load {
    /// Compiled snapshot and diagnostics.
    pub compiled: Compiled,
    /// Files that failed to parse (their last good content was used).
    pub file_errors: Vec<FileError>,
    /// Non-fatal notes (skipped kinds, duplicates).
    pub warnings: Vec<String>,
}

impl ManifestDir {
    /// A manifest directory; fails if it cannot be listed.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read the manifest directory {}", dir.display()))?;
        Ok(Self {
            dir,
            last_good: BTreeMap::new(),
            fingerprint: Vec::new(),
        })
    }

    /// Whether any file was added, removed or modified since the last [`ManifestDir::load`].
    pub fn changed(&self) -> bool {
        self.scan().map(|f| f != self.fingerprint).unwrap_or(true)
    }

    fn scan(&self) -> Result<Vec<(PathBuf, SystemTime, u64)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .with_context(|| format!("listing {}", self.dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                continue;
            }
            let meta = std::fs::metadata(&path)?;
            if meta.is_file() {
                files.push((
                    path,
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                ));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Reads every file and compiles the result.
    pub fn load(&mut self) -> Result<Load> {
        let files = self.scan()?;
        let mut file_errors = Vec::new();
        let mut warnings = Vec::new();
        if files.is_empty() {
            warnings.push(format!(
                "no *.yaml or *.yml files in {} (subdirectories are not read): every request \
                 gets 404 until manifests appear there",
                self.dir.display()
            ));
        }
        let mut current = BTreeMap::new();
        for (path, _, _) in &files {
            match parse_file(path, &mut warnings) {
                Ok(manifests) => {
                    current.insert(path.clone(), manifests);
                }
                Err(error) => {
                    if let Some(previous) = self.last_good.get(path) {
                        current.insert(path.clone(), previous.clone());
                    }
                    file_errors.push(error);
                }
            }
        }
        self.last_good = current;
        self.fingerprint = files;
        let compiled = self.compile(&mut warnings);
        Ok(Load {
            compiled,
            file_errors,
            warnings,
        })
    }

    fn compile(&self, warnings: &mut Vec<String>) -> Compiled {
        // Later files win on duplicates, as with `kubectl apply -f DIR`.
        let mut routes: HashMap<(String, String), &ApiRoute> = HashMap::new();
        let mut tenants: HashMap<(String, String), &Tenant> = HashMap::new();
        let mut plans: HashMap<(String, String), &QuotaPolicy> = HashMap::new();
        let mut secrets: HashMap<(String, String), &Secret> = HashMap::new();
        for (path, manifests) in &self.last_good {
            for m in manifests {
                let (kind, replaced) = match m {
                    Manifest::Route(r) => ("ApiRoute", routes.insert(id(&r.metadata), r).is_some()),
                    Manifest::Tenant(t) => ("Tenant", tenants.insert(id(&t.metadata), t).is_some()),
                    Manifest::Plan(p) => {
                        ("QuotaPolicy", plans.insert(id(&p.metadata), p).is_some())
                    }
                    Manifest::Secret(s) => ("Secret", secrets.insert(id(&s.metadata), s).is_some()),
                };
                if replaced {
                    warnings.push(format!(
                        "{}: {kind} defined again; this definition wins",
                        path.display()
                    ));
                }
            }
        }
        compile(&Objects {
            routes: routes.into_values().collect(),
            tenants: tenants.into_values().collect(),
            plans: plans.into_values().collect(),
            secrets: secrets.into_values().collect(),
        })
    }
}

fn id(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn parse_file(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<Manifest>, FileError> {
    let err = |line: Option<usize>, message: String| FileError {
        file: path.to_owned(),
        line,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(None, e.to_string()))?;
    let mut manifests = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let mut value = serde_yaml::Value::deserialize(document)
            .map_err(|e| err(e.location().map(|l| l.line()), e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let line_hint = document_line(&text, index);
        default_namespace(&mut value);
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let api_version = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let invalid = |e: serde_yaml::Error| err(line_hint, format!("{kind}: {e}"));
        let mut unknown = Vec::new();
        let manifest = match (api_version.as_str(), kind.as_str()) {
            ("tollgate.dev/v1alpha1", "ApiRoute") => {
                Manifest::Route(Box::new(typed(value, &mut unknown).map_err(invalid)?))
            }
            ("tollgate.dev/v1alpha1", "Tenant") => {
                Manifest::Tenant(Box::new(typed(value, &mut unknown).map_err(invalid)?))
            }
            ("tollgate.dev/v1alpha1", "QuotaPolicy") => {
                Manifest::Plan(Box::new(typed(value, &mut unknown).map_err(invalid)?))
            }
            ("v1", "Secret") => {
                Manifest::Secret(Box::new(typed(value, &mut unknown).map_err(invalid)?))
            }
            _ => {
                warnings.push(format!(
                    "{}:{}: skipping {api_version} {kind}: standalone mode reads ApiRoute, Tenant and QuotaPolicy (tollgate.dev/v1alpha1) and v1 Secret",
                    path.display(),
                    line_hint.unwrap_or(1)
                ));
                continue;
            }
        };
        if manifest_name(&manifest).is_empty() {
            return Err(err(line_hint, format!("{kind} without metadata.name")));
        }
        for field in unknown {
            warnings.push(format!(
                "{}:{}: {kind} {}: unknown field `{field}` is ignored (misspelled, or at the wrong level? `kubectl apply` would reject it)",
                path.display(),
                line_hint.unwrap_or(1),
                manifest_name(&manifest)
            ));
        }
        manifests.push(manifest);
    }
    Ok(manifests)
}

/// Deserializes `value`, collecting the paths of fields the type does not know (`spec.timeout`).
fn typed<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    unknown: &mut Vec<String>,
) -> Result<T, serde_yaml::Error> {
    serde_ignored::deserialize(value, |field| {
        // apiVersion and kind were read above; the CRD types leave them to the loader.
        let field = field.to_string();
        if field != "apiVersion" && field != "kind" {
            unknown.push(field);
        }
    })
}

fn manifest_name(m: &Manifest) -> &str {
    let meta = match m {
        Manifest::Route(r) => &r.metadata,
        Manifest::Tenant(t) => &t.metadata,
        Manifest::Plan(p) => &p.metadata,
        Manifest::Secret(s) => &s.metadata,
    };
    meta.name.as_deref().unwrap_or_default()
}

/// The 1-based line where document `index` starts (the line after its `---`, or line 1).
fn document_line(text: &str, index: usize) -> Option<usize> {
    let separators: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("---"))
        .map(|(n, _)| n + 1)
        .collect();
    let leading = separators.first() == Some(&1);
    match (index, leading) {
        (0, false) => Some(1),
        (i, true) => separators.get(i).map(|n| n + 1),
        (i, false) => separators.get(i - 1).map(|n| n + 1),
    }
}

/// Objects without a namespace are in `default`, as kubectl would put them.
fn default_namespace(value: &mut serde_yaml::Value) {
    let Some(map) = value.as_mapping_mut() else {
        return;
    };
    let metadata = map
        .entry(serde_yaml::Value::from("metadata"))
        .or_insert_with(|| serde_yaml::Value::Mapping(serde_yaml::Mapping::new()));
    if let Some(meta) = metadata.as_mapping_mut() {
        let ns = meta
            .entry(serde_yaml::Value::from("namespace"))
            .or_insert(serde_yaml::Value::Null);
        if ns.as_str().is_none_or(str::is_empty) {
            *ns = serde_yaml::Value::from(DEFAULT_NAMESPACE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lines_follow_separators() {
        let text = "a: 1\n---\nb: 2\n---\nc: 3\n";
        assert_eq!(document_line(text, 0), Some(1));
        assert_eq!(document_line(text, 1), Some(3));
        assert_eq!(document_line(text, 2), Some(5));
        let leading = "---\na: 1\n---\nb: 2\n";
        assert_eq!(document_line(leading, 0), Some(2));
        assert_eq!(document_line(leading, 1), Some(4));
    }

    #[test]
    fn unknown_fields_are_named_with_their_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("routes.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Secret\nmetadata: {name: k}\nstringData: {apiKey: x}\n---\n\
             apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: chat}\n\
             spec:\n  match: {pathPrefix: /}\n  backend: {url: \"http://127.0.0.1:9\"}\n  timeout: 2s\n  metring: OpenAI\n",
        )
        .expect("write");
        let mut warnings = Vec::new();
        let manifests = parse_file(&file, &mut warnings).expect("parses");
        assert_eq!(manifests.len(), 2, "unknown fields do not drop the object");
        let at = format!("{}:6: ApiRoute chat: unknown field", file.display());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with(&at) && warnings[0].contains("`spec.timeout`"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("`spec.metring`"), "{warnings:?}");
    }

    #[test]
    fn a_directory_without_manifests_is_warned_about() -> Result<()> {
        // The usual slip: pointing at a parent directory whose manifests sit one level down.
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("quickstart"))?;
        std::fs::write(dir.path().join("quickstart/tenants.yaml"), "")?;
        std::fs::write(dir.path().join("README.md"), "")?;
        let load = ManifestDir::new(dir.path())?.load()?;
        assert_eq!(load.warnings.len(), 1, "{:?}", load.warnings);
        assert!(
            load.warnings[0].contains("no *.yaml or *.yml files in")
                && load.warnings[0].contains("subdirectories are not read"),
            "{:?}",
            load.warnings
        );

        std::fs::write(dir.path().join("world.yaml"), "")?;
        assert!(ManifestDir::new(dir.path())?.load()?.warnings.is_empty());
        Ok(())
    }
}
