//! `vmimg pull` and `vmimg build`: any source into the store through the
//! library's front door; prints the image's path as the last line of
//! stdout, or its record with `--json`.

use crate::progress::Report;
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;
use vmimg_fetch::Digest;
use vmimg_store::{GetOptions, Pulled, RootfsFormat, SourceInfo, Store};

/// What a `pull` or `build` asks for.
pub struct Wanted<'a> {
    pub source: &'a str,
    pub digest: Option<Digest>,
    pub format: Option<RootfsFormat>,
    pub name: Option<String>,
    pub refresh: bool,
    pub json: bool,
}

pub async fn run(store: &Store, wanted: Wanted<'_>, quiet: bool) -> Result<()> {
    let source = wanted.source;
    let report = Arc::new(Report::new(quiet, source));
    let options = GetOptions {
        digest: wanted.digest,
        format: wanted.format,
        observer: Some(report.clone()),
        refresh: wanted.refresh,
        name: wanted.name,
        ..Default::default()
    };
    let started = Instant::now();
    let pulled = store.get(source, &options).await;
    report.finish();
    let pulled = pulled?;
    if !quiet {
        tell(&pulled, source, started, &report.hosts());
    }
    if wanted.json {
        let output = Output { pulled: &pulled, served_by: report.hosts() };
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        println!("{}", pulled.path.display());
    }
    Ok(())
}

/// `--json`: the image, and the registry hosts that served it (mirrors or
/// the registry's own server, in the order they first did; none for other
/// sources and for an image the store had).
#[derive(serde::Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    pulled: &'a Pulled,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    served_by: Vec<String>,
}

/// What was done, and what the user should know of it, on stderr.
fn tell(pulled: &Pulled, source: &str, started: Instant, hosts: &[String]) {
    let record = &pulled.record;
    let unverified = !record.verified && matches!(record.source, SourceInfo::Url { .. } | SourceInfo::File { .. });
    if unverified {
        eprintln!("vmimg: warning: {source} is not verified: pass --digest sha256:<hex> to check it");
    }
    if !pulled.replaced.is_empty() {
        eprintln!("vmimg: {source} changed: its older image ({}) is replaced", pulled.replaced.join(", "));
    }
    if pulled.cached {
        return;
    }
    let elapsed = started.elapsed();
    let from = if hosts.is_empty() { String::new() } else { format!(" (from {})", hosts.join(", ")) };
    match &record.container {
        Some(container) => {
            eprintln!("{source}: {} disk ready in {elapsed:.1?}{from}", container.format.name());
            for warning in &container.warnings {
                eprintln!("vmimg: warning: {warning}");
            }
        }
        None => {
            let fetched = if matches!(record.source, SourceInfo::File { .. }) { "" } else { "downloaded, " };
            let verified = if record.verified { "verified" } else { "NOT verified" };
            eprintln!("{source}: {fetched}{verified} and converted in {elapsed:.1?}{from}");
        }
    }
}
