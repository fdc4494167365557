//! `vmimg images|rm|du|gc` and `vmimg instance create|list|rm`.

use crate::format::ListFormat;
use crate::progress::Report;
use anyhow::Result;
use std::sync::Arc;
use vmimg_disk::format_size;
use vmimg_store::{GcOptions, GetOptions, ImageFilter, ImageRecord, ImageSummary, InstanceRequest, Store};

/// The images `filters` let through, as `listing` prints them.
pub async fn images(store: &Store, filters: &[ImageFilter], listing: ListFormat) -> Result<()> {
    let images = store.images_matching(filters).await?;
    match listing {
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&images)?),
        ListFormat::Template(template) => {
            print!("{}", template.render(&images, crate::format::declared_fields::<ImageRecord>())?)
        }
        ListFormat::Table => image_table(&images),
    }
    Ok(())
}

fn image_table(images: &[ImageSummary]) {
    // Least recently used first: what `gc --keep-under` evicts first.
    let name = column_width("IMAGE", images.iter().map(|i| i.record.name.as_str()));
    let tags: Vec<String> =
        images.iter().map(|i| if i.names.is_empty() { "-".into() } else { i.names.join(",") }).collect();
    let tag = column_width("NAMES", tags.iter().map(String::as_str));
    println!(
        "{:<name$} {:<tag$} {:<7} {:>9} {:>9} {:>9}  {:<20} SOURCE",
        "IMAGE", "NAMES", "FORMAT", "SIZE", "ON DISK", "INSTANCES", "LAST USED"
    );
    for (image, tags) in images.iter().zip(&tags) {
        let r = &image.record;
        let source = r.source.display_name();
        println!(
            "{:<name$} {tags:<tag$} {:<7} {:>9} {:>9} {:>9}  {:<20} {source}",
            r.name,
            r.format,
            format_size(r.virtual_size),
            format_size(image.bytes_on_disk),
            image.instances,
            image.last_used_at
        );
    }
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

pub async fn tag(store: &Store, image: &str, name: &str, quiet: bool) -> Result<()> {
    let key = store.tag(image, name).await?;
    if !quiet {
        eprintln!("{name} names image {key}");
    }
    Ok(())
}

pub fn untag(store: &Store, name: &str, quiet: bool) -> Result<()> {
    let key = store.untag(name)?;
    if !quiet {
        eprintln!("{name} no longer names image {key}");
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
        println!("{:>9}  {what}", format_size(bytes));
    }
    Ok(())
}

pub async fn gc(store: &Store, options: &GcOptions, json: bool, quiet: bool) -> Result<()> {
    let report = store.gc(options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if quiet || json {
        return Ok(());
    }
    let (verb, freed) = if options.dry_run { ("would remove", "would free") } else { ("removed", "freed") };
    for image in &report.images {
        eprintln!("{verb} image {image}");
    }
    eprintln!(
        "{freed} {} ({} images, {} blobs and layers, {} leftovers in tmp/, {} stale locks)",
        format_size(report.bytes_freed),
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

/// Makes an instance of `request.image` (an image name or a source, pulled
/// first if needed).
pub async fn create_instance(store: &Store, mut request: InstanceRequest, json: bool, quiet: bool) -> Result<()> {
    if let Some(name) = &request.name {
        store.check_new_instance_name(name)?;
    }
    let report = Arc::new(Report::new(quiet, &request.image));
    let options = GetOptions { observer: Some(report.clone()), ..Default::default() };
    let pulled = store.get(&request.image, &options).await;
    report.finish();
    request.image = pulled?.record.name;
    let instance = store.create_instance(&request).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&instance)?);
        return Ok(());
    }
    if !quiet {
        eprintln!(
            "instance {} of {} ({})",
            instance.record.name,
            instance.record.image,
            format_size(instance.record.virtual_size)
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
    let name = column_width("NAME", instances.iter().map(|i| i.record.name.as_str()));
    println!("{:<name$} {:<6} {:>9}  {:<20} IMAGE", "NAME", "FORMAT", "SIZE", "CREATED");
    for i in instances {
        let r = &i.record;
        println!(
            "{:<name$} {:<6} {:>9}  {:<20} {}",
            r.name,
            r.format.name(),
            format_size(r.virtual_size),
            r.created_at,
            r.image
        );
    }
    Ok(())
}

/// The width of a column headed `title` that holds `cells`.
fn column_width<'a>(title: &str, cells: impl Iterator<Item = &'a str>) -> usize {
    cells.map(str::len).chain([title.len()]).max().unwrap_or(0)
}
