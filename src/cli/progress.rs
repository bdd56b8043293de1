//! Progress on stderr: a live spinner line for a job's status and a byte bar for content. When
//! stderr is not a terminal indicatif draws nothing, so we print plain lines instead (each
//! status change; bytes at every quarter), which read well in logs and CI.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::render::progress_line;
use crate::pb::Video;

/// How often the spinner redraws while nothing changes, so the elapsed time stays live.
const SPINNER_TICK: Duration = Duration::from_millis(120);
/// Plain (non-terminal) byte progress is reported at these fractions of the total.
const PLAIN_REPORT_QUARTERS: u64 = 4;

/// The live status line of one job.
pub struct StatusLine {
    bar: ProgressBar,
    last: String,
}

impl StatusLine {
    /// A spinner on stderr (hidden, and replaced by plain lines, when stderr is not a terminal).
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        if !bar.is_hidden() {
            bar.enable_steady_tick(SPINNER_TICK);
        }
        Self {
            bar,
            last: String::new(),
        }
    }

    /// Shows the job's current state; repeated identical states print nothing new.
    pub fn update(&mut self, video: &Video) {
        let line = progress_line(video);
        if line == self.last {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.set_message(line.clone());
        }
        self.last = line;
    }

    /// A one-off message above the live line (reconnects, notes).
    pub fn note(&self, message: &str) {
        note(&self.bar, message);
    }

    /// Removes the line; the final result is printed on stdout.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        // An error path that never called finish must not leave a spinner ticking.
        self.bar.finish_and_clear();
    }
}

/// A byte progress bar for writing content to a file.
pub struct ByteBar {
    bar: ProgressBar,
    label: String,
    next_plain_report: u64,
}

impl ByteBar {
    /// A bar for `label` (the file), `total` bytes when known, starting at `start` (a resume).
    pub fn new(label: &str, total: Option<u64>, start: u64) -> Self {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{spinner} {msg} {bytes} {bytes_per_sec}"
        };
        let style = ProgressStyle::with_template(template)
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(label.to_owned());
        bar.set_position(start);
        let this = Self {
            bar,
            label: label.to_owned(),
            // A resume starts past some quarters already: report only the ones still ahead.
            next_plain_report: total
                .filter(|t| *t > 0)
                .map_or(0, |t| start.saturating_mul(PLAIN_REPORT_QUARTERS) / t),
        };
        if this.bar.is_hidden() {
            match (total, start) {
                (Some(t), 0) => eprintln!("{label}: writing {t} bytes"),
                (Some(t), s) => eprintln!("{label}: resuming at byte {s} of {t}"),
                (None, _) => eprintln!("{label}: writing"),
            }
        }
        this
    }

    /// Sets the total once it is known (watch learns it from the completed `Video`).
    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
    }

    /// Moves the bar to `pos` bytes.
    pub fn set_position(&mut self, pos: u64) {
        self.bar.set_position(pos);
        if !self.bar.is_hidden() {
            return;
        }
        let Some(total) = self.bar.length().filter(|t| *t > 0) else {
            return;
        };
        // Plain mode: one line per quarter crossed, not one per chunk.
        let quarter = pos.saturating_mul(PLAIN_REPORT_QUARTERS) / total;
        if quarter > self.next_plain_report && quarter < PLAIN_REPORT_QUARTERS {
            self.next_plain_report = quarter;
            eprintln!(
                "{}: {pos}/{total} bytes ({}%)",
                self.label,
                pos.saturating_mul(100) / total
            );
        }
    }

    /// A one-off message above the bar (reconnects).
    pub fn note(&self, message: &str) {
        note(&self.bar, message);
    }

    /// Removes the bar; the result is printed on stdout.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for ByteBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn note(bar: &ProgressBar, message: &str) {
    if bar.is_hidden() {
        eprintln!("{message}");
    } else {
        bar.println(message);
    }
}
