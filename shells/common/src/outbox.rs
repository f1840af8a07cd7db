//! The durable outbox on disk: the results the core keeps until the studio acknowledges
//! them (`Command::KeepResult` / `Command::ForgetResult`), so a crash or a `kill -9`
//! between the engine's finish and the studio's acknowledgement loses nothing. At start
//! the entries are read back and handed to the core (`Input::Restore`), which decides what
//! to re-send, re-upload or drop; this module decides nothing.
//!
//! # Layout
//!
//! `<config dir>/outbox/` (mode 0700), two files per job at most, named by the first 32 hex
//! digits of the SHA-256 of the job id (a job id is studio text, never a file name):
//!
//! * `<name>.json`: the entry. Line 1 is the header
//!   `studio-worker-outbox 1 <sha256 of line 2> <sha256 of the bytes, or ->`, line 2 the
//!   core's `KeptResult` as JSON;
//! * `<name>.bin`: the binary result of an upload entry.
//!
//! Every file is written to a temp file (a name starting with `.`), synced and renamed into
//! place, the directory synced after; the bytes before the entry that names them. So a
//! process killed mid-write leaves a temp file (removed at the next start) or the previous
//! version, never a half-written entry under a real name; and the header's hashes catch an
//! entry damaged any other way. An entry that does not verify is skipped and removed, with
//! a log line; so is a `.bin` no entry names.
//!
//! # Writing off the loop
//!
//! [`OutboxWriter`] performs the core's commands in order on a thread of its own, so a
//! large binary result never blocks the event loop on disk; a failure is logged and
//! shipped to the studio as an error log line. Dropping the writer waits for what it was
//! given.
//!
//! The commands that queued up while the writer was on disk are taken as one batch, and a
//! `Keep` whose job's `Forget` is later in the same batch is skipped: the studio has
//! acknowledged that result, so writing and syncing it would only be undone. A `Forget`
//! that finds no file syncs nothing. Under a steady stream of small jobs, most results
//! are acknowledged before the writer reaches them, and the disk sees a fraction of them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use studio_core::wire::{sha256_hex, LogEntry};
use studio_core::worker::{KeptBody, KeptResult};

use crate::config::{sync_dir, write_atomically};
use crate::pool::{EventSink, PoolEvent};

/// The outbox directory's name, beside `config.toml`.
pub const OUTBOX_DIR: &str = "outbox";
/// The first word of an entry's header.
const MAGIC: &str = "studio-worker-outbox";
/// The entry format this build writes and reads.
const FORMAT_VERSION: u32 = 1;
/// The `category` of the log lines about the outbox.
pub const OUTBOX_LOG_CATEGORY: &str = "outbox";

/// One entry read back: the kept result and, for an upload, its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub result: KeptResult,
    pub bytes: Option<Vec<u8>>,
}

/// What [`Outbox::load`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// The entries that verified, in file-name order.
    pub entries: Vec<Loaded>,
    /// One line per file skipped and removed (half-written, damaged, orphaned).
    pub skipped: Vec<String>,
}

