//! Hostile images: crafted qcow2 files, each a valid image from
//! [`common::Builder`] with one thing broken, generated and opened in memory.
//!
//! Every case goes through [`exercise`]: open, walk the whole allocation map,
//! read the whole virtual disk in chunks. A broken image must end in a
//! specific error that names what is wrong, never a panic, an abort or a huge
//! allocation. Two probes watch each run: the source panics on a read that
//! starts past the end of the file, and a counting allocator fails the test
//! when the reader makes one allocation larger than twice the file or a
//! 2 MiB cluster (what a header field could ask for, if it were trusted).
//! Cases the fuzzer found are at the end.

mod common;

use common::{Builder, COPIED, Content, EXT_CRYPTO_HEADER, EXT_DATA_FILE, Image, field};
use common::{INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, L2_COMPRESSED, L2_ZERO};
use std::io;
use vmimg_qcow2::{Allocation, Error, Extent, Header, OpenOptions, Qcow2, ReadAt};

// ---------------------------------------------------------------------------
// The harness

/// Bytes per `read_at` call when reading a whole disk.
const CHUNK: usize = 256 << 10;
/// The largest cluster, which the reader may allocate whatever the file size.
const MAX_CLUSTER: usize = 2 << 20;
/// Disks larger than this are not read whole (a harness guard, not a limit of the reader).
const MAX_READ: u64 = 1 << 30;

/// An in-memory image that fails the test on a read starting past its end.
struct Strict(Vec<u8>);

impl ReadAt for Strict {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        assert!(offset <= self.0.len() as u64, "read at {offset:#x}, past the end of the {}-byte file", self.0.len());
        self.0.read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// Opens `bytes`, walks its map and reads its disk; returns the disk's bytes.
fn exercise(bytes: Vec<u8>) -> Result<Vec<u8>, Error> {
    let mut disk = Vec::new();
    exercise_with(bytes, OpenOptions::default(), |chunk| disk.extend_from_slice(chunk))?;
    Ok(disk)
}

/// Opens `bytes`, walks the whole allocation map and reads the whole virtual
/// disk in chunks, handing each to `sink`; returns the first error. Both the
/// walk and the read run even when the other fails.
fn exercise_with(bytes: Vec<u8>, options: OpenOptions, mut sink: impl FnMut(&[u8])) -> Result<(), Error> {
    let limit = 2 * bytes.len().max(MAX_CLUSTER);
    let img = bounded(limit, || Qcow2::open_with(Strict(bytes), options))?;
    let walked = walk(&img, limit);
    let read = read_disk(&img, limit, &mut sink);
    walked.and(read)
}

/// Walks the allocation map and checks that it tiles the virtual disk.
fn walk<R: ReadAt>(img: &Qcow2<R>, limit: usize) -> Result<Vec<Extent>, Error> {
    let extents: Vec<Extent> = bounded(limit, || img.extents(0).collect::<Result<_, _>>())?;
    let mut end = 0;
    for e in &extents {
        assert_eq!(e.start, end, "extents leave a gap or overlap: {e:?}");
        assert!(e.len > 0, "empty extent {e:?}");
        end = e.end();
    }
    assert_eq!(end, img.virtual_size(), "extents stop short of the virtual size");
    Ok(extents)
}

fn read_disk<R: ReadAt>(img: &Qcow2<R>, limit: usize, sink: &mut impl FnMut(&[u8])) -> Result<(), Error> {
    assert!(img.virtual_size() <= MAX_READ, "a test case opened a {}-byte disk", img.virtual_size());
    let mut decoder = img.decoder()?;
    let mut buf = vec![0; CHUNK];
    let mut offset = 0;
    while offset < img.virtual_size() {
        let len = (img.virtual_size() - offset).min(CHUNK as u64) as usize;
        bounded(limit, || img.read_at(&mut buf[..len], offset, &mut decoder))?;
        sink(&buf[..len]);
        offset += len as u64;
    }
    Ok(())
}

/// Runs `f`, failing the test if it made one allocation over `limit` bytes.
fn bounded<T>(limit: usize, f: impl FnOnce() -> T) -> T {
    probe::reset();
    let out = f();
    let largest = probe::largest();
    assert!(largest <= limit, "the reader allocated {largest} bytes at once; the bound is {limit}");
    out
}

/// Records the largest single allocation of each thread. (Allocations inside
/// the zstd C library bypass it.)
mod probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Probe;

