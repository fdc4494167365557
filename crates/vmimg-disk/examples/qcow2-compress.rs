//! Writes a raw (or qcow2) disk as a compressed qcow2 image, as `qemu-img
//! convert -c -O qcow2 -o compression_type=zstd` does, and prints what it did.
//! The output is not flushed (qemu-img does not flush either).
//!
//! ```sh
//! cargo run --release -p vmimg-disk --example qcow2-compress -- disk.raw disk.qcow2 [zstd|zlib]
//! ```
//!
//! Env: `THREADS` (0: one per core, at most 8), `CLUSTER_BITS` (default 16),
//! `LEVEL` (0: the codec's default).

use std::path::Path;
use std::time::Instant;
use vmimg_disk::{CompressOptions, Compression, DiskImage, Qcow2ConvertOptions, convert_to_qcow2};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|_| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (src, dst) = match args.as_slice() {
        [src, dst] | [src, dst, _] => (src, dst),
        _ => return Err("usage: qcow2-compress SRC DST [zstd|zlib]".into()),
    };
    let compression = match args.get(2).map(String::as_str) {
        None | Some("zstd") => Compression::Zstd,
        Some("zlib") => Compression::Zlib,
        Some(other) => return Err(format!("unknown compression {other:?}: zstd or zlib").into()),
    };
    let compress = CompressOptions {
        cluster_bits: env_or("CLUSTER_BITS", 16)?,
        compression,
        level: env_or("LEVEL", 0)?,
        threads: env_or("THREADS", 0)?,
    };
    let started = Instant::now();
    let image = DiskImage::open(Path::new(src), None)?;
    let stats = convert_to_qcow2(&image, Path::new(dst), &Qcow2ConvertOptions { compress, sync: false })?;
    eprintln!(
        "{dst}: {} bytes ({} compressed, {} stored, {} zero clusters) in {:.3} s",
        stats.file_len,
        stats.clusters_compressed,
        stats.clusters_stored,
        stats.clusters_zero,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
