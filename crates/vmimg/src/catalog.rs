//! `vmimg catalog list|show`.

use anyhow::{Result, bail};
use vmimg_store::Store;

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
        bail!(vmimg_store::Error::UnknownAlias { alias: alias.to_owned() });
    };
    println!("{}", serde_json::to_string_pretty(entry)?);
    Ok(())
}
