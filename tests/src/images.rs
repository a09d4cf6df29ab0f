//! Images for the test node, built offline with the same builder users run
//! (deploy/images/build.py): Tollgate's operator and proxy from this workspace's binaries, and the
//! test-only images — the pods' sandbox (pause, built from the Kubernetes module's pause.c by
//! tests/testenv/provision.sh), an echo backend (src/bin/echo-backend.rs) and Redis from Debian's
//! redis-server.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::{repo_root, workspace_binary};

/// The tag of every image the tests build.
pub const TEST_TAG: &str = "0.0.0-test";
/// The registry part of the test-only images' names (never pulled: imported).
pub const TEST_REGISTRY: &str = "tollgate.test";

/// An image archive and the name it is imported under.
#[derive(Debug, Clone)]
pub struct Image {
    /// Image name without registry or tag (`tollgate-proxy`, `pause`...).
    pub name: String,
    /// The full reference (`ghcr.io/tollgate-dev/tollgate-proxy:0.0.0-test`).
    pub reference: String,
    /// The OCI archive.
    pub archive: PathBuf,
}

/// Builds one image into `out` with deploy/images/build.py.
pub fn build(
    binary: &Path,
    name: &str,
    registry: Option<&str>,
    ports: &[u16],
    also: &[&Path],
    out: &Path,
) -> Result<Image> {
    let mut cmd = Command::new(repo_root().join("deploy/images/build.py"));
    cmd.arg(binary)
        .args(["--name", name, "--tag", TEST_TAG, "--out"])
        .arg(out);
    if let Some(registry) = registry {
        cmd.args(["--registry", registry]);
    }
    for port in ports {
        cmd.args(["--port", &port.to_string()]);
    }
    for extra in also {
        cmd.arg("--also").arg(extra);
    }
    let result = cmd.output().context("python3 deploy/images/build.py")?;
    ensure!(
        result.status.success(),
        "build.py {name} failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    // build.py prints: ARCHIVE REFERENCE DIGEST SIZE bytes
    let printed = String::from_utf8_lossy(&result.stdout);
    let mut words = printed.split_whitespace();
    let archive = PathBuf::from(words.next().context("build.py printed no archive")?);
    let reference = words.next().context("build.py printed no reference")?;
    Ok(Image {
        name: name.to_owned(),
        reference: reference.to_owned(),
        archive,
    })
}

/// `binary`, stripped into `dir` (a debug build's symbols would only make images slow to build).
pub fn stripped(binary: &Path, dir: &Path) -> Result<PathBuf> {
    let name = binary.file_name().context("a binary's file name")?;
    let out = dir.join(name);
    let status = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .status()
        .context("strip (Debian package binutils)")?;
    ensure!(status.success(), "strip {} failed", binary.display());
    Ok(out)
}

/// Every image a test node runs: the pods' sandbox (pause) and [`workload_images`]. `bin` is
/// the test environment's directory (with `pause`).
pub fn node_images(bin: &Path, out: &Path) -> Result<Vec<Image>> {
    let mut images = vec![build(
        &bin.join("pause"),
        "pause",
        Some(TEST_REGISTRY),
        &[],
        &[],
        out,
    )?];
    images.extend(workload_images(out, true)?);
    Ok(images)
}

/// The images the tests' pods run: Tollgate's two (as the chart names them) and the test-only
/// ones: the echo backend, and Redis from the host's redis-server when `with_redis`.
pub fn workload_images(out: &Path, with_redis: bool) -> Result<Vec<Image>> {
    let work = out.join("binaries");
    std::fs::create_dir_all(&work)?;
    let mut images = Vec::new();
    for (name, ports) in [
        ("tollgate-proxy", &[8080u16, 9090][..]),
        ("tollgate-operator", &[8443, 9091][..]),
    ] {
        let binary = stripped(&workspace_binary(name)?, &work)?;
        images.push(build(&binary, name, None, ports, &[], out)?);
    }
    let echo = stripped(&workspace_binary("echo-backend")?, &work)?;
    images.push(build(
        &echo,
        "echo-backend",
        Some(TEST_REGISTRY),
        &[8080],
        &[],
        out,
    )?);
    if with_redis {
        let redis_cli = Path::new("/usr/bin/redis-cli");
        images.push(build(
            Path::new("/usr/bin/redis-server"),
            "redis",
            Some(TEST_REGISTRY),
            &[6379],
            &[redis_cli],
            out,
        )?);
    }
    Ok(images)
}
