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
use serde_saphyr::Spanned;
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
    /// The text of each file as it last parsed, compressed: parsed again when the file on disk
    /// stops parsing. Not the parsed objects, which nothing reads between loads: for 10,000
    /// tenants they held about 18 MiB, against 5.3 MB of YAML, 0.3 MB compressed.
    last_good: BTreeMap<PathBuf, LastGood>,
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
        let mut good = BTreeMap::new();
        let mut parsed = BTreeMap::new();
        for (path, _, _) in &files {
            let read = read_file(path)
                .and_then(|text| Ok((parse_text(path, &text, &mut warnings)?, text)));
            match read {
                Ok((manifests, text)) => {
                    parsed.insert(path.clone(), manifests);
                    good.insert(path.clone(), LastGood::keep(&text));
                }
                Err(error) => {
                    file_errors.push(error);
                    let Some(last) = self.last_good.remove(path) else {
                        continue;
                    };
                    // It parsed before; it parses the same way again. Its warnings were logged
                    // when it was read, with the lines of that text.
                    match last
                        .text()
                        .and_then(|text| parse_text(path, &text, &mut Vec::new()).ok())
                    {
                        Some(manifests) => {
                            parsed.insert(path.clone(), manifests);
                            good.insert(path.clone(), last);
                        }
                        None => warnings.push(format!(
                            "{}: its last good version could not be read back; its objects are left out until the file parses",
                            path.display()
                        )),
                    }
                }
            }
        }
        self.last_good = good;
        self.fingerprint = files;
        let mut compiled = compile_manifests(&parsed, &mut warnings);
        // Routes for sidecars are served by the sidecars the operator configures, not here.
        let for_sidecars = compiled
            .snapshot
            .routes
            .iter()
            .filter(|r| r.workload_selector.is_some())
            .count();
        if for_sidecars > 0 {
            warnings.push(format!(
                "{for_sidecars} ApiRoute(s) with a workloadSelector are not served by a standalone proxy (only by the sidecars of the pods they select)"
            ));
            compiled
                .snapshot
                .routes
                .retain(|r| r.workload_selector.is_none());
        }
        Ok(Load {
            compiled,
            file_errors,
            warnings,
        })
    }
}

