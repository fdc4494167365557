//! `vmimg images|rm|du|gc` and `vmimg instance create|list|rm`.

use crate::progress::Report;
use crate::units::human;
use anyhow::Result;
use std::sync::Arc;
use vmimg_store::{GetOptions, InstanceFormat, InstanceRequest, Store};

pub fn images(store: &Store, json: bool) -> Result<()> {
    let images = store.images()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    println!(
        "{:<48} {:<7} {:>9} {:>9} {:>9}  {:<20} SOURCE",
        "NAME", "FORMAT", "SIZE", "ON DISK", "INSTANCES", "CREATED"
    );
    for image in images {
        let r = &image.record;
        let source = r.source.display_name();
        println!(
            "{:<48} {:<7} {:>9} {:>9} {:>9}  {:<20} {source}",
            r.name,
            r.format,
            human(r.virtual_size),
            human(image.bytes_on_disk),
            image.instances,
            r.created_at
        );
    }
    Ok(())
}

pub async fn remove_image(store: &Store, image: &str, force: bool, quiet: bool) -> Result<()> {
    let key = store.find(image).await?.name;
    let instances = store.remove_image(&key, force).await?;
    if !quiet {
        for instance in instances {
            eprintln!("removed instance {instance}");
        }
        eprintln!("removed image {key}");
    }
    Ok(())
}

pub fn du(store: &Store, json: bool) -> Result<()> {
    let usage = store.usage();
    if json {
        println!("{}", serde_json::to_string_pretty(&usage)?);
        return Ok(());
    }
    for (what, bytes) in [
        ("images", usage.images),
        ("blobs (downloaded sources)", usage.blobs),
        ("layer cache (container image layers)", usage.layers),
        ("partial downloads and work", usage.partial),
        ("instances", usage.instances),
        ("total", usage.total),
    ] {
        println!("{:>9}  {what}", human(bytes));
    }
    Ok(())
}

pub async fn gc(store: &Store, keep_under: Option<u64>, dry_run: bool, quiet: bool) -> Result<()> {
    let report = store.gc(keep_under, dry_run).await?;
    if quiet {
        return Ok(());
    }
    let (verb, freed) = if dry_run { ("would remove", "would free") } else { ("removed", "freed") };
    for image in &report.images {
        eprintln!("{verb} image {image}");
    }
    eprintln!(
        "{freed} {} ({} images, {} blobs and layers, {} leftovers in tmp/, {} stale locks)",
        human(report.bytes_freed),
        report.images.len(),
        report.blobs,
        report.tmp_entries,
        report.locks
    );
    if report.in_flight {
        eprintln!("a pull or build is in flight: blobs and layers are left for the next gc");
    }
    Ok(())
}

pub async fn create_instance(
    store: &Store,
    image: &str,
    name: Option<String>,
    size: Option<u64>,
    format: InstanceFormat,
    quiet: bool,
) -> Result<()> {
    let report = Arc::new(Report::new(quiet, image));
    let options = GetOptions { observer: Some(report.clone()), ..Default::default() };
    let pulled = store.get(image, &options).await;
    report.finish();
    let image = pulled?.record.name;
    let instance = store.create_instance(&InstanceRequest { image, name, size, format }).await?;
    if !quiet {
        eprintln!(
            "instance {} of {} ({})",
            instance.record.name,
            instance.record.image,
            human(instance.record.virtual_size)
        );
    }
    println!("{}", instance.path.display());
    Ok(())
}

pub fn list_instances(store: &Store, json: bool) -> Result<()> {
    let instances = store.instances()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&instances)?);
        return Ok(());
    }
    println!("{:<24} {:<6} {:>9}  {:<20} IMAGE", "NAME", "FORMAT", "SIZE", "CREATED");
    for i in instances {
        let r = &i.record;
        println!(
            "{:<24} {:<6} {:>9}  {:<20} {}",
            r.name,
            r.format.name(),
            human(r.virtual_size),
            r.created_at,
            r.image
        );
    }
    Ok(())
}