    #[global_allocator]
    static GLOBAL: Probe = Probe;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    pub fn reset() {
        LARGEST.with(|l| l.set(0));
    }

    pub fn largest() -> usize {
        LARGEST.with(Cell::get)
    }

    // SAFETY: every call is passed unchanged to the system allocator; `note`
    // only touches a const-initialised thread-local that never allocates.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

/// The error `bytes` must end in.
#[track_caller]
fn error_of(bytes: Vec<u8>) -> Error {
    match exercise_with(bytes, OpenOptions::default(), |_| {}) {
        Ok(()) => panic!("the image was accepted"),
        Err(e) => e,
    }
}

/// Asserts that `bytes` is refused as invalid with a message naming all of `words`.
#[track_caller]
fn assert_invalid(bytes: Vec<u8>, words: &[&str]) {
    match error_of(bytes) {
        Error::Invalid(msg) => assert_names(&msg, words),
        other => panic!("expected Error::Invalid naming {words:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_names(msg: &str, words: &[&str]) {
    for word in words {
        assert!(msg.contains(word), "the message {msg:?} does not name {word:?}");
    }
}

/// The mixed image (data, compressed, zero, unallocated) with `patch` applied.
fn mixed_with(patch: impl FnOnce(&mut Image)) -> Vec<u8> {
    let mut img = Builder::mixed().build();
    patch(&mut img);
    img.bytes
}

// ---------------------------------------------------------------------------
// Good images: the builder is right, so a refusal below comes from the one
// broken field.

#[test]
fn valid_images_read_back() {
    let cases = [
        ("v2", Builder::mixed_v2()),
        ("v3", Builder::mixed()),
        ("zstd", Builder::mixed().zstd()),
        ("extended L2", Builder::mixed().extended_l2()),
        ("extended L2 + zstd", Builder::mixed().extended_l2().zstd()),
        ("512 B clusters, several L2 tables", several_l2_tables()),
        ("disk ending inside a data cluster", Builder::mixed().virtual_size((6 << 16) - 1000)),
        ("disk ending inside a compressed cluster", ending_in_a_compressed_cluster()),
    ];
    for (name, builder) in cases {
        let img = builder.build();
        let disk = exercise(img.bytes.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(disk == img.expected, "{name}: the disk reads back wrong");
    }
}

fn ending_in_a_compressed_cluster() -> Builder {
    Builder::v3().virtual_size((2 << 16) - 1000).cluster(0, Content::Data(1)).cluster(1, Content::Compressed(2))
}

/// 512-byte clusters: one L2 table maps 32 KiB, so this needs four, one of
/// them absent.
fn several_l2_tables() -> Builder {
    Builder::v3()
        .cluster_bits(9)
        .virtual_size(100 * 1024 + 512)
        .cluster(0, Content::Data(1))
        .cluster(70, Content::Compressed(2))
        .cluster(71, Content::Zero)
        .cluster(200, Content::Compressed(3))
}

#[test]
fn unaligned_reads_and_walks_match_the_disk() {
    let img = Builder::mixed().virtual_size((1 << 20) - 1000).build();
    let q = Qcow2::open(img.bytes.clone()).unwrap();
    let mut decoder = q.decoder().unwrap();
    let mut offset = 77;
    while offset < q.virtual_size() {
        let mut buf = vec![0; 3001.min(q.virtual_size() - offset) as usize];
        q.read_at(&mut buf, offset, &mut decoder).unwrap();
        assert!(buf == img.expected[offset as usize..][..buf.len()], "read at {offset} differs");
        offset += buf.len() as u64;
    }
    let first = q.extents(70_000).next().unwrap().unwrap();
    assert_eq!((first.start, first.len), (70_000, 131_072 - 70_000));
    assert!(matches!(first.allocation, Allocation::Compressed { .. }));
}

#[test]
fn empty_disk() {
    assert_eq!(exercise(Builder::v3().virtual_size(0).build().bytes).unwrap(), b"");
}

#[test]
fn reads_past_the_virtual_size_are_refused() {
    let q = Qcow2::open(Builder::mixed().build().bytes).unwrap();
    let mut buf = [0; 2];
    let err = q.read_at(&mut buf, q.virtual_size() - 1, &mut q.decoder().unwrap()).unwrap_err();
    assert!(matches!(&err, Error::Invalid(m) if m.contains("past the virtual size")), "{err:?}");
    let err = q.read_at(&mut buf, u64::MAX, &mut q.decoder().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
}

/// An oracle for the builder itself; skipped where qemu-img is missing (never
/// under CI).
#[test]
fn builder_images_pass_qemu_img_check() {
    if std::process::Command::new("qemu-img").arg("--version").output().is_err() {
        return vmimg_testserver::mounts::skip_missing("qemu-img (package qemu-utils)");
    }
    let dir = std::env::temp_dir().join(format!("vmimg-qcow2-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("v2", Builder::mixed_v2()),
        ("v3", Builder::mixed()),
        ("zstd", Builder::mixed().zstd()),
        ("extl2", Builder::mixed().extended_l2()),
        ("small", several_l2_tables()),
    ];
    for (name, builder) in cases {
        let img = builder.build();
        let (qcow2, raw) = (dir.join(format!("{name}.qcow2")), dir.join(format!("{name}.raw")));
        std::fs::write(&qcow2, &img.bytes).unwrap();
        std::fs::write(&raw, &img.expected).unwrap();
        qemu_img(&["check", "-f", "qcow2", qcow2.to_str().unwrap()]);
        qemu_img(&["compare", "-f", "qcow2", "-F", "raw", qcow2.to_str().unwrap(), raw.to_str().unwrap()]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// The fixed header

#[test]
fn bad_magic() {
    let bytes = mixed_with(|img| img.set_bytes(field::MAGIC, b"QFI\xfa"));
    assert!(matches!(error_of(bytes), Error::NotQcow2));
}

#[test]
fn versions_1_and_4() {
    for version in [0, 1, 4, u32::MAX] {
        let bytes = mixed_with(|img| img.set_u32(field::VERSION, version));
        let err = error_of(bytes);
        assert!(matches!(err, Error::UnsupportedVersion(v) if v == version), "{err:?}");
    }
}

#[test]
fn cluster_bits_out_of_range() {
    for bits in [0, 8, 22, 63, 64, u32::MAX] {
        assert_invalid(mixed_with(|img| img.set_u32(field::CLUSTER_BITS, bits)), &["cluster_bits", &bits.to_string()]);
    }
}

#[test]
fn virtual_size_near_the_top_of_u64() {
    for size in [1 << 62, (1 << 63) - 512, 1 << 63, u64::MAX - 511, u64::MAX] {
        assert_invalid(mixed_with(|img| img.set_u64(field::SIZE, size)), &["virtual size", &size.to_string()]);
    }
}

#[test]
fn virtual_size_larger_than_the_l1_table_maps() {
    // One L1 entry maps 512 MiB at 64 KiB clusters; the image has one.
    let bytes = mixed_with(|img| img.set_u64(field::SIZE, (512 << 20) + 1));
    assert_invalid(bytes, &["l1_size is 1", "needs 2 entries"]);
}

#[test]
fn l1_size_huge() {
    assert_invalid(mixed_with(|img| img.set_u32(field::L1_SIZE, u32::MAX)), &["l1_size", "4294967295"]);
}

#[test]
fn l1_size_smaller_than_needed() {
    assert_invalid(mixed_with(|img| img.set_u32(field::L1_SIZE, 0)), &["l1_size is 0"]);
}

#[test]
fn l1_size_larger_than_the_file() {
    // 4 Mi entries is within QEMU's cap, but 32 MiB of table is not in the file.
    assert_invalid(mixed_with(|img| img.set_u32(field::L1_SIZE, 4 << 20)), &["L1 table", "past the end"]);
}

#[test]
fn l1_table_past_the_end() {
    for offset in [1 << 30, 1 << 56, u64::MAX - 0xffff] {
        let bytes = mixed_with(|img| img.set_u64(field::L1_TABLE_OFFSET, offset));
        assert_invalid(bytes, &["L1 table", "past the end"]);
    }
}

#[test]
fn l1_table_unaligned() {
    let bytes = mixed_with(|img| img.set_u64(field::L1_TABLE_OFFSET, img.l1_offset + 8));
    assert_invalid(bytes, &["L1 table", "not aligned"]);
}

#[test]
fn refcount_table_past_the_end() {
    let bytes = mixed_with(|img| img.set_u64(field::REFCOUNT_TABLE_OFFSET, img.len() + img.cluster_size));
    assert_invalid(bytes, &["refcount table", "past the end"]);
    let bytes = mixed_with(|img| img.set_u32(field::REFCOUNT_TABLE_CLUSTERS, 100));
    assert_invalid(bytes, &["refcount table", "past the end"]);
}

#[test]
fn refcount_table_oversized() {
    let bytes = mixed_with(|img| img.set_u32(field::REFCOUNT_TABLE_CLUSTERS, u32::MAX));
    assert_invalid(bytes, &["refcount table", "4294967295 clusters", "8 MiB"]);
}

#[test]
fn refcount_table_unaligned() {
    let bytes = mixed_with(|img| img.set_u64(field::REFCOUNT_TABLE_OFFSET, img.refcount_table_offset + 512));
    assert_invalid(bytes, &["refcount table", "not aligned"]);
}

#[test]
fn refcount_order_too_large() {
    assert_invalid(mixed_with(|img| img.set_u32(field::REFCOUNT_ORDER, 7)), &["refcount_order is 7"]);
}

#[test]
fn nb_snapshots_huge() {
    assert_invalid(mixed_with(|img| img.set_u32(field::NB_SNAPSHOTS, u32::MAX)), &["nb_snapshots", "4294967295"]);
}

#[test]
fn snapshot_table_past_the_end_or_unaligned() {
    let bytes = mixed_with(|img| {
        img.set_u32(field::NB_SNAPSHOTS, 2000); // 80 KB of snapshot headers in the last 64 KiB
        img.set_u64(field::SNAPSHOTS_OFFSET, img.len() - img.cluster_size);
    });
    assert_invalid(bytes, &["snapshot table", "past the end"]);
    let bytes = mixed_with(|img| {
        img.set_u32(field::NB_SNAPSHOTS, 1);
        img.set_u64(field::SNAPSHOTS_OFFSET, 12);
    });
    assert_invalid(bytes, &["snapshot table", "not aligned"]);
}

#[test]
fn header_length_too_short() {
    for len in [0, 72, 96] {
        assert_invalid(mixed_with(|img| img.set_u32(field::HEADER_LENGTH, len)), &["header_length", &len.to_string()]);
    }
}

#[test]
fn header_length_not_a_multiple_of_8() {
    assert_invalid(mixed_with(|img| img.set_u32(field::HEADER_LENGTH, 108)), &["header_length is 108"]);
}

#[test]
fn header_length_larger_than_a_cluster() {
    for len in [(64 << 10) + 8, 0xffff_fff8] {
        assert_invalid(
            mixed_with(|img| img.set_u32(field::HEADER_LENGTH, len)),
            &["header_length", &len.to_string(), "cluster size"],
        );
    }
}

#[test]
fn unknown_incompatible_feature_bit() {
    for bit in [5, 31, 63] {
        let err = error_of(mixed_with(|img| img.set_incompatible(1 << bit)));
        assert!(matches!(&err, Error::Unsupported(m) if m.contains("incompatible feature bits")), "{err:?}");
        assert!(err.to_string().contains(&format!("{:#x}", 1u64 << bit)), "{err}");
    }
}

#[test]
fn unknown_compatible_and_autoclear_bits_are_ignored() {
    let img = Builder::mixed().build();
    let mut bytes = img.bytes.clone();
    bytes[field::COMPATIBLE_FEATURES as usize..][..8].fill(0xff);
    bytes[field::AUTOCLEAR_FEATURES as usize..][..8].copy_from_slice(&(!2u64).to_be_bytes());
    assert!(exercise(bytes).unwrap() == img.expected);
}

#[test]
fn version_3_file_shorter_than_its_header() {
    let mut bytes = Builder::mixed().build().bytes;
    bytes.truncate(100);
    assert_invalid(bytes, &["shorter than a version 3 header"]);
}

// ---------------------------------------------------------------------------
// Compression type

#[test]
fn compression_type_without_the_feature_bit() {
    let bytes = mixed_with(|img| img.set_bytes(field::COMPRESSION_TYPE, &[1]));
    assert_invalid(bytes, &["compression type bit", "compression_type field"]);
}

#[test]
fn compression_bit_without_the_type() {
    assert_invalid(mixed_with(|img| img.set_incompatible(INCOMPAT_COMPRESSION)), &["compression_type field"]);
    // A 104-byte header has no compression_type field at all.
    let bytes = mixed_with(|img| {
        img.set_incompatible(INCOMPAT_COMPRESSION);
        img.set_u32(field::HEADER_LENGTH, 104);
    });
    assert_invalid(bytes, &["compression_type field"]);
}

#[test]
fn unknown_compression_type() {
    for t in [2, 255] {
        let bytes = mixed_with(|img| {
            img.set_incompatible(INCOMPAT_COMPRESSION);
            img.set_bytes(field::COMPRESSION_TYPE, &[t]);
        });
        assert_invalid(bytes, &[&format!("compression_type {t}")]);
    }
}

// ---------------------------------------------------------------------------
// Header extensions, backing files, external data files, encryption

#[test]
fn header_extension_past_the_header_cluster() {
    for len in [64 << 10, u32::MAX] {
        let mut img = Builder::mixed().extension(0x1234_5678, b"x").build();
        img.set_u32(112 + 4, len);
        assert_invalid(img.bytes, &["header extension 0x12345678", &format!("claims {len} bytes")]);
    }
}

#[test]
fn header_extension_running_into_the_backing_file_name() {
    let mut img = Builder::mixed().extension(0x1234_5678, &[7; 16]).backing_file("base.qcow2").build();
    img.set_u32(112 + 4, 40); // past the backing file name at 112 + 24 + 8
    assert_invalid(img.bytes, &["header extension", "claims 40 bytes"]);
}

#[test]
fn unknown_header_extensions_are_skipped() {
    let img = Builder::mixed().extension(0x1234_5678, &[1; 13]).extension(0xdead_beef, &[]).build();
    assert!(exercise(img.bytes).unwrap() == img.expected);
}

#[test]
fn backing_file_refused() {
    let err = error_of(Builder::mixed().backing_file("/etc/shadow").build().bytes);
    assert!(matches!(&err, Error::BackingFileRefused { path } if path == "/etc/shadow"), "{err:?}");
    assert!(err.to_string().contains("/etc/shadow"), "{err}");
}

#[test]
fn backing_file_allowed_on_request_still_reads_unallocated_as_zeros() {
    let img = Builder::mixed().backing_file("base.qcow2").build();
    let mut disk = Vec::new();
    let options = OpenOptions { allow_backing_file: true };
    exercise_with(img.bytes, options, |chunk| disk.extend_from_slice(chunk)).unwrap();
    assert!(disk == img.expected);
}

#[test]
fn backing_file_name_too_long() {
    for size in [1024, u32::MAX] {
        let mut img = Builder::mixed().backing_file("base.qcow2").build();
        img.set_u32(field::BACKING_FILE_SIZE, size);
        assert_invalid(img.bytes, &["backing_file_size", &size.to_string()]);
    }
}

#[test]
fn backing_file_name_past_the_end() {
    for offset in [1 << 40, u64::MAX - 4] {
        let mut img = Builder::mixed().backing_file("base.qcow2").build();
        img.set_u64(field::BACKING_FILE_OFFSET, offset);
        assert_invalid(img.bytes, &["backing file name", "past the end"]);
    }
}

#[test]
fn backing_file_name_inside_the_header() {
    let mut img = Builder::mixed().backing_file("base.qcow2").build();
    img.set_u64(field::BACKING_FILE_OFFSET, 16);
    assert_invalid(img.bytes, &["backing file name", "overlaps the header"]);
}

#[test]
fn external_data_file_bit_refused() {
    let err = error_of(mixed_with(|img| img.set_incompatible(INCOMPAT_DATA_FILE)));
    assert!(matches!(&err, Error::DataFileRefused { path } if path == "(unnamed)"), "{err:?}");
}

#[test]
fn external_data_file_extension_refused() {
    for with_bit in [false, true] {
        let mut img = Builder::mixed().extension(EXT_DATA_FILE, b"/dev/sda").build();
        if with_bit {
            img.set_incompatible(INCOMPAT_DATA_FILE);
        }
        let err = error_of(img.bytes);
        assert!(matches!(&err, Error::DataFileRefused { path } if path == "/dev/sda"), "{err:?}");
    }
}

#[test]
fn data_file_name_too_long() {
    let bytes = Builder::mixed().extension(EXT_DATA_FILE, &[b'a'; 1024]).build().bytes;
    assert_invalid(bytes, &["external data file name", "1024 bytes"]);
}

#[test]
fn encryption_refused() {
    for (method, name) in [(1, "aes"), (2, "luks")] {
        let err = error_of(mixed_with(|img| img.set_u32(field::CRYPT_METHOD, method)));
        assert!(matches!(err, Error::Encrypted(n) if n == name), "{err:?}");
    }
    assert_invalid(mixed_with(|img| img.set_u32(field::CRYPT_METHOD, 3)), &["crypt_method", "3"]);
}

#[test]
fn luks_extension_without_luks() {
    let bytes = Builder::mixed().extension(EXT_CRYPTO_HEADER, &[0; 16]).build().bytes;
    assert_invalid(bytes, &["LUKS header extension", "crypt_method"]);
}

// ---------------------------------------------------------------------------
// L1 and L2 tables

#[test]
fn l2_table_past_the_end() {
    for offset in [1 << 30, 0x00ff_ffff_ffff_0000] {
        assert_invalid(mixed_with(|img| img.set_l1_entry(0, offset | COPIED)), &["L2 table", "past the end"]);
    }
}

#[test]
fn l2_table_unaligned() {
    let bytes = mixed_with(|img| img.set_l1_entry(0, (img.l2_offsets[0] + 512) | COPIED));
    assert_invalid(bytes, &["L2 table", "not aligned"]);
}

#[test]
fn data_cluster_past_the_end() {
    for host in [1 << 30, 0x00ff_ffff_ffff_0000] {
        let bytes = mixed_with(|img| img.set_l2_entry(0, host | COPIED));
        assert_invalid(bytes, &["data cluster", "past the end"]);
    }
}

#[test]
fn data_cluster_unaligned() {
    let bytes = mixed_with(|img| img.set_l2_entry(5, (img.host(5) + 512) | COPIED));
    assert_invalid(bytes, &["data cluster", "unaligned host offset"]);
}

#[test]
fn preallocated_zero_cluster_unaligned() {
    let bytes = mixed_with(|img| img.set_l2_entry(2, (img.host(0) + 512) | L2_ZERO));
    assert_invalid(bytes, &["unaligned host offset"]);
}

#[test]
fn data_cluster_partly_past_the_end_reads_zeros_there() {
    // QEMU's block layer reads past the end of a file as zeros; so does this reader.
    let img = Builder::mixed().build();
    let mut bytes = img.bytes.clone();
    let cut = img.host(5) + 1000;
    bytes.truncate(cut as usize);
    let disk = exercise(bytes).unwrap();
    let start = 5 * img.cluster_size as usize;
    assert!(disk[start..][..1000] == img.expected[start..][..1000]);
    assert!(disk[start + 1000..][..64_536].iter().all(|&b| b == 0));
}

#[test]
fn compressed_cluster_past_the_end() {
    let bytes = mixed_with(|img| img.set_l2_entry(1, L2_COMPRESSED | (img.len() + 4096)));
    assert_invalid(bytes, &["compressed cluster", "past the end"]);
    // Starting inside the file, but naming far more sectors than are left.
    let bytes = mixed_with(|img| {
        let host = img.len() - 512;
        img.set_l2_entry(1, common::compressed_descriptor(16, host, 64 << 10));
    });
    assert_invalid(bytes, &["compressed cluster", "past the end"]);
}

#[test]
fn compressed_cluster_with_a_subcluster_bitmap() {
    let mut img = Builder::mixed().extended_l2().build();
    img.set_l2_bitmap(1, 1);
    assert_invalid(img.bytes, &["compressed cluster", "subcluster bitmap"]);
}

#[test]
fn garbage_compressed_data() {
    for zstd in [false, true] {
        let builder = if zstd { Builder::mixed().zstd() } else { Builder::mixed() };
        let mut img = builder.build();
        img.set_compressed(1, &[0xff; 1024]);
        let err = error_of(img.bytes);
        let host = img.hosts[&1];
        match &err {
            Error::Decompress { host_offset, reason } => {
                assert_eq!(*host_offset, host);
                assert_names(reason, &[if zstd { "zstd" } else { "deflate" }]);
            }
            other => panic!("expected a Decompress error, got {other:?}"),
        }
    }
}

#[test]
fn compressed_cluster_that_ends_early() {
    let mut img = Builder::mixed().build();
    img.set_compressed(1, &common::deflate(&[7; 1000]));
    let err = error_of(img.bytes);
    assert!(matches!(&err, Error::Decompress { reason, .. } if reason.contains("short of")), "{err:?}");
    let mut img = Builder::mixed().zstd().build();
    img.set_compressed(1, &zstd::bulk::compress(&[7; 1000], 1).unwrap());
    assert!(matches!(error_of(img.bytes), Error::Decompress { .. }));
}

#[test]
fn zstd_bomb_refused() {
    let frames = [
        ("declared 1 TiB", zstd_rle_frame(Some(1 << 40), 8)),
        ("undeclared size", zstd_rle_frame(None, 64)),
        ("real encoder, 16 MiB of zeros", zstd::bulk::compress(&vec![0; 16 << 20], 1).unwrap()),
    ];
    for (name, frame) in frames {
        let mut img = Builder::mixed().zstd().build();
        img.set_compressed(1, &frame);
        match error_of(img.bytes) {
            Error::Decompress { reason, .. } => assert_names(&reason, &["zstd"]),
            other => panic!("{name}: expected a Decompress error, got {other:?}"),
        }
    }
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB each (so a few bytes
/// expand to `blocks` × 128 KiB), declaring `content_size` if given.
fn zstd_rle_frame(content_size: Option<u64>, blocks: usize) -> Vec<u8> {
    let mut frame = 0xfd2f_b528u32.to_le_bytes().to_vec();
    frame.push(if content_size.is_some() { 0xc0 } else { 0 }); // 8-byte content size field, or none
    frame.push(7 << 3); // window descriptor: 2^(10 + 7) = 128 KiB
    if let Some(size) = content_size {
        frame.extend(size.to_le_bytes());
    }
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (128 << 10) << 3 | 1 << 1 | last; // block size, type RLE, last flag
        frame.extend(&header.to_le_bytes()[..3]);
        frame.push(0xab);
    }
    frame
}

#[test]
fn zlib_stream_longer_than_a_cluster_is_cut_at_the_cluster() {
    // QEMU stops inflating when the cluster is full; so does this reader, and
    // it never holds more than the cluster.
    let mut img = Builder::mixed().build();
    img.set_compressed(1, &common::deflate(&vec![0x5a; 8 << 20]));
    let disk = exercise(img.bytes).unwrap();
    assert!(disk[64 << 10..][..64 << 10].iter().all(|&b| b == 0x5a));
}

#[test]
fn extended_l2_subcluster_allocated_and_zero() {
    let mut img = Builder::mixed().extended_l2().build();
    img.set_l2_bitmap(0, 0xffff_ffff | 1 << 40);
    assert_invalid(img.bytes, &["subcluster at virtual offset 0x4000", "both allocated and zero"]);
}

#[test]
fn extended_l2_subcluster_allocated_in_an_unallocated_cluster() {
    let mut img = Builder::mixed().extended_l2().build();
    img.set_l2_bitmap(3, 1 << 31);
    assert_invalid(img.bytes, &["subcluster", "allocated in an unallocated cluster"]);
}

#[test]
fn extended_l2_partial_bitmaps_read_right() {
    let mut img = Builder::mixed().extended_l2().build();
    img.set_l2_bitmap(0, 0x0000_ffff | 0xff00_0000 << 32); // data, then 8 unallocated, then 8 zero subclusters
    let disk = exercise(img.bytes).unwrap();
    assert!(disk[..32 << 10] == img.expected[..32 << 10]);
    assert!(disk[32 << 10..64 << 10].iter().all(|&b| b == 0));
}

#[test]
fn extended_l2_with_small_clusters() {
    let mut img = Builder::v3().cluster_bits(13).cluster(0, Content::Data(1)).build();
    img.set_incompatible(INCOMPAT_EXTL2);
    assert_invalid(img.bytes, &["extended L2", "16 KiB", "8192 B"]);
}

#[test]
fn data_cluster_pointing_into_the_l1_table_or_refcount_table() {
    for target in [|img: &Image| img.l1_offset, |img: &Image| img.refcount_table_offset] {
        let bytes = mixed_with(|img| img.set_l2_entry(5, target(img) | COPIED));
        assert_invalid(bytes, &["data cluster for virtual offset 0x50000", "overlap or loop"]);
    }
}

#[test]
fn l2_entries_pointing_at_the_header() {
    // Offset 0 in an L2 entry means "unallocated"; as a compressed cluster it
    // is the header, which does not inflate.
    let bytes = mixed_with(|img| img.set_l2_entry(0, COPIED));
    let disk = exercise(bytes).unwrap();
    assert!(disk[..64 << 10].iter().all(|&b| b == 0));
    for host in [0, 100] {
        let bytes = mixed_with(|img| img.set_l2_entry(1, common::compressed_descriptor(16, host, 4096)));
        let err = error_of(bytes);
        assert!(matches!(err, Error::Decompress { host_offset, .. } if host_offset == host), "{err:?}");
    }
}

#[test]
fn l1_entry_pointing_at_the_l1_table() {
    let bytes = mixed_with(|img| img.set_l1_entry(0, img.l1_offset | COPIED));
    assert_invalid(bytes, &["L2 table", "overlap or loop"]);
}

#[test]
fn l2_table_doubling_as_a_data_cluster() {
    let bytes = mixed_with(|img| img.set_l2_entry(5, img.l2_offsets[0] | COPIED));
    assert_invalid(bytes, &["data cluster", "overlap or loop"]);
}

/// 4 KiB clusters: one L2 table maps 2 MiB, 256 L1 entries map 512 MiB.
fn loop_image() -> Image {
    Builder::v3()
        .cluster_bits(12)
        .virtual_size(512 << 20)
        .cluster(0, Content::Data(1))
        .cluster(1, Content::Compressed(2))
        .build()
}

#[test]
fn loop_every_l1_entry_points_to_one_l2_table() {
    let mut img = loop_image();
    let table = img.l2_offsets[0] | COPIED;
    for i in 1..img.l1_size {
        img.set_l1_entry(i, table);
    }
    // The walk refuses the second use of the table; reads (each bounded by
    // its range) stay inside the file and within the allocation bound.
    assert_invalid(img.bytes, &["L2 table for virtual offset 0x200000", "overlap or loop"]);
}

#[test]
fn loop_every_l2_entry_maps_one_data_cluster() {
    let mut img = loop_image();
    let data = img.host(0) | COPIED;
    for i in 0..img.l2_entries {
        img.set_l2_entry(i, data);
    }
    assert_invalid(img.bytes, &["data cluster for virtual offset 0x1000", "overlap or loop"]);
}

#[test]
fn compressed_clusters_may_share_a_host_cluster() {
    // QEMU packs compressed clusters; two descriptors naming the same bytes are legal.
    let img = Builder::mixed().cluster(3, Content::Compressed(2)).build();
    let mut bytes = img.bytes.clone();
    let descriptor = img.l2_entry(1);
    bytes[img.l2_entry_offset(3) as usize..][..8].copy_from_slice(&descriptor.to_be_bytes());
    let disk = exercise(bytes).unwrap();
    assert!(disk == img.expected);
}

// ---------------------------------------------------------------------------
// Truncated and tiny files

#[test]
fn zero_length_and_tiny_files() {
    assert!(matches!(error_of(Vec::new()), Error::NotQcow2));
    assert!(matches!(error_of(b"QFI".to_vec()), Error::NotQcow2));
    assert_invalid(b"QFI\xfb\0\0\0\x03".to_vec(), &["shorter than a qcow2 header"]);
}

#[test]
fn truncated_after_the_header() {
    let mut bytes = Builder::mixed().build().bytes;
    bytes.truncate(112);
    assert_invalid(bytes, &["L1 table", "past the end"]);
}

#[test]
fn every_truncation_is_refused_or_read_safely() {
    for builder in [Builder::mixed(), Builder::mixed().zstd().extended_l2(), several_l2_tables()] {
        let bytes = builder.build().bytes;
        for len in (0..bytes.len()).step_by(2039) {
            let _ = exercise_with(bytes[..len].to_vec(), OpenOptions::default(), |_| {});
        }
    }
}

#[test]
fn header_parse_on_every_prefix() {
    for bytes in [Builder::mixed().build().bytes, Builder::mixed_v2().backing_file("b").build().bytes] {
        for len in 0..200 {
            let prefix = &bytes[..len];
            let _ = Header::parse(prefix, len as u64);
            let _ = exercise(prefix.to_vec());
        }
    }
}
