//! Captures what the runtime logs through `tracing`, so that a test can assert a warning.

use std::io;
use std::sync::{Arc, Mutex};
use tracing::subscriber::DefaultGuard;

/// The log lines written while a [`Capture`] is alive, on this thread.
#[derive(Debug)]
pub struct Capture {
    lines: Arc<Mutex<Vec<u8>>>,
    _guard: DefaultGuard,
}

/// Starts capturing this thread's `tracing` events, at every level. The test's own future runs
/// on the thread that called it (`#[tokio::test]` blocks on it), and so do the loads it awaits.
pub fn capture() -> Capture {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .with_writer(move || Sink(Arc::clone(&sink)))
        .finish();
    Capture {
        lines,
        _guard: tracing::subscriber::set_default(subscriber),
    }
}

impl Capture {
    /// The lines captured so far that hold `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        let bytes = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
