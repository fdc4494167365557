//! `vmimg inspect`: one store image's [`Inspection`] as JSON, or as
//! aligned `field: value` lines in groups (image, source, disk, instances,
//! container build); a group with nothing in it reads `TITLE: none`.

use anyhow::Result;
use vmimg_disk::format_size;
use vmimg_store::{ContainerInfo, Inspection, Store};

pub async fn run(store: &Store, image: &str, json: bool) -> Result<()> {
    let inspection = store.inspect(image).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        print!("{}", text(&inspection));
    }
    Ok(())
}

/// A titled group of fields.
type Group = (String, Vec<(&'static str, String)>);

fn text(inspection: &Inspection) -> String {
    let mut groups = vec![image(inspection), source(inspection)];
    if let Some(disk) = &inspection.disk {
        let virtual_size = disk.virtual_size.map_or_else(|| "unknown".to_owned(), bytes);
        let facts = vec![
            ("format", disk.format.to_owned()),
            ("virtual size", virtual_size),
            ("allocated", bytes(disk.allocated_size)),
        ];
        groups.push(("disk".to_owned(), facts));
    }
    groups.push(instances(inspection));
    if let Some(container) = &inspection.image.record.container {
        groups.push(("container build".to_owned(), build(container)));
    }
    let width = groups.iter().flat_map(|(_, fields)| fields).map(|(name, _)| name.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (title, fields) in groups {
        out += &if fields.is_empty() { format!("{title}: none\n") } else { format!("{title}\n") };
        for (name, value) in fields {
            out += &format!("  {:<width$} {value}\n", format!("{name}:"));
        }
    }
    out
}

fn image(inspection: &Inspection) -> Group {
    let (summary, record) = (&inspection.image, &inspection.image.record);
    let mut fields = vec![
        ("name", record.name.clone()),
        ("names", if summary.names.is_empty() { "none".to_owned() } else { summary.names.join(", ") }),
        ("path", summary.path.display().to_string()),
        ("format", record.format.to_string()),
        ("created", record.created_at.to_string()),
        ("last used", summary.last_used_at.to_string()),
        ("bytes on disk", bytes(summary.bytes_on_disk)),
    ];
    if record.mutable {
        fields.push(("mutable", "yes: written in place by its owner".to_owned()));
    }
    ("image".to_owned(), fields)
}

fn source(inspection: &Inspection) -> Group {
    let record = &inspection.image.record;
    let mut format = word(record.source_format);
    if let Some(compression) = record.source_compression {
        format += &format!(", {}-compressed", word(compression));
    }
    let mut fields = vec![("source", inspection.source_name.clone()), ("kind", record.source.kind().to_owned())];
    fields.extend(inspection.origin.clone().map(|origin| ("bytes from", origin)));
    fields.push(("format", format));
    fields.push(("digest", record.digest.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string)));
    let verified = match (inspection.verified_against, &record.digest) {
        (Some(verifier), _) => format!("yes, against {}", verifier.describe()),
        (None, Some(_)) => "no: the digest was computed as the bytes came, and checked against nothing".to_owned(),
        (None, None) => "no".to_owned(),
    };
    fields.push(("verified", verified));
    fields.extend(record.blob.clone().map(|blob| ("blob", blob)));
    if !record.blobs.is_empty() {
        fields.push(("parts", record.blobs.join(", ")));
    }
    ("source".to_owned(), fields)
}

fn instances(inspection: &Inspection) -> Group {
    let list = &inspection.instance_list;
    let instance = |instance: &vmimg_store::Instance| {
        let r = &instance.record;
        let size = format_size(r.virtual_size);
        let facts = format!("{}, {size}, created {}, {}", r.format.name(), r.created_at, instance.path.display());
        ("instance", format!("{} ({facts})", r.name))
    };
    let title = if list.is_empty() { "instances".to_owned() } else { format!("instances ({})", list.len()) };
    (title, list.iter().map(instance).collect())
}

fn build(container: &ContainerInfo) -> Vec<(&'static str, String)> {
    let run = &container.run;
    let list = |items: &Vec<String>| serde_json::to_string(items).unwrap_or_default();
    let mut fields = vec![
        ("disk format", container.format.name().to_owned()),
        ("entrypoint", list(&run.entrypoint)),
        ("cmd", list(&run.cmd)),
        ("env", list(&run.env)),
        ("working dir", run.working_dir.clone().unwrap_or_default()),
        ("user", run.user.clone().unwrap_or_default()),
        ("boots systemd", if container.systemd { "yes" } else { "no" }.to_owned()),
        ("layers", container.layers.len().to_string()),
    ];
    fields.extend(container.warnings.iter().map(|warning| ("warning", warning.clone())));
    fields
}

/// `1 MiB (1048576 bytes)`.
fn bytes(count: u64) -> String {
    format!("{} ({count} bytes)", format_size(count))
}

/// A unit enum's name, as its JSON writes it.
fn word(value: impl serde::Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
