//! `vmimg pull`: prints the ready disk's path as the last line of stdout,
//! or its record with `--json`.

use crate::progress::DownloadProgress;
use anyhow::{Result, bail};
use std::sync::Arc;
use vmimg_fetch::Digest;
use vmimg_store::{Location, OciSource, Resolved, RootfsFormat, Store};

/// What `source` names: for `oci://REF`, what the registry says REF is now;
/// else an alias, URL or file.
pub(crate) async fn resolve(store: &Store, source: &str, digest: Option<Digest>) -> Result<Resolved> {
    match crate::oci::reference(source) {
        Some(reference) if digest.is_none() => Ok(store.resolve_oci(&reference?).await?),
        Some(_) => anyhow::bail!(
            "an oci:// source is verified by its manifest: --digest does not apply (pin it as REF@sha256:…)"
        ),
        None => Ok(store.resolve(source, digest)?),
    }
}

pub async fn run(
    store: Store,
    source: &str,
    digest: Option<Digest>,
    format: Option<RootfsFormat>,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let resolved = match crate::oci::reference(source) {
        Some(reference) if digest.is_none() => {
            let reference = reference?;
            match store.resolve_oci_source(&reference).await? {
                OciSource::Cloud(resolved) => resolved,
                OciSource::Container { .. } => {
                    return crate::build::run(store, &reference, format.unwrap_or_default(), json, quiet).await;
                }
            }
        }
        _ => resolve(&store, source, digest).await?,
    };
    if format.is_some() {
        bail!("--format applies to container images: {source} is a disk image");
    }
    let store = &store;
    if resolved.expected.is_none() && !quiet {
        eprintln!(
            "vmimg: warning: {} is not verified: pass --digest sha256:<hex> to check it",
            resolved.display_name()
        );
    }
    let progress = Arc::new(DownloadProgress::new(quiet, &resolved.key));
    let started = std::time::Instant::now();
    let pulled = store.pull(&resolved, Some(progress.clone())).await;
    progress.finish();
    let pulled = pulled?;
    if !quiet && !pulled.cached {
        let fetched = match resolved.location {
            Location::Url(_) | Location::Oci(_) => "downloaded, ",
            Location::File(_) => "",
        };
        let verified = if pulled.record.verified { "verified" } else { "NOT verified" };
        eprintln!("{}: {fetched}{verified} and converted in {:.1?}", resolved.display_name(), started.elapsed());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&pulled)?);
    } else {
        println!("{}", pulled.path.display());
    }
    Ok(())
}
