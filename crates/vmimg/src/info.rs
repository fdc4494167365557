//! `vmimg info`: JSON as `qemu-img info --output=json`, or aligned text.

use anyhow::Result;
use std::path::Path;
use vmimg_disk::format_size;
use vmimg_disk::{Format, FormatSpecific, ImageInfo};

pub fn run(path: &Path, format: Option<Format>, json: bool) -> Result<()> {
    let info = ImageInfo::read(path, format)?;
    if let Some(why) = info.not_a_disk {
        // Described as qemu-img describes any file; said so, since pull and
        // convert refuse it.
        eprintln!(
            "vmimg: warning: {} is {}: shown as raw, as qemu-img shows any file, but `vmimg pull` and `vmimg \
             convert` refuse it (`convert -f raw` reads it as raw)",
            path.display(),
            vmimg_disk::Content::NotADisk(why)
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", text(&info));
    }
    Ok(())
}

fn text(info: &ImageInfo) -> String {
    let mut lines = vec![
        format!("image: {}", info.filename),
        format!("file format: {}", info.format),
        match info.virtual_size {
            Some(size) => format!("virtual size: {} ({size} bytes)", format_size(size)),
            None => format!("virtual size: unknown (vmimg does not read {} images)", info.format),
        },
        format!("disk size: {}", format_size(info.actual_size)),
    ];
    if let Some(size) = info.cluster_size {
        lines.push(format!("cluster_size: {size}"));
    }
    if let Some(backing) = &info.backing_filename {
        lines.push(format!("backing file: {backing}"));
    }
    if let Some(fmt) = &info.backing_filename_format {
        lines.push(format!("backing file format: {fmt}"));
    }
    if info.encrypted == Some(true) {
        lines.push("encrypted: yes".into());
    }
    if info.dirty_flag {
        lines.push("dirty flag: yes (the image was not closed cleanly)".into());
    }
    if let Some(FormatSpecific::Qcow2(q)) = &info.format_specific {
        lines.push("Format specific information:".into());
        let mut fact = |k: &str, v: String| lines.push(format!("    {k}: {v}"));
        fact("compat", q.compat.into());
        fact("compression type", q.compression_type.into());
        let opt = |b: Option<bool>| b.map_or("n/a".to_string(), |b| b.to_string());
        fact("lazy refcounts", opt(q.lazy_refcounts));
        fact("refcount bits", q.refcount_bits.to_string());
        fact("corrupt", opt(q.corrupt));
        fact("extended l2", opt(q.extended_l2));
        if let Some(encrypt) = &q.encrypt {
            fact("encryption format", encrypt.format.into());
        }
        if let Some(data_file) = &q.data_file {
            fact("data file", data_file.clone());
        }
    }
    lines.join("\n") + "\n"
}
