//! `vmimg build`, `vmimg pull` of a container image, and `vmimg builds`:
//! container images made into disks through the store's build manager,
//! with a status line (spinner, stage, bytes pulled) on a terminal.

use crate::units::human;
use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;
use vmimg_oci::Reference;
use vmimg_store::{Build, BuildStatus, Manager, ManagerOptions, RootfsFormat, Store};

/// Builds `reference` as `format` (or finds it built) and prints the disk's
/// path, or its record with `json`.
pub async fn run(store: Store, reference: &Reference, format: RootfsFormat, json: bool, quiet: bool) -> Result<()> {
    let manager = Manager::new(Arc::new(store), ManagerOptions::default())?;
    let build = manager.create(reference, format)?;
    let status = StatusLine::new(quiet, &build);
    let started = std::time::Instant::now();
    let build = manager.follow(&build.id, |b| status.show(b)).await;
    status.finish();
    let build = build?;
    let Some(key) = build.image.filter(|_| build.status == BuildStatus::Ready) else {
        bail!("{}", build.error.unwrap_or_else(|| format!("the build was {}", build.status.name())));
    };
    let store = manager.store();
    let record = store.lookup(&key)?.ok_or_else(|| anyhow::anyhow!("image {key} vanished from the store"))?;
    if !quiet {
        eprintln!("{reference}: {} disk ready in {:.1?}", format.name(), started.elapsed());
        for warning in record.container.iter().flat_map(|c| &c.warnings) {
            eprintln!("vmimg: warning: {warning}");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!("{}", store.image_file(&record).display());
    }
    Ok(())
}

/// `vmimg builds`: every build with its status.
pub fn list(store: Store, json: bool) -> Result<()> {
    let manager = Manager::new(Arc::new(store), ManagerOptions::default())?;
    let builds = manager.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&builds)?);
        return Ok(());
    }
    println!("{:<16} {:<10} {:<6} {:>9}  {:<20} REFERENCE", "ID", "STATUS", "FORMAT", "PULLED", "UPDATED");
    for b in builds {
        println!(
            "{:<16} {:<10} {:<6} {:>9}  {:<20} {}{}",
            b.id,
            b.status.name(),
            b.format.name(),
            human(b.bytes_pulled),
            b.updated_at,
            b.reference,
            b.error.map(|e| format!("\n  error: {e}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// `vmimg builds recover`: runs again the builds a killed process left
/// unfinished, and waits for them.
pub async fn recover(store: Store, concurrency: usize, quiet: bool) -> Result<()> {
    let manager = Manager::new(Arc::new(store), ManagerOptions { concurrency })?;
    let recovered = manager.recover_interrupted()?;
    if recovered.is_empty() && !quiet {
        eprintln!("no interrupted builds");
    }
    let mut failed = 0;
    for build in recovered {
        let done = manager.wait(&build.id).await?;
        if !quiet {
            let outcome = done.error.as_deref().unwrap_or(done.status.name());
            eprintln!("{} {} ({}): {outcome}", done.id, done.reference, done.format.name());
        }
        failed += usize::from(done.status == BuildStatus::Failed);
    }
    if failed > 0 {
        bail!("{failed} recovered build(s) failed");
    }
    Ok(())
}

/// `vmimg builds rm ID`: the build's record and the image it made.
pub async fn remove(store: Store, id: &str, force: bool) -> Result<()> {
    let manager = Manager::new(Arc::new(store), ManagerOptions::default())?;
    Ok(manager.delete(id, force).await?)
}

/// The build's stage and bytes: a spinner on a terminal, a line per stage
/// otherwise (nothing when quiet).
struct StatusLine {
    bar: Option<ProgressBar>,
    quiet: bool,
    last: std::sync::Mutex<Option<BuildStatus>>,
}

impl StatusLine {
    fn new(quiet: bool, build: &Build) -> StatusLine {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg} {elapsed}").expect("a valid template"),
            );
            bar.set_prefix(format!("{} ({})", build.reference, build.format.name()));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        StatusLine { bar, quiet, last: std::sync::Mutex::new(None) }
    }

    fn show(&self, build: &Build) {
        let stage = match (build.status, build.queue_position) {
            (BuildStatus::Pending, Some(position)) => format!("queued (position {position})"),
            (BuildStatus::Pulling, _) => format!("pulling layers: {}", human(build.bytes_pulled)),
            (status, _) => status.name().to_owned(),
        };
        match &self.bar {
            Some(bar) => bar.set_message(stage),
            None if !self.quiet => {
                let mut last = self.last.lock().expect("last status");
                if *last != Some(build.status) {
                    *last = Some(build.status);
                    eprintln!("{} ({}): {}", build.reference, build.format.name(), build.status.name());
                }
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn parse_format(s: &str) -> Result<RootfsFormat, String> {
    match s {
        "ext4" => Ok(RootfsFormat::Ext4),
        "erofs" => Ok(RootfsFormat::Erofs),
        "cpio" => Ok(RootfsFormat::Cpio),
        _ => Err("ext4, erofs or cpio".into()),
    }
}