/// Compiles the objects of every file; later files win on duplicates, as with `kubectl apply -f
/// DIR`.
fn compile_manifests(
    files: &BTreeMap<PathBuf, Vec<Manifest>>,
    warnings: &mut Vec<String>,
) -> Compiled {
    let mut routes: HashMap<(String, String), &ApiRoute> = HashMap::new();
    let mut tenants: HashMap<(String, String), &Tenant> = HashMap::new();
    let mut plans: HashMap<(String, String), &QuotaPolicy> = HashMap::new();
    let mut secrets: HashMap<(String, String), &Secret> = HashMap::new();
    for (path, manifests) in files {
        for m in manifests {
            let (kind, replaced) = match m {
                Manifest::Route(r) => ("ApiRoute", routes.insert(id(&r.metadata), r).is_some()),
                Manifest::Tenant(t) => ("Tenant", tenants.insert(id(&t.metadata), t).is_some()),
                Manifest::Plan(p) => ("QuotaPolicy", plans.insert(id(&p.metadata), p).is_some()),
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

fn id(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Largest manifest file read. A world of 10,000 tenants with their keys is a few MiB.
pub const MAX_MANIFEST_BYTES: u64 = 32 * 1024 * 1024;

/// Bounds on what one file may make the YAML parser do, so that a hostile or broken file costs
/// milliseconds, never the start-up: nesting (manifests need about ten levels), nodes, and the
/// anchor/alias budgets of serde-saphyr's defaults (billion laughs). Documents are not bounded
/// beyond the size: one file may hold a whole world.
///
/// Scalars keep the YAML 1.2 reading serde_yaml gave them before: only `true`/`false` are
/// booleans (`country: no` stays a string), and `0123` or `1_000` stay strings (a key that starts
/// with a zero is not turned into a number).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 64,
            flow_nesting_limit: 64,
            max_documents: usize::MAX,
            max_nodes: 16 * 1024 * 1024,
            max_events: 64 * 1024 * 1024,
        },
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    }
}

/// A file's text as it last parsed, deflated (YAML manifests shrink about 18 times, in 20 ms for
/// 5 MB).
#[derive(Debug)]
struct LastGood {
    deflated: Vec<u8>,
    /// The text's length: what inflating may produce, and no more.
    len: usize,
}

impl LastGood {
    fn keep(text: &str) -> Self {
        Self {
            deflated: miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 1),
            len: text.len(),
        }
    }

    /// The text again (`None` would mean memory corrupted: bounded and checked, not trusted).
    fn text(&self) -> Option<String> {
        let bytes =
            miniz_oxide::inflate::decompress_to_vec_with_limit(&self.deflated, self.len).ok()?;
        String::from_utf8(bytes).ok()
    }
}

/// A manifest file's text, refused when larger than [`MAX_MANIFEST_BYTES`]: a file over it by
/// its size, unread, and one that grows while it is read after one byte more.
fn read_file(path: &Path) -> Result<String, FileError> {
    use std::io::Read;
    let err = |message: String| FileError {
        file: path.to_owned(),
        line: None,
        message,
    };
    let too_big = |size: u64| {
        err(format!(
            "{size} bytes is more than the {MAX_MANIFEST_BYTES} a manifest file may hold; split it into several files"
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(too_big(size));
    }
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_big(text.len() as u64));
    }
    Ok(text)
}

/// The objects of one file's `text` (`path` names it in errors and warnings).
fn parse_text(
    path: &Path,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<Manifest>, FileError> {
    let err = |line: Option<usize>, message: String| FileError {
        file: path.to_owned(),
        line,
        message,
    };
    // Empty and null documents are skipped; each document keeps the line it starts on.
    let documents: Documents = serde_saphyr::from_str_multiple_with_options::<
        Spanned<serde_json::Value>,
        Documents,
    >(text, yaml_options())
    .map_err(|e| {
        let line = e.location().and_then(|l| usize::try_from(l.line()).ok());
        err(line, e.without_snippet().to_string())
    })?;
    warnings.extend(
        documents
            .warnings
            .into_iter()
            .map(|(line, warning)| format!("{}:{line}: {warning}", path.display())),
    );
    match documents.error {
        Some((line, message)) => Err(err(Some(line), message)),
        None => Ok(documents.manifests),
    }
}

/// The documents of one file, each turned into its object as soon as the parser has it: the
/// untyped values of a whole world at once would take several times the memory of its objects.
#[derive(Default)]
struct Documents {
    manifests: Vec<Manifest>,
    /// Each warning's line and text (the caller adds the file's name).
    warnings: Vec<(usize, String)>,
    /// The first document that could not be read, and why; later ones are parsed, not read.
    error: Option<(usize, String)>,
}

impl Extend<Spanned<serde_json::Value>> for Documents {
    fn extend<I: IntoIterator<Item = Spanned<serde_json::Value>>>(&mut self, documents: I) {
        for document in documents {
            if self.error.is_some() {
                continue;
            }
            let line = usize::try_from(document.defined.line()).unwrap_or(1).max(1);
            if let Err(message) = self.read(document.value, line) {
                self.error = Some((line, message));
            }
        }
    }
}

impl Documents {
    /// Reads one document that starts on `line`: an object of a kind standalone mode serves, or
    /// a warning that it is skipped.
    fn read(&mut self, mut value: serde_json::Value, line: usize) -> Result<(), String> {
        if value.is_null() {
            return Ok(());
        }
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
        let invalid = |e: serde_json::Error| format!("{kind}: {e}");
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
                self.warnings.push((
                    line,
                    format!(
                        "skipping {api_version} {kind}: standalone mode reads ApiRoute, Tenant and QuotaPolicy (tollgate.dev/v1alpha1) and v1 Secret"
                    ),
                ));
                return Ok(());
            }
        };
        if manifest_name(&manifest).is_empty() {
            return Err(format!("{kind} without metadata.name"));
        }
        for field in unknown {
            self.warnings.push((
                line,
                format!(
                    "{kind} {}: unknown field `{field}` is ignored (misspelled, or at the wrong level? `kubectl apply` would reject it)",
                    manifest_name(&manifest)
                ),
            ));
        }
        self.manifests.push(manifest);
        Ok(())
    }
}

