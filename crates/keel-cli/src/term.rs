//! stderr shared by the progress line and the logs.
//!
//! On a terminal the progress line is redrawn in place (`\r`, clear to the end of the line)
//! and has no line break. A log line written while it is shown would be glued onto it, so
//! every write goes through [`Stderr`]: a log line first clears a shown progress line, and
//! the progress line is redrawn on its next tick. One lock orders the two.

use std::io::{self, Write};
use std::sync::Mutex;

/// Whether a progress line is on screen (drawn and not cleared since).
static SHOWN: Mutex<bool> = Mutex::new(false);

/// The escape sequence that returns to the start of the line and clears it.
const CLEAR_LINE: &str = "\r\x1b[K";

/// Draws (or redraws) the progress line.
pub fn draw_progress(line: &str) {
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = io::stderr().lock();
    let _ = write!(err, "{CLEAR_LINE}{line}");
    let _ = err.flush();
    *shown = true;
}

/// Clears the progress line if it is shown.
pub fn clear_progress() {
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    if *shown {
        let _ = io::stderr().lock().write_all(CLEAR_LINE.as_bytes());
        *shown = false;
    }
}

/// A writer for log lines: clears the progress line before the first byte of each line.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = io::stderr().lock();
        if *shown {
            err.write_all(CLEAR_LINE.as_bytes())?;
            *shown = false;
        }
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}
