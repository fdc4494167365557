//! `vmimg cat oci://…` and `vmimg push IMAGE oci://…`; `pull oci://…` goes
//! through `vmimg pull`. Every retry of the registry client is noted on
//! stderr (unless quiet).

use crate::progress::Notes;
use anyhow::{Result, bail};
use vmimg_disk::format_size;
use vmimg_oci::Reference;
use vmimg_store::{PushOptions, Store};

/// The registry reference in `oci://REF` or `docker://REF`; None for other sources.
pub fn reference(source: &str) -> Option<Result<Reference>> {
    let rest = source.strip_prefix("oci://").or_else(|| source.strip_prefix("docker://"))?;
    Some(vmimg_store::registry_reference(rest).map_err(Into::into))
}

pub fn required_reference(source: &str) -> Result<Reference> {
    match reference(source) {
        Some(reference) => reference,
        None => Err(vmimg_store::Error::Invalid(format!(
            "{source:?} is not a registry reference: write oci://REGISTRY/REPOSITORY[:TAG|@DIGEST]"
        ))
        .into()),
    }
}

/// Both references, when `src` and `dst` are a copy between registries
/// (both `oci://`); None for a copy of disk files; an error for one of each.
pub fn registry_pair(src: &std::path::Path, dst: &std::path::Path) -> Result<Option<(Reference, Reference)>> {
    let is_oci = |p: &std::path::Path| p.to_str().is_some_and(|s| s.starts_with("oci://"));
    match (is_oci(src), is_oci(dst)) {
        (false, false) => Ok(None),
        (true, true) => {
            let text = |p: &std::path::Path| p.to_str().expect("oci:// is UTF-8").to_owned();
            Ok(Some((required_reference(&text(src))?, required_reference(&text(dst))?)))
        }
        _ => bail!(vmimg_store::Error::Invalid(
            "copy takes two disk files, or two oci:// references (registry to registry); to get an image into \
             the store use `vmimg pull`, to publish one `vmimg push`"
                .into()
        )),
    }
}

/// Copies an image from one registry to another, streamed through.
pub async fn copy(store: &Store, src: &Reference, dst: &Reference, json: bool, quiet: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let copied = store.registry()?.copy(src, dst, &Notes { quiet }).await?;
    let digest = copied.digest.clone().expect("a copy has a digest");
    let pinned = format!("oci://{}", dst.at_digest(digest.clone()));
    if !quiet {
        eprintln!(
            "copied oci://{src} to oci://{dst} in {:.1?}: {} manifests, {} blobs sent ({}), {} mounted, {} already there{}",
            started.elapsed(),
            copied.manifests,
            copied.blobs_sent,
            format_size(copied.bytes_sent),
            copied.blobs_mounted,
            copied.blobs_present,
            if copied.signed { ", with its signature" } else { "" }
        );
    }
    if json {
        let copied = serde_json::json!({
            "source": format!("oci://{src}"), "reference": pinned, "digest": digest, "manifests": copied.manifests,
            "blobs_sent": copied.blobs_sent, "bytes_sent": copied.bytes_sent, "blobs_mounted": copied.blobs_mounted,
            "blobs_present": copied.blobs_present, "signed": copied.signed,
        });
        println!("{}", serde_json::to_string_pretty(&copied)?);
    } else {
        println!("{pinned}");
    }
    Ok(())
}

/// Streams the cloud image's disk to stdout.
pub async fn cat(store: &Store, source: &str, quiet: bool) -> Result<()> {
    let reference = required_reference(source)?;
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("refusing to write a disk image to a terminal: redirect stdout (vmimg cat {source} > disk)");
    }
    let registry = store.registry()?;
    let notes = Notes { quiet };
    let (pinned, image) = registry.cloud_image(&reference, store.arch().name(), &notes).await?;
    if !quiet {
        eprintln!(
            "{pinned}: {} disk, {} in {} part{}",
            image.format.name(),
            format_size(image.size()),
            image.parts.len(),
            if image.parts.len() == 1 { "" } else { "s" }
        );
    }
    let mut stdout = tokio::io::stdout();
    registry.stream_disk(pinned.reference(), &image, &mut stdout, &notes).await?;
    Ok(())
}

/// Pushes a store image and prints the pushed reference, pinned to its digest.
pub async fn push(
    store: &Store,
    image: &str,
    target: &str,
    options: PushOptions,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let reference = required_reference(target)?;
    let record = store.find(image).await?;
    let key = record.name.clone();
    let started = std::time::Instant::now();
    let pushed = store.push(&key, &reference, &options, &Notes { quiet }).await?;
    if !quiet {
        eprintln!(
            "pushed {key} ({}) to {reference} in {:.1?}: {} parts, {} sent, {} already there",
            format_size(record.virtual_size),
            started.elapsed(),
            pushed.parts,
            pushed.sent,
            pushed.parts - pushed.sent
        );
    }
    let signature = pushed.signature.as_ref().map(|signature| format!("oci://{signature}"));
    if let Some(signature) = signature.as_ref().filter(|_| !quiet) {
        eprintln!("signed: {signature}");
    }
    let pinned = format!("oci://{}", reference.at_digest(pushed.digest.clone()));
    if json {
        let pushed = serde_json::json!({
            "image": key, "reference": pinned, "digest": pushed.digest, "parts": pushed.parts, "sent": pushed.sent,
            "signature": signature,
        });
        println!("{}", serde_json::to_string_pretty(&pushed)?);
    } else {
        println!("{pinned}");
    }
    Ok(())
}
