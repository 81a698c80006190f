//! Progress of long operations: a bar on a terminal, plain lines otherwise (logs, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Reports bytes done out of a total.
pub(crate) enum Progress {
    Bar(ProgressBar),
    Lines {
        label: String,
        total: u64,
        last: Option<(Instant, u64)>,
    },
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

impl Progress {
    /// Progress on stderr for `total` bytes of `label`.
    pub(crate) fn bytes(label: &str, total: u64) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_owned());
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                label: label.to_owned(),
                total,
                last: None,
            }
        }
    }

    /// Updates the total (it can grow while an operation runs).
    pub(crate) fn set_total(&mut self, new_total: u64) {
        match self {
            Progress::Bar(bar) => bar.set_length(new_total),
            Progress::Lines { total, .. } => *total = new_total,
        }
    }

    /// `done` bytes so far; a line at most every 2 seconds (and at each change of 10%).
    pub(crate) fn set(&mut self, done: u64, note: Option<&str>) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(done);
                if let Some(note) = note {
                    bar.println(note);
                }
            }
            Progress::Lines { label, total, last } => {
                if *total == 0 && done == 0 && note.is_none() {
                    return;
                }
                let percent = |d: u64| (d * 100).checked_div(*total).unwrap_or(100);
                let due = match last {
                    None => true,
                    Some((at, before)) => {
                        (at.elapsed() >= Duration::from_secs(2) && done != *before)
                            || percent(done) / 10 != percent(*before) / 10
                    }
                };
                if due {
                    eprintln!(
                        "{label}: {:.1} of {:.1} MiB ({}%)",
                        mib(done),
                        mib(*total),
                        percent(done)
                    );
                    *last = Some((Instant::now(), done));
                }
                if let Some(note) = note {
                    eprintln!("{label}: {note}");
                }
            }
        }
    }

    /// Ends the bar (or prints the last line).
    pub(crate) fn finish(self, done: u64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(done);
                bar.finish();
            }
            Progress::Lines { label, total, .. } => {
                eprintln!("{label}: done, {:.1} of {:.1} MiB", mib(done), mib(total));
            }
        }
    }
}
