//! What a `get` is doing, on stderr: a bar (bytes, rate, ETA) or a spinner
//! with the stage and the registry hosts serving it while stderr is a
//! terminal; otherwise a line per stage, and retry notes. Nothing when quiet. Work without a bar (`cat`, `push`,
//! a catalog refresh) prints the retry notes alone ([`Notes`]): no retry of
//! any transport waits silently.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;
use vmimg_fetch::Progress;
use vmimg_store::{Observer, Stage};

/// Reports a download or build to the user.
pub struct Report {
    bar: Option<ProgressBar>,
    quiet: bool,
    label: String,
    stage: Mutex<Option<Stage>>,
    /// The registry hosts that served manifests or blobs, in the order
    /// they first did.
    hosts: Mutex<Vec<String>>,
}

const SPINNER: &str = "{spinner} {msg} {bytes} {elapsed}";
const BAR: &str = "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";
/// For a terminal that does not say how wide it is (a bare pseudo-terminal),
/// where a wide bar would shrink to nothing.
const FIXED_BAR: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";

impl Report {
    /// Labelled `label` (the source as the user wrote it).
    pub fn new(quiet: bool, label: &str) -> Report {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template(SPINNER).expect("a valid template"));
            bar.set_message(label.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Report { bar, quiet, label: label.to_owned(), stage: Mutex::new(None), hosts: Mutex::default() }
    }

    /// The registry hosts that served, in the order they first did.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.lock().expect("hosts").clone()
    }

    /// The bar's message: the label, the stage, the hosts serving.
    fn message(&self) -> String {
        let stage =
            self.stage.lock().expect("stage").map(|stage| format!(" {}", stage_text(stage))).unwrap_or_default();
        let hosts = self.hosts();
        let via = if hosts.is_empty() { String::new() } else { format!(" from {}", hosts.join(", ")) };
        format!("{}{stage}{via}", self.label)
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Report {
    fn started(&self, offset: u64, total: Option<u64>) {
        if let Some(bar) = &self.bar {
            if let Some(total) = total {
                let template = if stderr_width().is_some() { BAR } else { FIXED_BAR };
                bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
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

    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: Duration) {
        let note = retry_note(error, delay);
        match &self.bar {
            Some(bar) => bar.println(note),
            None if !self.quiet => eprintln!("{note}"),
            None => {}
        }
    }

    fn served_by(&self, host: &str) {
        {
            let mut hosts = self.hosts.lock().expect("hosts");
            if hosts.iter().any(|h| h == host) {
                return;
            }
            hosts.push(host.to_owned());
        }
        // Without a bar, the end's summary line names them.
        if let Some(bar) = &self.bar {
            bar.set_message(self.message());
        }
    }
}

impl Observer for Report {
    fn stage(&self, stage: Stage) {
        {
            let mut last = self.stage.lock().expect("stage");
            if *last == Some(stage) {
                return;
            }
            *last = Some(stage);
        }
        match &self.bar {
            Some(bar) => bar.set_message(self.message()),
            None if !self.quiet => eprintln!("{}: {}", self.label, stage_text(stage)),
            None => {}
        }
    }
}

fn stage_text(stage: Stage) -> String {
    match stage {
        Stage::Queued { position } => format!("queued (position {position})"),
        Stage::Pulling => "pulling".to_owned(),
        Stage::Converting => "converting".to_owned(),
    }
}

/// The width stderr's terminal reports, if it reports one.
fn stderr_width() -> Option<u16> {
    rustix::termios::tcgetwinsize(std::io::stderr()).ok().map(|size| size.ws_col).filter(|&columns| columns > 0)
}

/// What a retry says: `vmimg: retrying in 2.0s: <why>`; at once (another
/// host): `vmimg: <why>`.
fn retry_note(error: &dyn std::error::Error, delay: Duration) -> String {
    if delay.is_zero() {
        return format!("vmimg: {error}");
    }
    if delay < Duration::from_secs(1) {
        return format!("vmimg: retrying in {}ms: {error}", delay.as_millis());
    }
    format!("vmimg: retrying in {:.1}s: {error}", delay.as_secs_f64())
}

/// Retry notes on stderr, and nothing else; nothing when quiet.
pub struct Notes {
    pub quiet: bool,
}

impl Progress for Notes {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: Duration) {
        if !self.quiet {
            eprintln!("{}", retry_note(error, delay));
        }
    }
}
