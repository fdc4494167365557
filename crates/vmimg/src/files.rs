//! `vmimg convert` and `vmimg copy`: disk files in, disk files out, no store.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;
use vmimg_disk::format_size;
use vmimg_disk::{ConvertOptions, CopyMethod, CopyOptions, DiskImage, Format};

/// How a command reports what it did: a summary on stderr (unless quiet),
/// or JSON on stdout.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

pub fn convert(src: &Path, dst: &Path, format: Option<Format>, options: &ConvertOptions, output: Output) -> Result<()> {
    let image = DiskImage::open(src, format).map_err(with_raw_hint)?;
    let started = Instant::now();
    let stats = vmimg_disk::convert_to_path(&image, dst, options)?;
    if output.json {
        let done = serde_json::json!({
            "source": src, "destination": dst, "source_format": image.format().name(),
            "virtual_size": stats.virtual_size, "bytes_written": stats.bytes_written,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if !output.quiet {
        eprintln!(
            "converted {} ({}, {}) to {} in {:.2?}: {} written, the rest left as holes",
            src.display(),
            image.format().name(),
            format_size(stats.virtual_size),
            dst.display(),
            started.elapsed(),
            format_size(stats.bytes_written),
        );
    }
    Ok(())
}

pub fn copy(src: &Path, dst: &Path, options: &CopyOptions, output: Output) -> Result<()> {
    let started = Instant::now();
    let stats = vmimg_disk::copy_raw(src, dst, options)?;
    if output.json {
        let done = serde_json::json!({
            "source": src, "destination": dst, "source_size": stats.source_size,
            "virtual_size": stats.virtual_size, "bytes_copied": stats.bytes_copied,
            "method": stats.method.name(), "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if !output.quiet {
        let moved = match stats.method {
            CopyMethod::Reflink => "blocks shared with the source".to_string(),
            _ => format!("{} written, the rest left as holes", format_size(stats.bytes_copied)),
        };
        eprintln!(
            "copied {} ({}) to {} ({}) in {:.2?} by {}: {moved}",
            src.display(),
            format_size(stats.source_size),
            dst.display(),
            format_size(stats.virtual_size),
            started.elapsed(),
            stats.method.name(),
        );
    }
    Ok(())
}

/// A file probing refuses as a raw disk only for its size or its text can
/// still be read as raw when the user says so, as qemu-img would.
fn with_raw_hint(error: vmimg_disk::Error) -> anyhow::Error {
    use vmimg_disk::{Content, NotADisk};
    let hint = match &error {
        vmimg_disk::Error::Unsupported {
            content: Content::NotADisk(NotADisk::TooSmall(_) | NotADisk::PartialSector(_)),
            ..
        } => "if it is a disk all the same, `-f raw` reads it as raw, padded with zeros to a whole sector",
        vmimg_disk::Error::Unsupported { content: Content::NotADisk(NotADisk::Text), .. } => {
            "if it is a disk all the same, `-f raw` reads it as raw"
        }
        _ => return error.into(),
    };
    let line = format!("{error} ({hint})");
    Err::<(), _>(error).context(line).unwrap_err()
}