/// Deserializes `value`, collecting the paths of fields the type does not know (`spec.timeout`).
fn typed<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    unknown: &mut Vec<String>,
) -> Result<T, serde_json::Error> {
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

/// Objects without a namespace are in `default`, as kubectl would put them.
fn default_namespace(value: &mut serde_json::Value) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if let Some(meta) = metadata.as_object_mut() {
        let ns = meta.entry("namespace").or_insert(serde_json::Value::Null);
        if ns.as_str().is_none_or(str::is_empty) {
            *ns = serde_json::Value::from(DEFAULT_NAMESPACE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_file(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<Manifest>, FileError> {
        super::parse_text(path, &read_file(path)?, warnings)
    }

    fn parse_text(text: &str) -> Result<Vec<Manifest>, FileError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hostile.yaml");
        std::fs::write(&file, text).expect("write");
        parse_file(&file, &mut Vec::new())
    }

    #[test]
    fn a_file_that_stays_broken_keeps_its_last_good_objects_across_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let route = |name: &str| {
            format!(
                "---\napiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}}}\n\
                 spec: {{match: {{pathPrefix: /{name}}}, backend: {{url: 'http://127.0.0.1:1'}}}}\n"
            )
        };
        let routes = |load: &Load| {
            let mut names: Vec<String> = load
                .compiled
                .snapshot
                .routes
                .iter()
                .map(|r| r.key.name.clone())
                .collect();
            names.sort();
            names
        };
        std::fs::write(dir.path().join("a.yaml"), route("a")).expect("write");
        std::fs::write(dir.path().join("b.yaml"), route("b")).expect("write");
        let mut manifests = ManifestDir::new(dir.path()).expect("dir");
        let first = manifests.load().expect("load");
        assert_eq!(routes(&first), ["a", "b"]);

        // a.yaml's route has a field the types do not know: warned about when it is read...
        std::fs::write(
            dir.path().join("a.yaml"),
            route("a").replace("spec: {", "spec: {timeout: 5s, "),
        )
        .expect("write");
        let warned = manifests.load().expect("load");
        assert!(
            warned.warnings.iter().any(|w| w.contains("`spec.timeout`")),
            "{:?}",
            warned.warnings
        );
        std::fs::write(dir.path().join("a.yaml"), "kind: [unclosed\n").expect("write");
        let broken = manifests.load().expect("load");
        assert_eq!(broken.file_errors.len(), 1, "{:?}", broken.file_errors);
        assert_eq!(
            routes(&broken),
            ["a", "b"],
            "a.yaml's last good route stays"
        );
        // ...and not again from its last good text (whose lines are no longer on disk).
        assert!(
            !broken.warnings.iter().any(|w| w.contains("`spec.timeout`")),
            "{:?}",
            broken.warnings
        );

        // Another file changes while a.yaml is still broken: a's route is still there.
        std::fs::write(dir.path().join("b.yaml"), route("b") + &route("c")).expect("write");
        let still = manifests.load().expect("load");
        assert_eq!(still.file_errors.len(), 1, "{:?}", still.file_errors);
        assert_eq!(routes(&still), ["a", "b", "c"]);

        // Repaired, it is read again; removed, its objects go.
        std::fs::write(dir.path().join("a.yaml"), route("d")).expect("write");
        assert_eq!(routes(&manifests.load().expect("load")), ["b", "c", "d"]);
        std::fs::remove_file(dir.path().join("a.yaml")).expect("remove");
        assert_eq!(routes(&manifests.load().expect("load")), ["b", "c"]);
    }

    #[test]
    fn routes_for_sidecars_are_not_served_standalone_and_the_warning_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("routes.yaml"),
            "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: central}\n\
             spec: {match: {pathPrefix: /a}, backend: {url: 'http://127.0.0.1:1'}}\n---\n\
             apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: sidecar}\n\
             spec: {match: {pathPrefix: /b}, workloadSelector: {matchLabels: {app: b}}}\n",
        )
        .expect("write");
        let load = ManifestDir::new(dir.path())
            .and_then(|mut d| d.load())
            .expect("load");
        let names: Vec<&str> = load
            .compiled
            .snapshot
            .routes
            .iter()
            .map(|r| r.key.name.as_str())
            .collect();
        assert_eq!(names, ["central"]);
        assert!(
            load.warnings.iter().any(|w| w.contains("workloadSelector")),
            "{:?}",
            load.warnings
        );
    }

    #[test]
    fn nesting_deeper_than_64_levels_is_refused_with_its_line() {
        let deep = |levels: usize| {
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\ndata: {{x: {}1{}}}\n",
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        // Depth here counts the document and `data` too: 60 nested lists are fine to parse.
        assert!(parse_text(&deep(60)).is_err_and(|e| e.message.contains("invalid type")));
        for levels in [100, 100_000] {
            let e = parse_text(&deep(levels)).expect_err("too deep");
            assert_eq!(e.line, Some(4), "{e}");
            assert!(e.message.contains("recursion limit"), "{e}");
        }
    }

    #[test]
    fn aliases_cannot_multiply_a_small_file() {
        // "Billion laughs": nine levels of ten aliases each.
        let mut text = String::from("a0: &a0 [lol]\n");
        for level in 1..10 {
            let refs = vec![format!("*a{}", level - 1); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        let e = parse_text(&text).expect_err("refused");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn scalars_read_as_they_did_under_yaml_1_2() {
        let manifests = parse_text(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: k, labels: {country: no, on: off}}\n\
             stringData: {apiKey: 0123, other: 1_000}\n",
        )
        .expect("parses");
        let Some(Manifest::Secret(secret)) = manifests.first() else {
            panic!("a Secret: {manifests:?}");
        };
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("country").map(String::as_str), Some("no"));
        assert_eq!(labels.get("on").map(String::as_str), Some("off"));
        let data = secret.string_data.clone().unwrap_or_default();
        assert_eq!(data.get("apiKey").map(String::as_str), Some("0123"));
        assert_eq!(data.get("other").map(String::as_str), Some("1_000"));
    }

    #[test]
    fn a_whole_world_of_fifteen_thousand_tenants_fits_the_budgets() {
        // About 80 parser events per tenant and its Secret: past serde-saphyr's default budget
        // of a million events, far inside the size bound.
        let world = tollgate_crds::synthetic::synthetic("default", 15_000, 100)
            .to_yaml()
            .expect("yaml");
        let manifests = parse_text(&world).expect("parses");
        assert_eq!(manifests.len(), 10 + 100 + 15_000 * 2);
    }

    #[test]
    fn files_over_the_size_bound_are_refused_unread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("huge.yaml");
        let huge = std::fs::File::create(&file).expect("create");
        // Sparse: the size is what the bound reads.
        huge.set_len(MAX_MANIFEST_BYTES + 1).expect("set_len");
        let e = parse_file(&file, &mut Vec::new()).expect_err("refused");
        assert!(e.message.contains("split it into several files"), "{e}");
    }

    #[test]
    fn each_document_is_named_by_the_line_it_starts_on() {
        let text = "# a comment\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: a}\n---\n\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n---\napiVersion: v1\nkind: Secret\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("docs.yaml");
        std::fs::write(&file, text).expect("write");
        let mut warnings = Vec::new();
        let e = parse_file(&file, &mut warnings).expect_err("a Secret without a name");
        assert_eq!(e.line, Some(13), "{e}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(&format!("{}:9: skipping v1 ConfigMap", file.display())),
            "{warnings:?}"
        );
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
