//! `vmimg builds`: the container image builds the store's build manager
//! keeps (`vmimg build` itself goes through `vmimg pull`'s front door).

use anyhow::{Result, bail};
use std::sync::Arc;
use vmimg_disk::format_size;
use vmimg_store::{BuildStatus, Manager, ManagerOptions, Store};

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
            format_size(b.bytes_pulled),
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
