//! Child processes that cannot outlive the test binary.
//!
//! A test binary's statics are never dropped and a panicking or killed test skips destructors, so
//! each server runs under a tiny shell watchdog: when the test process is gone (for any reason) the
//! watchdog stops the server, waits for it, and removes its scratch directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

//
// The server runs in a process group of its own (setsid), and signals go to the whole group: a
// server started through `nsenter` into a PID namespace is nsenter's child, and nsenter does not
// pass signals on. The watchdog waits until no process of the group is left.
//
// The watchdog ignores SIGHUP and SIGINT (a closed terminal, a Ctrl-C reaching the whole
// foreground group) and passes SIGTERM on: it must outlive the test binary to clean up. Liveness
// is checked on the group, whose ID cannot be reused while any member lives (and signals only
// ever go to the group, never to a bare PID that may have been reused).
const WATCHDOG: &str = r#"
parent=$1; scratch=$2; log=$3; cleanup=$4; shift 4
child=
trap '[ -n "$child" ] && kill -TERM -$child 2>/dev/null' TERM
trap '[ -n "$child" ] && kill -KILL -$child 2>/dev/null' USR1
setsid "$@" >>"$log" 2>&1 &
child=$!
# After the start: a signal ignored here would stay ignored in the server.
trap '' HUP INT
# The group exists once setsid has run; until then the process does.
while kill -0 "$parent" 2>/dev/null && { kill -0 -"$child" || kill -0 "$child"; } 2>/dev/null; do sleep 0.2; done
kill -TERM -"$child" 2>/dev/null
for _ in $(seq 1 50); do kill -0 -"$child" 2>/dev/null || break; sleep 0.1; done
kill -KILL -"$child" 2>/dev/null
wait "$child" 2>/dev/null
echo "== exited" >>"$log"
# Keep logs for the error message while the tests run; clean up once the test binary is gone.
while kill -0 "$parent" 2>/dev/null; do sleep 0.5; done
[ -n "$cleanup" ] && sh -c "$cleanup" cleanup "$scratch" >>"$log" 2>&1
[ -n "$scratch" ] && rm -rf "$scratch"
"#;

const EXIT_MARKER: &str = "== exited\n";

/// A server process watched by a watchdog.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    watchdog: Child,
    log: PathBuf,
}

impl Supervised {
    /// Starts `program args` with output appended to `log`; `scratch` (if any) is deleted once it exits.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        scratch: Option<&Path>,
    ) -> Result<Self> {
        Self::spawn_with_env(name, program, args, log, scratch, &[])
    }

    /// Like [`Supervised::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        scratch: Option<&Path>,
        env: &[(&str, String)],
    ) -> Result<Self> {
        Self::spawn_with_cleanup(name, program, args, log, scratch, env, "")
    }

    /// Like [`Supervised::spawn_with_env`], with a shell script run once the server and the test
    /// binary are gone, before `scratch` is removed (`$1` is `scratch`): for what the server
    /// leaves outside it.
    pub fn spawn_with_cleanup(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        scratch: Option<&Path>,
        env: &[(&str, String)],
        cleanup: &str,
    ) -> Result<Self> {
        let mut cmd = Command::new("sh");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(scratch.map(|p| p.display().to_string()).unwrap_or_default())
            .arg(log)
            .arg(cleanup)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let watchdog = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            watchdog,
            log: log.to_owned(),
        })
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Whether the server is still running (its watchdog writes `exited` to the log when it ends).
    pub fn is_running(&mut self) -> bool {
        matches!(self.watchdog.try_wait(), Ok(None))
            && !std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .ends_with(EXIT_MARKER)
    }

    /// Name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the server and waits until it has exited (up to 10 s).
    pub fn stop_and_wait(&mut self) {
        self.stop();
        for _ in 0..200 {
            if std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .ends_with(EXIT_MARKER)
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills the server with SIGKILL (no shutdown of any kind: a crash, an OOM kill) and waits
    /// until it is gone (up to 10 s).
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .arg("-USR1")
            .arg(self.watchdog.id().to_string())
            .status();
        for _ in 0..200 {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops the server (its scratch directory goes when the test binary exits).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.watchdog.id().to_string())
            .status();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released; fine for tests on one machine).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
