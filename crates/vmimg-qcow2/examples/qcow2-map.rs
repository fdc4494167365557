//! Prints the allocation map of a qcow2 image, one run per line, like
//! `qemu-img map`, then checks one range by reading it.
//!
//! ```sh
//! cargo run -p vmimg-qcow2 --example qcow2-map -- disk.qcow2
//! ```

use std::fs::File;
use vmimg_qcow2::{Allocation, Qcow2};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: qcow2-map IMAGE.qcow2")?;
    let image = Qcow2::open(File::open(&path)?)?;
    let h = image.header();
    println!(
        "{path}: qcow2 v{}, {} bytes virtual, {} B clusters, {} compression",
        h.version,
        image.virtual_size(),
        h.cluster_size(),
        h.compression.name()
    );
    println!("{:>18} {:>18}  what", "start", "length");
    for extent in image.extents(0) {
        let e = extent?;
        let what = match e.allocation {
            Allocation::Data { host_offset } => format!("data at host {host_offset:#x}"),
            Allocation::Compressed { host_offset, compressed_len } => {
                format!("compressed, {compressed_len} bytes at host {host_offset:#x}")
            }
            Allocation::Zero => "zero".to_string(),
            Allocation::Unallocated => "unallocated".to_string(),
        };
        println!("{:#18x} {:#18x}  {what}", e.start, e.len);
    }
    let mut first_sector = [0u8; 512];
    image.read_at(&mut first_sector, 0, &mut image.decoder()?)?;
    let mbr = first_sector[510..] == [0x55, 0xaa];
    println!("MBR boot signature in the first sector: {}", if mbr { "yes" } else { "no" });
    Ok(())
}
