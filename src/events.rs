//! A source's JSON-lines events log, written by a thread of its own.
//!
//! Inference observes frames in order while it holds its in-order release (see
//! `infer::Stage::explain`): a slow or stalled disk there would hold every session. The monitor
//! only formats a line and queues it; this thread appends the lines in the order they were
//! queued and flushes whenever it has caught up, so `tail -f` sees each event as it happens
//! and a crash loses at most the lines still queued.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{fail, Kind};

/// Lines queued at most before the monitor waits for the disk: minutes of events at the usual
/// cadence, so only a disk that has stopped holds inference back.
const QUEUED: usize = 1024;

pub(crate) struct EventLog {
    tx: Option<Sender<(u64, String)>>,
    writer: Option<JoinHandle<()>>,
    /// Set once by the writer when the log failed; taken once by whoever reports it.
    failed: Arc<Mutex<Option<String>>>,
}

impl EventLog {
    /// Opens `path` for appending (an error names it) and starts its writer.
    pub(crate) fn open(path: &Path, source: &str) -> anyhow::Result<EventLog> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                fail(
                    Kind::Output,
                    format!("cannot write events file {}: {e}", path.display()),
                )
            })?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUED);
        let failed = Arc::new(Mutex::new(None));
        let (path, source, fl) = (path.to_path_buf(), source.to_string(), failed.clone());
        let writer = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || write_lines(rx, std::io::BufWriter::new(f), &path, &source, &fl))
            .map_err(|e| fail(Kind::Runtime, format!("cannot start the events writer: {e}")))?;
        Ok(EventLog {
            tx: Some(tx),
            writer: Some(writer),
            failed,
        })
    }

    /// Queues the line of frame `seq`. Waits only while `QUEUED` (1024) lines are ahead of it. A
    /// line sent after the log failed is dropped: the failure is reported instead.
    pub(crate) fn send(&self, seq: u64, line: String) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((seq, line));
        }
    }

    /// The log's failure, once: the message already logged as an error.
    pub(crate) fn take_failure(&self) -> Option<String> {
        self.failed.lock().ok()?.take()
    }

    /// Writes what is queued, flushes, and stops the writer; then any failure not yet taken.
    pub(crate) fn close(mut self) -> Option<String> {
        self.finish();
        self.take_failure()
    }

    fn finish(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.finish();
    }
}

fn write_lines(
    rx: Receiver<(u64, String)>,
    mut w: std::io::BufWriter<std::fs::File>,
    path: &Path,
    source: &str,
    failed: &Mutex<Option<String>>,
) {
    // The first frame whose line is not known to be on disk: what a failure loses from.
    let mut unflushed: Option<u64> = None;
    let mut result = Ok(());
    for (seq, line) in &rx {
        unflushed.get_or_insert(seq);
        result = writeln!(w, "{line}");
        if result.is_ok() && rx.is_empty() {
            result = w.flush();
            if result.is_ok() {
                unflushed = None;
            }
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = w.flush();
    }
    if let Err(e) = result {
        let msg = format!(
            "cannot write events log {} of source '{source}': {e}; it holds the events before frame {}",
            path.display(),
            unflushed.unwrap_or(0)
        );
        tracing::error!("{msg}");
        if let Ok(mut f) = failed.lock() {
            *f = Some(msg);
        }
        // The file is closed here; lines still queued (and any sent later) are dropped by the
        // receiver's end.
    }
    // BufWriter's drop would flush again and fail silently on a bad disk: drop the buffer.
    let _ = w.into_parts();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_in_the_order_sent_and_all_of_them_by_close() {
        let path = std::env::temp_dir().join(format!("gradcamd-events-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = EventLog::open(&path, "cam").unwrap();
        // More than the queue holds: the sender waits for the writer instead of losing lines.
        let n = 3 * QUEUED as u64;
        for seq in 0..n {
            log.send(seq, format!("{{\"seq\":{seq}}}"));
        }
        assert_eq!(log.close(), None);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let want: Vec<String> = (0..n).map(|s| format!("{{\"seq\":{s}}}")).collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), want);
    }

    #[test]
    fn a_full_disk_is_reported_once_naming_the_file_and_the_first_frame_lost() {
        let log = EventLog::open(Path::new("/dev/full"), "line1").unwrap();
        log.send(7, "{}".into());
        log.send(8, "{}".into());
        let msg = log.close().unwrap_or_default();
        assert!(
            msg.starts_with("cannot write events log /dev/full of source 'line1': No space left")
                && msg.ends_with("it holds the events before frame 7"),
            "{msg}"
        );
    }
}
