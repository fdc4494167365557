//! `vmimg cat oci://…` and `vmimg push IMAGE oci://…`; `pull oci://…` goes
//! through `vmimg pull`.

use crate::manage::image_key;
use crate::units::human;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use vmimg_oci::artifact::DiskFormat;
use vmimg_oci::{Push, Reference};
use vmimg_store::Store;

/// The registry reference in `oci://REF` or `docker://REF`; None for other sources.
pub fn reference(source: &str) -> Option<Result<Reference>> {
    let rest = source.strip_prefix("oci://").or_else(|| source.strip_prefix("docker://"))?;
    Some(Reference::parse(rest).map_err(Into::into))
}

pub fn required_reference(source: &str) -> Result<Reference> {
    match reference(source) {
        Some(reference) => reference,
        None => bail!("{source:?} is not a registry reference: write oci://REGISTRY/REPOSITORY[:TAG|@DIGEST]"),
    }
}

/// Streams the cloud image's disk to stdout.
pub async fn cat(store: &Store, source: &str, quiet: bool) -> Result<()> {
    let reference = required_reference(source)?;
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("refusing to write a disk image to a terminal: redirect stdout (vmimg cat {source} > disk)");
    }
    let registry = store.registry()?;
    let (pinned, image) = registry.cloud_image(&reference, store.arch().name()).await?;
    if !quiet {
        eprintln!(
            "{pinned}: {} disk, {} in {} part{}",
            image.format.name(),
            human(image.size()),
            image.parts.len(),
            if image.parts.len() == 1 { "" } else { "s" }
        );
    }
    let mut stdout = tokio::io::stdout();
    registry.stream_disk(pinned.reference(), &image, &mut stdout).await?;
    Ok(())
}

pub struct PushArgs {
    pub format: DiskFormat,
    pub part_size: u64,
    pub jobs: usize,
}

/// Pushes a store image and prints the pushed reference, pinned to its digest.
pub async fn push(store: &Store, image: &str, target: &str, args: PushArgs, quiet: bool) -> Result<()> {
    let reference = required_reference(target)?;
    let key = image_key(store, image, false, true).await?;
    let record = store.lookup(&key)?.context("the image vanished")?;
    let mut annotations = BTreeMap::from([
        ("cocoonstack.disk.format".to_owned(), args.format.name().to_owned()),
        ("org.opencontainers.image.created".to_owned(), record.created_at.clone()),
    ]);
    if let vmimg_store::SourceInfo::Alias { alias, snapshot, .. } = &record.source {
        let entry = store.catalog().get(alias);
        annotations.insert("cocoonstack.os.name".into(), entry.map_or(alias.clone(), |e| e.distro.clone()));
        annotations.insert("cocoonstack.os.version".into(), entry.map_or(snapshot.clone(), |e| e.version.clone()));
    }
    let push = Push { format: args.format, part_size: args.part_size, jobs: args.jobs, name: key.clone(), annotations };
    let started = std::time::Instant::now();
    let pushed = store.push(&key, &reference, &push).await?;
    if !quiet {
        eprintln!(
            "pushed {key} ({}) to {reference} in {:.1?}: {} parts, {} sent, {} already there",
            human(record.virtual_size),
            started.elapsed(),
            pushed.parts,
            pushed.sent,
            pushed.parts - pushed.sent
        );
    }
    println!("{}", reference.at_digest(pushed.digest));
    Ok(())
}