/// The outbox directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// The outbox of the config file at `config_path`: `outbox/` beside it.
    pub fn beside(config_path: &Path) -> Outbox {
        let dir = match config_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.join(OUTBOX_DIR),
            _ => PathBuf::from(OUTBOX_DIR),
        };
        Outbox { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn name(job_id: &str) -> String {
        sha256_hex(job_id.as_bytes())[..32].to_string()
    }

    fn entry_path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{}.json", Outbox::name(job_id)))
    }

    fn bytes_path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{}.bin", Outbox::name(job_id)))
    }

    fn create_dir(&self) -> io::Result<()> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.dir)
    }

    /// Writes `result` (replacing the entry of its job); an upload entry needs its `bytes`.
    pub fn keep(&self, result: &KeptResult, bytes: Option<&[u8]>) -> io::Result<()> {
        self.create_dir()?;
        let json = serde_json::to_string(result).map_err(io::Error::other)?;
        let bytes_hash = match (&result.body, bytes) {
            (KeptBody::Upload { bytes_len, .. }, Some(b)) if b.len() as u64 == *bytes_len => {
                write_file(&self.bytes_path(&result.job_id), b)?;
                sha256_hex(b)
            }
            (KeptBody::Upload { bytes_len, .. }, b) => {
                return Err(io::Error::other(format!(
                    "the {bytes_len}-byte result is not held ({} bytes given)",
                    b.map_or(0, <[u8]>::len)
                )))
            }
            (KeptBody::Frame { .. }, _) => "-".to_string(),
        };
        let entry = format!(
            "{MAGIC} {FORMAT_VERSION} {} {bytes_hash}\n{json}\n",
            sha256_hex(json.as_bytes())
        );
        write_file(&self.entry_path(&result.job_id), entry.as_bytes())?;
        if matches!(result.body, KeptBody::Frame { .. }) {
            // A frame replacing an upload (its `fail`): the bytes are stale.
            if remove_if_present(&self.bytes_path(&result.job_id))? {
                sync_dir(&self.dir);
            }
        }
        Ok(())
    }

    /// Removes the entry of `job_id` and its bytes, if present; true if there was a file
    /// to remove. The directory is synced only then: forgetting what was never written
    /// touches no disk.
    pub fn forget(&self, job_id: &str) -> io::Result<bool> {
        let entry = remove_if_present(&self.entry_path(job_id))?;
        let bytes = remove_if_present(&self.bytes_path(job_id))?;
        if entry || bytes {
            sync_dir(&self.dir);
        }
        Ok(entry || bytes)
    }

    /// Reads every entry back (see the module docs); what does not verify is removed and
    /// reported. A missing directory is an empty outbox.
    pub fn load(&self) -> LoadReport {
        let mut report = LoadReport::default();
        let mut names: Vec<String> = match fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return report,
            Err(e) => {
                report
                    .skipped
                    .push(format!("cannot read {}: {e}", self.dir.display()));
                return report;
            }
        };
        names.sort();
        let mut named_bytes = Vec::new();
        for name in &names {
            let path = self.dir.join(name);
            if name.starts_with('.') {
                report.skipped.push(format!(
                    "{name}: a write that never finished (the process ended mid-write); removed"
                ));
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            match self.read_entry(stem, &path) {
                Ok(loaded) => {
                    if loaded.bytes.is_some() {
                        named_bytes.push(format!("{stem}.bin"));
                    }
                    report.entries.push(loaded);
                }
                Err(why) => {
                    report
                        .skipped
                        .push(format!("{name}: {why}; the entry is removed"));
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(self.dir.join(format!("{stem}.bin")));
                }
            }
        }
        for name in names.iter().filter(|n| n.ends_with(".bin")) {
            let path = self.dir.join(name);
            if !named_bytes.contains(name) && path.exists() {
                report
                    .skipped
                    .push(format!("{name}: result bytes no entry names; removed"));
                let _ = fs::remove_file(&path);
            }
        }
        sync_dir(&self.dir);
        report
    }

    fn read_entry(&self, stem: &str, path: &Path) -> Result<Loaded, String> {
        let text = fs::read(path).map_err(|e| format!("cannot read it ({e})"))?;
        let text = String::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
        let (header, rest) = text.split_once('\n').ok_or("no header line (cut short?)")?;
        let json = rest
            .strip_suffix('\n')
            .ok_or("the entry is cut short (no final newline)")?;
        let fields: Vec<&str> = header.split(' ').collect();
        let [magic, version, json_hash, bytes_hash] = fields[..] else {
            return Err("the header is not an outbox header".into());
        };
        if magic != MAGIC {
            return Err("the header is not an outbox header".into());
        }
        if version != FORMAT_VERSION.to_string() {
            return Err(format!(
                "entry format {version} is not this build's ({FORMAT_VERSION})"
            ));
        }
        if sha256_hex(json.as_bytes()) != json_hash {
            return Err("the entry does not match its checksum (damaged or cut short)".into());
        }
        let result: KeptResult =
            serde_json::from_str(json).map_err(|e| format!("unreadable entry ({e})"))?;
        if Outbox::name(&result.job_id) != stem {
            return Err("the entry is under another job's name".into());
        }
        let bytes = match &result.body {
            KeptBody::Frame { .. } => None,
            KeptBody::Upload { bytes_len, .. } => {
                let bytes = fs::read(self.dir.join(format!("{stem}.bin")))
                    .map_err(|e| format!("its result bytes cannot be read ({e})"))?;
                if bytes.len() as u64 != *bytes_len || sha256_hex(&bytes) != bytes_hash {
                    return Err("its result bytes do not match the entry (damaged)".into());
                }
                Some(bytes)
            }
        };
        Ok(Loaded { result, bytes })
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically(path, bytes).map_err(|(action, e)| {
        io::Error::new(e.kind(), format!("cannot {action} {}: {e}", path.display()))
    })
}

