//! The download progress bar (bytes, rate, ETA) on a terminal, and retry
//! notes on stderr otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;
use vmimg_fetch::{Error, Progress};

/// Reports a download to the user.
pub struct DownloadProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl DownloadProgress {
    /// A bar when stdout and stderr are terminals and not `quiet`; plain
    /// retry notes when only `quiet` is off; nothing otherwise.
    pub fn new(quiet: bool, label: &str) -> DownloadProgress {
        let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
                    .expect("a valid template"),
            );
            bar.set_message(label.to_owned());
            bar
        });
        DownloadProgress { bar, quiet }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for DownloadProgress {
    fn started(&self, offset: u64, total: Option<u64>) {
        if let Some(bar) = &self.bar {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(offset);
        }
    }

    fn advanced(&self, written: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(written);
        }
    }

    fn retrying(&self, error: &Error, delay: Duration) {
        let note = format!("vmimg: {error}; retrying in {:.1}s", delay.as_secs_f64());
        match &self.bar {
            Some(bar) => bar.println(note),
            None if !self.quiet => eprintln!("{note}"),
            None => {}
        }
    }
}
