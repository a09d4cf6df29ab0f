//! The offline image builder (deploy/images/build.py): the archives it writes are OCI image
//! layouts with the configuration the chart relies on (entrypoint, non-root user, ports), the same
//! bytes for the same binary, and images containerd imports and runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tollgate_tests::process::Supervised;
use tollgate_tests::{images, repo_root, workspace_binary};

/// `name` from this workspace, stripped (the image builder is fed stripped release binaries; the
/// debug build's symbols would only make the test slow).
fn stripped(name: &str, dir: &Path) -> Result<PathBuf> {
    images::stripped(&workspace_binary(name)?, dir)
}

/// Builds `name`'s image into `out`; the archive's path.
fn build(binary: &Path, name: &str, ports: &[u16], out: &Path) -> Result<PathBuf> {
    Ok(images::build(binary, name, None, ports, &[], out)?.archive)
}

fn unpack(archive: &Path, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into)?;
    let status = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()?;
    ensure!(status.success(), "tar -xf {} failed", archive.display());
    Ok(())
}

fn blob(layout: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
    Ok(std::fs::read(layout.join("blobs/sha256").join(hex))?)
}

fn json(bytes: &[u8]) -> Result<Value> {
    Ok(serde_json::from_slice(bytes)?)
}

#[test]
fn images_are_oci_layouts_with_the_charts_entrypoint_user_and_ports_and_build_reproducibly()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    for (name, ports) in [
        ("tollgate-proxy", [8080, 9090]),
        ("tollgate-operator", [8443, 9091]),
    ] {
        let binary = stripped(name, dir.path())?;
        let first = build(&binary, name, &ports, &dir.path().join("first"))?;
        let second = build(&binary, name, &ports, &dir.path().join("second"))?;
        ensure!(
            std::fs::read(&first)? == std::fs::read(&second)?,
            "{name}: two builds of the same binary differ"
        );

        let layout = dir.path().join(format!("{name}-layout"));
        unpack(&first, &layout)?;
        let index = json(&std::fs::read(layout.join("index.json"))?)?;
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            format!("ghcr.io/tollgate-dev/{name}:0.0.0-test"),
            "the name an importer gives it is the chart's image"
        );
        let manifest = json(&blob(&layout, entry["digest"].as_str().context("digest")?)?)?;
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.title"],
            name
        );
        let config = json(&blob(
            &layout,
            manifest["config"]["digest"].as_str().context("config")?,
        )?)?;
        let c = &config["config"];
        assert_eq!(c["Entrypoint"][0], format!("/usr/local/bin/{name}"));
        assert_eq!(c["User"], "65532:65532", "the chart's runAsUser");
        for port in ports {
            assert!(
                c["ExposedPorts"][format!("{port}/tcp")].is_object(),
                "{name}: {port}"
            );
        }

        // The layer: the binary, what it links, CA roots, the user, a writable /tmp.
        let layer_blob = manifest["layers"][0]["digest"].as_str().context("layer")?;
        let listing = Command::new("tar")
            .arg("-tvzf")
            .arg(
                layout
                    .join("blobs/sha256")
                    .join(&layer_blob["sha256:".len()..]),
            )
            .output()?;
        let listing = String::from_utf8_lossy(&listing.stdout);
        for needed in [
            format!("usr/local/bin/{name}"),
            "etc/ssl/certs/ca-certificates.crt".to_owned(),
            "etc/passwd".to_owned(),
            "libc.so.6".to_owned(),
            "ld-linux-x86-64.so.2".to_owned(),
        ] {
            assert!(
                listing.contains(&needed),
                "{name}: {needed} missing:\n{listing}"
            );
        }
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("drwxrwxrwt") && l.trim_end_matches('/').ends_with(" tmp")),
            "{name}: /tmp is writable by the non-root user:\n{listing}"
        );
    }
    Ok(())
}

/// A private containerd (its own root, state and socket in a temporary directory) imports the
/// proxy's archive and runs it: the libraries the builder copied are the ones the binary needs.
#[test]
fn containerd_imports_the_proxy_image_and_runs_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = stripped("tollgate-proxy", dir.path())?;
    let archive = build(&binary, "tollgate-proxy", &[8080, 9090], dir.path())?;
    let socket = dir.path().join("containerd.sock");
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n",
            root = dir.path().display(),
            sock = socket.display()
        ),
    )?;
    let _containerd = Supervised::spawn(
        "containerd",
        Path::new("/usr/bin/containerd"),
        &[
            "--config".to_owned(),
            dir.path().join("config.toml").display().to_string(),
        ],
        &dir.path().join("containerd.log"),
        None,
    )?;
    let ctr = |args: &[&str]| -> Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(args)
            .output()
            .context("ctr (Debian package containerd)")?;
        ensure!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // containerd takes a moment to open its socket.
    let mut waited = 0;
    while ctr(&["version"]).is_err() {
        ensure!(waited < 200, "containerd did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
    }
    let archive = archive.display().to_string();
    ctr(&["images", "import", &archive])?;
    let image = "ghcr.io/tollgate-dev/tollgate-proxy:0.0.0-test";
    assert!(ctr(&["images", "ls", "-q"])?.lines().any(|l| l == image));
    let version = ctr(&[
        "run",
        "--rm",
        image,
        "version-check",
        "/usr/local/bin/tollgate-proxy",
        "--version",
    ])?;
    assert!(
        version.starts_with("tollgate-proxy "),
        "the binary runs in the image: {version:?}"
    );
    Ok(())
}

/// What a careless caller passes gets a sentence, and no archive.
#[test]
fn bad_arguments_are_refused_with_a_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = stripped("tollgate-proxy", dir.path())?;
    let binary = binary.display().to_string();
    let out = dir.path().display().to_string();
    for (args, says) in [
        (
            vec!["/nonexistent", "--name", "x", "--tag", "1"],
            "is not an executable file",
        ),
        (
            vec![out.as_str(), "--name", "x", "--tag", "1"],
            "is not an executable file",
        ),
        (
            vec![binary.as_str(), "--name", "../evil", "--tag", "1"],
            "is not an image name",
        ),
        (
            vec![binary.as_str(), "--name", "x", "--tag", "a:b"],
            "is not an image tag",
        ),
        (
            vec![binary.as_str(), "--name", "x", "--tag", "1", "--port", "0"],
            "is not a TCP port",
        ),
        (
            vec![
                binary.as_str(),
                "--name",
                "x",
                "--tag",
                "1",
                "--registry",
                "Evil Registry/",
            ],
            "is not a registry name",
        ),
        (
            vec![
                binary.as_str(),
                "--name",
                "x",
                "--tag",
                "1",
                "--also",
                "/nonexistent",
            ],
            "is not an executable file",
        ),
    ] {
        let result = Command::new(repo_root().join("deploy/images/build.py"))
            .args(&args)
            .args(["--out", &out])
            .output()?;
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{args:?} accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("Traceback"), "{args:?}: {stderr}");
    }
    let archives = std::fs::read_dir(dir.path())?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "tar"))
        })
        .count();
    assert_eq!(archives, 0, "nothing written");
    Ok(())
}
