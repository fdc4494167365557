//! `vmimg bundle export|import` and `vmimg image new`.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;
use vmimg_disk::format_size;
use vmimg_fetch::Digest;
use vmimg_store::{BundleLimits, ExportOptions, Machine, Pulled, Store};

pub async fn export(
    store: &Store,
    image: &str,
    file: &Path,
    options: ExportOptions,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let key = store.find(image).await?.name;
    let started = Instant::now();
    let exported = store.export_bundle(&key, file, options).await?;
    if !quiet {
        eprintln!(
            "exported {key} to {} ({}, {} of disk data) in {:.1?}\n{}",
            file.display(),
            format_size(exported.size),
            format_size(exported.data_bytes),
            started.elapsed(),
            exported.digest
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&exported)?);
    } else {
        println!("{}", file.display());
    }
    Ok(())
}

pub async fn import(
    store: &Store,
    file: &Path,
    name: Option<&str>,
    limits: BundleLimits,
    digest: Option<Digest>,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let started = Instant::now();
    let imported = store.import_bundle(file, name, limits, digest).await?;
    report(&imported, json, quiet, &format!("imported {} in {:.1?}", file.display(), started.elapsed()))
}

pub async fn new_image(
    store: &Store,
    name: &str,
    size: u64,
    machine: Option<&Path>,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let machine = match machine {
        Some(path) => Some(Machine::load(path).with_context(|| path.display().to_string())?),
        None => None,
    };
    let made = store.new_image(name, size, machine).await?;
    report(&made, json, quiet, &format!("made blank image {name} ({})", format_size(size)))
}

/// The image's path (or record), and a line for people on stderr.
fn report(image: &Pulled, json: bool, quiet: bool, line: &str) -> Result<()> {
    if !quiet {
        eprintln!("{line}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(image)?);
    } else {
        println!("{}", image.path.display());
    }
    Ok(())
}
