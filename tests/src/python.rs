//! A Python with the official provider SDKs (`tests/python/requirements.txt`), for tests that
//! call the proxy the way users' code does.
//!
//! The virtual environment is made once per version of the requirements file, in the cache
//! (`$XDG_CACHE_HOME` or `~/.cache`, `tollgate/python/<hash>`), outside the checkout: built in a
//! directory of its own and renamed into place when complete, so test binaries starting together
//! never use a half-made one; within one test binary, the first test to ask builds it and the
//! others wait for it (they would otherwise build in the same directory at once).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The requirements file.
fn requirements() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/requirements.txt")
}

/// FNV-1a: a cache key that stays the same across Rust versions (std's hasher may not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The `python` of an environment with the SDKs installed (made on first use: ~20 s).
pub fn sdk_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(environment).clone()
}

/// Finds or makes the environment.
fn environment() -> PathBuf {
    let reqs = requirements();
    let text = std::fs::read(&reqs).expect("tests/python/requirements.txt");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    let dir = cache
        .join("tollgate/python")
        .join(format!("{:016x}", fnv1a(&text)));
    let python = dir.join("bin/python");
    if python.exists() {
        return python;
    }
    std::fs::create_dir_all(dir.parent().expect("a parent")).expect("cache dir");
    let building = dir.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&building),
        "python3 -m venv (Debian: apt-get install python3-venv)",
    );
    run(
        Command::new(building.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&reqs),
        "pip install -r tests/python/requirements.txt",
    );
    // Another test binary may have finished first: its environment is as good as this one.
    if std::fs::rename(&building, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    assert!(python.exists(), "no {}", python.display());
    python
}

/// Runs `tests/python/<script> <args>` with [`sdk_python`], `input` as JSON on its stdin; what it
/// prints, as JSON (the scripts that judge deliveries with an official library).
pub fn run_json(
    script: &str,
    args: &[&str],
    input: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut child = Command::new(sdk_python())
        .arg(&path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {script}"))?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("stdin")?,
        &serde_json::to_vec(input)?,
    )?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "{script} {args:?} failed");
    Ok(serde_json::from_slice(&out.stdout)?)
}
