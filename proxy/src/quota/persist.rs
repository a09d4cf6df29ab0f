//! Counters on disk, so that a restart does not reset a month; and the month's call usage
//! (`calls.json`, [`crate::llm::Ledger`]), kept the same way with either counter store.
//!
//! The whole counter table is written to `counters.json` in the state dir (write to a temporary
//! file, fsync, rename: a crash leaves the old or the new file, never a torn one). The proxy writes
//! it at most once a second when counters changed, and on shutdown. Worst case on a crash (SIGKILL,
//! power loss): the admissions of the last second are forgotten, so a tenant may get up to one
//! second of extra requests. Rate-limit state (windows of at most an hour) is not persisted.
//!
//! Saves never overlap: the periodic flush runs on a blocking thread and can still be writing when
//! shutdown saves, and two writers of one temporary file fail (the second rename finds nothing)
//! or rename each other's half-written file into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::store::UsageRow;

const FILE: &str = "counters.json";
const CALLS_FILE: &str = "calls.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct CallsFile {
    version: u32,
    calls: Vec<tollgate_crds::stream::CallUsageRecord>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CounterFile {
    version: u32,
    counters: Vec<UsageRow>,
}

/// The counter file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Reads persisted counters; an absent file is an empty table.
pub fn load(state_dir: &Path) -> Result<Vec<UsageRow>> {
    Ok(read::<CounterFile>(&path(state_dir))?.map_or_else(Vec::new, |f| f.counters))
}

/// Reads the persisted call usage; an absent file is none.
pub fn load_calls(state_dir: &Path) -> Result<Vec<tollgate_crds::stream::CallUsageRecord>> {
    Ok(read::<CallsFile>(&state_dir.join(CALLS_FILE))?.map_or_else(Vec::new, |f| f.calls))
}

/// Writes the month's call usage atomically.
pub fn save_calls(
    state_dir: &Path,
    calls: Vec<tollgate_crds::stream::CallUsageRecord>,
) -> Result<()> {
    let body = serde_json::to_vec(&CallsFile { version: 1, calls })?;
    write_atomically(state_dir, CALLS_FILE, &body)
}

/// `file` parsed; `None` when it does not exist.
fn read<T: serde::de::DeserializeOwned>(file: &Path) -> Result<Option<T>> {
    let text = match std::fs::read(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let parsed = serde_json::from_slice(&text).with_context(|| {
        format!(
            "parsing {} (move it away to start from zero)",
            file.display()
        )
    })?;
    Ok(Some(parsed))
}

/// Held while a save writes and renames the temporary file.
static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes `rows` atomically; concurrent calls take turns.
pub fn save(state_dir: &Path, rows: Vec<UsageRow>) -> Result<()> {
    let body = serde_json::to_vec(&CounterFile {
        version: 1,
        counters: rows,
    })?;
    write_atomically(state_dir, FILE, &body)
}

/// Replaces `state_dir/name` with `body`: a temporary file, fsync, rename.
fn write_atomically(state_dir: &Path, name: &str, body: &[u8]) -> Result<()> {
    // A save that panicked left no state behind the lock worth refusing to write over.
    let _saving = SAVING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let file = state_dir.join(name);
    let tmp = state_dir.join(format!("{name}.tmp"));
    let mut out =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    out.write_all(body)?;
    out.sync_all()?;
    std::fs::rename(&tmp, &file).with_context(|| format!("replacing {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_a_missing_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(load(dir.path())?.is_empty());
        let row = UsageRow {
            tenant: "shop/acme".into(),
            plan: "shop/pro".into(),
            quota: "monthly".into(),
            period_start: "2026-11-01T00:00:00Z".parse()?,
            period_end: "2026-12-01T00:00:00Z".parse()?,
            used: rust_decimal::Decimal::new(1234, 0),
        };
        save(dir.path(), vec![row.clone()])?;
        assert_eq!(load(dir.path())?, vec![row]);
        Ok(())
    }

    #[test]
    fn saves_that_overlap_neither_fail_nor_leave_a_torn_file() -> Result<()> {
        // Before: the shutdown save could overlap the periodic flush on one temporary file; one
        // renamed the other's half-written file into place, or found the file gone and failed
        // with "replacing counters.json" (the proxy then exited unsuccessfully).
        let dir = tempfile::tempdir()?;
        let rows = |n: i64| -> Vec<UsageRow> {
            (0..n)
                .map(|i| UsageRow {
                    tenant: format!("shop/tenant-{i}"),
                    plan: "shop/pro".into(),
                    quota: "monthly".into(),
                    period_start: jiff::Timestamp::UNIX_EPOCH,
                    period_end: jiff::Timestamp::MAX,
                    used: rust_decimal::Decimal::new(i, 0),
                })
                .collect()
        };
        let saving = std::sync::atomic::AtomicBool::new(true);
        std::thread::scope(|scope| -> Result<()> {
            // Tables of different sizes, so that a torn file does not parse.
            let savers: Vec<_> = [1, 200]
                .into_iter()
                .map(|n| {
                    let (dir, rows) = (dir.path(), &rows);
                    scope.spawn(move || (0..200).try_for_each(|_| save(dir, rows(n))))
                })
                .collect();
            let reader = scope.spawn(|| -> Result<usize> {
                let mut reads = 0;
                while saving.load(std::sync::atomic::Ordering::Relaxed) {
                    let table = load(dir.path())?;
                    assert!(matches!(table.len(), 0 | 1 | 200), "{}", table.len());
                    reads += 1;
                }
                Ok(reads)
            });
            let saved = savers
                .into_iter()
                .try_for_each(|s| s.join().expect("saver thread"));
            saving.store(false, std::sync::atomic::Ordering::Relaxed);
            let reads = reader.join().expect("reader thread")?;
            saved?;
            assert!(reads > 0);
            Ok(())
        })?;
        assert!(matches!(load(dir.path())?.len(), 1 | 200));
        Ok(())
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_says_what_to_do() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(path(dir.path()), "{not json")?;
        let err = format!("{:#}", load(dir.path()).expect_err("corrupt"));
        assert!(err.contains("move it away"), "{err}");
        Ok(())
    }
}