/// True if the file was there and is now removed.
fn remove_if_present(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// One command of the core for the outbox.
enum Op {
    Keep(Box<KeptResult>, Option<Arc<Vec<u8>>>),
    Forget(String),
    /// Answered once every earlier command is done.
    Flush(mpsc::Sender<()>),
}

/// Drops each `Keep` that a later `Forget` of the same job in `batch` undoes: the studio
/// has acknowledged that result, so there is nothing to keep. Everything else stays, in
/// order (the `Forget` too: an earlier batch may have written the job's entry).
fn coalesce(batch: Vec<Op>) -> Vec<Op> {
    // From the back, so each Keep sees the jobs forgotten after it: one pass, however long
    // the backlog behind a slow disk.
    let mut forgotten = std::collections::BTreeSet::new();
    let undone_from_back: Vec<bool> = batch
        .iter()
        .rev()
        .map(|op| match op {
            Op::Forget(id) => {
                forgotten.insert(id.as_str());
                false
            }
            Op::Keep(r, _) => forgotten.contains(r.job_id.as_str()),
            Op::Flush(_) => false,
        })
        .collect();
    batch
        .into_iter()
        .zip(undone_from_back.into_iter().rev())
        .filter_map(|(op, undone)| (!undone).then_some(op))
        .collect()
}

/// Carries out one command; a failure is logged and shipped through `sink`.
fn perform(outbox: &Outbox, op: Op, sink: &EventSink) {
    let (result, what) = match &op {
        Op::Keep(r, bytes) => (
            outbox.keep(r, bytes.as_deref().map(|b| &b[..])),
            ("keep", &r.job_id),
        ),
        Op::Forget(job_id) => (outbox.forget(job_id).map(drop), ("forget", job_id)),
        Op::Flush(done) => {
            let _ = done.send(());
            return;
        }
    };
    if let Err(e) = result {
        let (verb, job_id) = what;
        let message = format!("outbox: cannot {verb} the result of job {job_id}: {e}");
        tracing::error!(category = OUTBOX_LOG_CATEGORY, "{message}");
        sink(PoolEvent::Log(LogEntry {
            ts: crate::clock::Clock::new().wall().to_rfc3339(),
            level: "error".into(),
            category: OUTBOX_LOG_CATEGORY.into(),
            message,
            job_id: None,
        }));
    }
}

/// Performs the outbox commands in order on a thread of its own (see the module docs).
pub struct OutboxWriter {
    tx: Option<mpsc::Sender<Op>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl OutboxWriter {
    /// A writer for `outbox`, reporting failures through `sink`.
    pub fn new(outbox: Outbox, sink: EventSink) -> OutboxWriter {
        let (tx, rx) = mpsc::channel::<Op>();
        let thread = thread::Builder::new().name("outbox".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                // What queued up while the last batch was on disk goes as one batch, so a
                // result the studio acknowledged meanwhile is never written at all.
                let batch = coalesce(std::iter::once(first).chain(rx.try_iter()).collect());
                for op in batch {
                    perform(&outbox, op, &sink);
                }
            }
        });
        match thread {
            Ok(thread) => OutboxWriter {
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::error!(
                    "cannot start the outbox writer ({e}); results are held in memory only"
                );
                OutboxWriter {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    /// `Command::KeepResult`, with the held bytes of an upload.
    pub fn keep(&self, result: Box<KeptResult>, bytes: Option<Arc<Vec<u8>>>) {
        self.send(Op::Keep(result, bytes));
    }

    /// `Command::ForgetResult`.
    pub fn forget(&self, job_id: String) {
        self.send(Op::Forget(job_id));
    }

    /// Fires once every command given so far is done (at once without a writer).
    pub fn flushed(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx));
        rx
    }

    fn send(&self, op: Op) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(op);
        }
    }
}

