//! `vmimg catalog list|show|refresh`.

use anyhow::{Result, bail};
use std::path::Path;
use vmimg_store::{Change, Store};

pub fn list(store: &Store, json: bool) -> Result<()> {
    if json {
        print!("{}", store.catalog().to_json());
        return Ok(());
    }
    println!("{:<16} {:<8} {:<8} {:<10} {:<16} ARCH", "ALIAS", "DISTRO", "VERSION", "CODENAME", "SNAPSHOT");
    for (alias, entry) in store.catalog().entries() {
        let arches: Vec<_> = entry.arch.keys().map(|a| a.name()).collect();
        let codename = entry.codename.as_deref().unwrap_or("-");
        println!(
            "{alias:<16} {:<8} {:<8} {codename:<10} {:<16} {}",
            entry.distro,
            entry.version,
            entry.snapshot,
            arches.join(",")
        );
    }
    Ok(())
}

pub fn show(store: &Store, alias: &str) -> Result<()> {
    let Some(entry) = store.catalog().get(alias) else {
        bail!(vmimg_store::Error::UnknownAlias {
            alias: alias.to_owned(),
            suggestion: store.catalog().closest_alias(alias)
        });
    };
    println!("{}", serde_json::to_string_pretty(entry)?);
    Ok(())
}

/// Refreshes `aliases` (all when empty) in `file`: one line per alias on
/// stdout, one error line per alias that failed, then a failure if any did
/// (`file` keeps the others' updates).
pub async fn refresh(store: &Store, file: &Path, aliases: &[String]) -> Result<()> {
    // Retries are noted as the errors are: this command prints them even when quiet.
    let report = store.refresh_catalog(file, aliases, &crate::progress::Notes { quiet: false }).await?;
    let total = report.len();
    let mut failed = Vec::new();
    for refreshed in report {
        let alias = refreshed.alias;
        match refreshed.outcome {
            Ok(Change::Unchanged { snapshot }) => println!("{alias}: unchanged ({snapshot})"),
            Ok(Change::Bumped { from, to }) => println!("{alias}: {from} -> {to}"),
            Ok(Change::Republished { snapshot }) => println!("{alias}: {snapshot} (republished: new digests)"),
            Err(e) => {
                eprintln!("vmimg: error: {alias}: {e}");
                failed.push(alias);
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} of {total} aliases not refreshed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}