impl Drop for OutboxWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for OutboxWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxWriter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use studio_core::wire::JobOfferClaim;
    use studio_core::WallMs;

    fn claim(job_id: &str) -> Box<JobOfferClaim> {
        Box::new(crate::pool::tests::claim(
            job_id,
            serde_json::json!({"kind":"image","prompt":"a fox"}),
        ))
    }

    fn frame(job_id: &str) -> KeptResult {
        KeptResult {
            job_id: job_id.into(),
            worker_id: "w-1".into(),
            kept_at: WallMs(1_000),
            body: KeptBody::Frame {
                text: format!(
                    r#"{{"type":"fail","jobId":"{job_id}","error":"x","retryable":true}}"#
                ),
            },
        }
    }

    fn upload(job_id: &str, len: u64) -> KeptResult {
        KeptResult {
            job_id: job_id.into(),
            worker_id: "w-1".into(),
            kept_at: WallMs(2_000),
            body: KeptBody::Upload {
                claim: claim(job_id),
                ext: "webp".into(),
                bytes_len: len,
            },
        }
    }

    fn outbox() -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::beside(&dir.path().join("config.toml"));
        (dir, o)
    }

    #[test]
    fn entries_round_trip_and_forget_removes_them() {
        let (_d, o) = outbox();
        o.keep(&frame("job/1 \"x\""), None).unwrap();
        o.keep(&upload("job-2", 3), Some(b"abc")).unwrap();
        let report = o.load();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(report.entries.len(), 2);
        let up = report
            .entries
            .iter()
            .find(|l| l.result.job_id == "job-2")
            .unwrap();
        assert_eq!(up.bytes.as_deref(), Some(&b"abc"[..]));
        assert_eq!(up.result, upload("job-2", 3));
        o.forget("job-2").unwrap();
        o.forget("job/1 \"x\"").unwrap();
        o.forget("never-kept").unwrap();
        assert!(o.load().entries.is_empty());
        assert_eq!(fs::read_dir(o.dir()).unwrap().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn the_directory_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, o) = outbox();
        o.keep(&frame("j"), None).unwrap();
        let mode = fs::metadata(o.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_frame_replacing_an_upload_removes_its_bytes() {
        let (_d, o) = outbox();
        o.keep(&upload("j", 2), Some(b"hi")).unwrap();
        o.keep(&frame("j"), None).unwrap();
        let report = o.load();
        assert_eq!(report.entries.len(), 1);
        assert!(matches!(
            report.entries[0].result.body,
            KeptBody::Frame { .. }
        ));
        assert_eq!(fs::read_dir(o.dir()).unwrap().count(), 1, "no .bin left");
    }

    #[test]
    fn an_upload_without_its_bytes_is_refused() {
        let (_d, o) = outbox();
        assert!(o.keep(&upload("j", 3), None).is_err());
        assert!(o.keep(&upload("j", 3), Some(b"ab")).is_err());
        assert!(o.load().entries.is_empty());
    }

    /// Every way an entry can be cut short or damaged: each prefix of a valid entry (a
    /// write killed at any byte, had it gone to the real name), a flipped byte, a temp
    /// file, bytes that do not match: none is ever read as valid; each is removed with a
    /// line saying why.
    #[test]
    fn a_half_written_or_damaged_entry_is_never_read_as_valid() {
        let (_d, o) = outbox();
        o.keep(&upload("j", 5), Some(b"hello")).unwrap();
        let entry = o.entry_path("j");
        let whole = fs::read(&entry).unwrap();
        for cut in 0..whole.len() {
            o.keep(&upload("j", 5), Some(b"hello")).unwrap();
            fs::write(&entry, &whole[..cut]).unwrap();
            let report = o.load();
            assert!(
                report.entries.is_empty(),
                "a {cut}-byte prefix was read as valid"
            );
            assert!(!report.skipped.is_empty(), "cut {cut}: no log line");
            assert!(
                !entry.exists() && !o.bytes_path("j").exists(),
                "cut {cut}: not removed"
            );
        }
        // A flipped byte in the JSON.
        o.keep(&upload("j", 5), Some(b"hello")).unwrap();
        let mut bad = whole.clone();
        let at = bad.len() - 5;
        bad[at] ^= 0x01;
        fs::write(&entry, &bad).unwrap();
        assert!(o.load().entries.is_empty());
        // Damaged bytes.
        o.keep(&upload("j", 5), Some(b"hello")).unwrap();
        fs::write(o.bytes_path("j"), b"jello").unwrap();
        let report = o.load();
        assert!(report.entries.is_empty());
        assert!(
            report.skipped[0].contains("do not match"),
            "{:?}",
            report.skipped
        );
        // A temp file left by a killed write, and orphaned bytes.
        fs::write(o.dir().join(".abc.json.tmp-1-0"), b"{half").unwrap();
        fs::write(o.dir().join("0123.bin"), b"x").unwrap();
        let report = o.load();
        assert!(report.entries.is_empty());
        assert_eq!(report.skipped.len(), 2, "{:?}", report.skipped);
        assert_eq!(fs::read_dir(o.dir()).unwrap().count(), 0);
    }

    /// What an upload waits for: once `flushed` fires, the entry kept before it is on
    /// disk.
    #[test]
    fn flushed_fires_after_the_earlier_writes() {
        let (_d, o) = outbox();
        let (sink, _rx) = crate::pool::tests::channel_sink();
        let w = OutboxWriter::new(o.clone(), sink);
        w.keep(Box::new(upload("b", 2)), Some(Arc::new(b"hi".to_vec())));
        w.flushed().recv().unwrap();
        assert_eq!(o.load().entries.len(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_empty_outbox() {
        let (_d, o) = outbox();
        assert_eq!(o.load(), LoadReport::default());
    }

    fn ops_as_text(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Keep(r, _) => format!("keep {}", r.job_id),
                Op::Forget(id) => format!("forget {id}"),
                Op::Flush(_) => "flush".into(),
            })
            .collect()
    }

    #[test]
    fn a_batch_skips_each_keep_that_a_later_forget_of_its_job_undoes() {
        let (flush, _flushed) = mpsc::channel();
        let batch = vec![
            Op::Forget("z".into()),
            Op::Keep(Box::new(frame("z")), None),
            Op::Keep(Box::new(frame("a")), None),
            Op::Keep(Box::new(upload("b", 2)), Some(Arc::new(b"hi".to_vec()))),
            Op::Keep(Box::new(frame("a")), None),
            Op::Flush(flush),
            Op::Forget("a".into()),
            Op::Keep(Box::new(frame("c")), None),
        ];
        assert_eq!(
            ops_as_text(&coalesce(batch)),
            // z's Keep comes after its Forget: kept. Both of a's Keeps are undone; its
            // Forget stays (an earlier batch may have written a's entry).
            ["forget z", "keep z", "keep b", "flush", "forget a", "keep c"]
        );
    }

    #[test]
    fn forgetting_reports_whether_there_was_an_entry() {
        let (_d, o) = outbox();
        assert!(!o.forget("a").unwrap(), "nothing was written");
        o.keep(&upload("a", 2), Some(b"hi")).unwrap();
        assert!(o.forget("a").unwrap());
        assert!(!o.forget("a").unwrap(), "already forgotten");
        assert!(o.load().entries.is_empty());
    }

    #[test]
    fn the_writer_performs_commands_in_order_and_reports_failures() {
        let (_d, o) = outbox();
        let (sink, rx) = crate::pool::tests::channel_sink();
        {
            let w = OutboxWriter::new(o.clone(), sink);
            w.keep(Box::new(frame("a")), None);
            w.keep(Box::new(upload("b", 2)), Some(Arc::new(b"hi".to_vec())));
            w.forget("a".into());
            // An upload whose bytes are gone: a failure, reported.
            w.keep(Box::new(upload("c", 9)), None);
        }
        let report = o.load();
        let ids: Vec<&str> = report
            .entries
            .iter()
            .map(|l| l.result.job_id.as_str())
            .collect();
        assert_eq!(ids, ["b"]);
        match rx.try_recv() {
            Ok(PoolEvent::Log(e)) => {
                assert_eq!(e.level, "error");
                assert!(e.message.contains("job c"), "{}", e.message);
            }
            other => panic!("expected an error log line, got {other:?}"),
        }
    }
}
