//! Compressed read-only erofs disks of a directory tree, made by erofs-utils'
//! `mkfs.erofs` and checked by its `fsck.erofs` before they appear; and of
//! layers merged in memory, for any user and with no tree on the host,
//! written by vmimg itself ([`build_merged`], `native.rs` and `lz4.rs`).
//!
//! Why the external tool: no Rust crate writes a general erofs (see DESIGN.md),
//! and erofs-utils is the format's reference implementation, maintained with
//! the kernel driver. Why not its every option: the version Debian bookworm
//! ships, 1.5, is old, and this module passes only options verified to read
//! back byte for byte, through the kernel and through `fsck.erofs`, on the
//! trees of `tests/erofs.rs`.
//!
//! What [`build`] owns: the `mkfs.erofs` command line, a reproducible image
//! (fixed UUID, and `SOURCE_DATE_EPOCH` for the build time, so the same tree
//! gives the same bytes) and the data check. The image is written to a
//! temporary file beside `out` and checked there with `fsck.erofs --extract`
//! (which decompresses every file); `vmimg_disk::publish_path` then fsyncs it
//! and renames it to `out`. An error leaves no file behind and an older `out`
//! untouched. Owners, modes, mtimes (with nanoseconds), hard links, symlinks,
//! device nodes, FIFOs, sockets and extended attributes are kept as they are
//! in the tree; nothing is made root-owned.
//!
//! What it refuses, before running anything, with a message that says why:
//! lz4hc levels outside 1..=12, physical clusters that are not a multiple of
//! 4 KiB from 4 KiB to 128 KiB, and trees 1.5 cannot take (below, and trees
//! deeper than [`crate::depth::MAX_DEPTH`]: its fsck crashes at about 640). It offers no
//! other compressor (1.5 has only lz4 and lz4hc) and none of the packing
//! options. A missing tool is an error that names the Debian package.
//!
//! Both tools run with a stack of at least 8 MiB, Linux's default, whatever
//! the caller's `ulimit -s`: they recurse on it, one frame a directory
//! level, and [`crate::depth::MAX_DEPTH`] was found with that much.
//!
//! What checking erofs-utils 1.5-1 found (2026-11, liblz4 1.9.4, read back by
//! Linux 6.18 and by fsck.erofs; the tests re-check each point):
//! - `-E ztailpacking` (new in 1.5) corrupts data silently: files just under a
//!   multiple of 4 KiB whose last ~32 bytes compress but the rest does not
//!   (4063 or 4095 random bytes then 31 to 33 equal ones) are stored at the
//!   wrong place; the kernel and `fsck.erofs --extract` both read other bytes,
//!   and `fsck.erofs` exits 0. Never passed.
//! - fsck.erofs exits 0 after some errors it prints (a superblock checksum
//!   mismatch), so [`check`] also fails on any `<E>` line. erofs keeps no
//!   data checksums: stored (uncompressed) bytes that are wrong pass any fsck,
//!   which is why the read-back tests matter more than the check.
//! - mkfs.erofs fails, with misleading messages, on names of 255 bytes
//!   (Linux's maximum; 254 works) and on paths of 4096 bytes or more; both are
//!   refused up front.
//! - "erofs-utils before 1.8 corrupts images" (cocoonstack/cocoon#94) is about
//!   1.7.x's tar mode (`--tar`, not in 1.5); nixpkgs#261394 is a 1.7
//!   regression. The fixes of 1.8.x concern `--tar`, `-E fragments`,
//!   `-E all-fragments`, `-E dedupe`, multi-threaded compression, zstd,
//!   deflate and incremental builds, none of them in 1.5, and 1.8.1's "large
//!   uncompressed files truncated" fixes a 1.8.0 regression: files over 4 GiB
//!   read back exactly here, stored or compressed.
//! - lz4 (not lz4hc) needs liblz4 ≥ 1.9.2 (`LZ4_compress_destSize` bugs);
//!   bookworm has 1.9.4.
//! - `-T` sets *every* mtime to one value, so it is not used;
//!   `SOURCE_DATE_EPOCH` clamps only mtimes newer than it, so by default it is
//!   one second past the tree's newest mtime and clamps none. Without either,
//!   the build time is "now" and every image differs.
//! - Big physical clusters (`-C`, Linux 5.13+) read back exactly from 16 KiB
//!   to 1 MiB, and 64 KiB makes `/usr/bin` 16% smaller than 4 KiB (155 MB
//!   against 184 MB from 353 MB; lz4: 203 MB). But 1.5 compresses
//!   incompressible data ever slower as they grow (5 MiB of random bytes:
//!   2 s at 4 KiB, 3 s at 64 KiB, 15 s at 256 KiB, 37 s at 1 MiB), so they
//!   stop at 128 KiB. The default stays one 4 KiB block, the layout every erofs
//!   kernel reads and the best for random reads.
//! - Speed: lz4hc makes ~35 MB/s of `/usr/bin` here, lz4 ~200 MB/s; both
//!   drop to 2-3 MB/s (lz4hc) on incompressible data.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::depth;
use vmimg_disk::Replace;

mod lz4;
mod native;

pub use native::build_merged;

/// The Debian package that ships `mkfs.erofs` and `fsck.erofs`.
pub const DEBIAN_PACKAGE: &str = "erofs-utils";

/// The largest physical cluster offered: beyond, mkfs.erofs 1.5 crawls on
/// incompressible data.
pub const MAX_PCLUSTER: u32 = 128 * 1024;

/// The least stack the tools get: the depth bound was found with it.
const TOOL_STACK: u64 = 8 << 20;

/// How much of a tool's stderr an error quotes.
const STDERR_TAIL: usize = 8 * 1024;

/// The UUID images get unless told otherwise: reproducible, and not nil.
pub const DEFAULT_UUID: [u8; 16] = *b"vmimg-erofs-v1\0\x01";

/// How file data is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4, fast to build.
    Lz4,
    /// LZ4 high compression, `level` 1 to 12 (erofs-utils' default is 9).
    /// Smaller images, slower builds, reads as fast as LZ4.
    Lz4hc { level: u8 },
}

/// What [`build`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErofsOptions {
    pub compression: Compression,
    /// Largest compressed physical cluster, in bytes: 4096 (one block, the
    /// default) up to 128 KiB, a multiple of 4096. Above one block, the image
    /// needs Linux 5.13+.
    pub pcluster_size: u32,
    /// The filesystem UUID. Pass one derived from the image's identity (say,
    /// the first bytes of the source's digest) when disks must be told apart.
    pub uuid: [u8; 16],
    /// The build time, as `SOURCE_DATE_EPOCH`: mtimes newer than it are
    /// clamped to it. `None`: one second past the tree's newest mtime, so
    /// every mtime is kept and the same tree gives the same image.
    pub timestamp: Option<u64>,
    /// Where `mkfs.erofs` and `fsck.erofs` are; `None` searches `PATH`.
    pub tool_dir: Option<PathBuf>,
}

impl Default for ErofsOptions {
    fn default() -> Self {
        ErofsOptions {
            compression: Compression::Lz4hc { level: 9 },
            pcluster_size: 4096,
            uuid: DEFAULT_UUID,
            timestamp: None,
            tool_dir: None,
        }
    }
}

/// What [`build`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErofsImage {
    /// The image's size in bytes.
    pub bytes: u64,
    /// The erofs-utils version (`fsck.erofs -V`), e.g. "1.5".
    pub erofs_utils_version: String,
}

/// Builds an erofs image of the tree under `root` at `out`, which appears only
/// once `fsck.erofs` has decompressed and checked every file in it.
pub fn build(root: &Path, out: &Path, options: &ErofsOptions) -> io::Result<ErofsImage> {
    validate(options)?;
    if !fs::metadata(root).map_err(|e| context(e, root, "read the tree"))?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("erofs: {}: not a directory", root.display())));
    }
    let newest = scan(root)?;
    let timestamp = options.timestamp.unwrap_or(newest.saturating_add(1));
    let fsck = tool(options, "fsck.erofs");
    let erofs_utils_version = version(&fsck)?;
    let bytes = vmimg_disk::publish_path(out, Replace::Yes, true, |image| {
        mkfs(root, image, options, timestamp)?;
        check_with(image, &fsck)?;
        fs::metadata(image).map(|meta| meta.len()).map_err(|e| context(e, image, "stat"))
    })?;
    Ok(ErofsImage { bytes, erofs_utils_version })
}

/// Checks an erofs image with `fsck.erofs --extract`, which reads every
/// inode and decompresses every file without writing anything.
pub fn check(image: &Path) -> io::Result<()> {
    check_with(image, Path::new("fsck.erofs"))
}

/// fsck.erofs 1.5 exits 0 after some errors it prints (a bad superblock
/// checksum among them), so any error line fails the check too.
fn check_with(image: &Path, fsck: &Path) -> io::Result<()> {
    let mut command = Command::new(fsck);
    command.arg("--extract").arg(image);
    let with_image = |e: io::Error| io::Error::new(e.kind(), format!("{e} (checking {})", image.display()));
    let stderr = run(command, fsck).map_err(with_image)?;
    if stderr.lines().any(|l| l.starts_with("<E>")) {
        let (name, said) = (fsck.display(), crate::tool::summary(&stderr));
        let message = format!("erofs: {name} reported errors: {said}: the image is damaged");
        return Err(with_image(io::Error::new(io::ErrorKind::InvalidData, message)));
    }
    Ok(())
}

fn validate(options: &ErofsOptions) -> io::Result<()> {
    if let Compression::Lz4hc { level } = options.compression
        && !(1..=12).contains(&level)
    {
        return Err(invalid(format!("erofs: lz4hc level {level} is not in 1..=12")));
    }
    let size = options.pcluster_size;
    if !(4096..=MAX_PCLUSTER).contains(&size) || !size.is_multiple_of(4096) {
        return Err(invalid(format!(
            "erofs: physical cluster size {size} must be a multiple of 4096 from 4096 to {MAX_PCLUSTER}"
        )));
    }
    Ok(())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn tool(options: &ErofsOptions, name: &str) -> PathBuf {
    match &options.tool_dir {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

fn mkfs(root: &Path, image: &Path, options: &ErofsOptions, timestamp: u64) -> io::Result<()> {
    let program = tool(options, "mkfs.erofs");
    let mut command = Command::new(&program);
    command.env("SOURCE_DATE_EPOCH", timestamp.to_string()).arg("--quiet").arg(format!("-U{}", uuid(&options.uuid)));
    match options.compression {
        Compression::None => {}
        Compression::Lz4 => {
            command.arg("-zlz4");
        }
        Compression::Lz4hc { level } => {
            command.arg(format!("-zlz4hc,{level}"));
        }
    }
    if options.compression != Compression::None && options.pcluster_size > 4096 {
        command.arg(format!("-C{}", options.pcluster_size));
    }
    command.arg(image).arg(root);
    run(command, &program).map(drop)
}

/// The erofs-utils version, from `fsck.erofs -V` ("fsck.erofs 1.5"; mkfs.erofs
/// 1.5 has no such option).
fn version(fsck: &Path) -> io::Result<String> {
    let out = Command::new(fsck).arg("-V").stdin(Stdio::null()).output().map_err(|e| spawn_error(e, fsck))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(parse_version(&stdout).unwrap_or("unknown").to_owned())
}

fn parse_version(banner: &str) -> Option<&str> {
    banner.lines().find_map(|l| l.strip_prefix("fsck.erofs ")).map(str::trim)
}

fn uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Runs a tool to completion, with [`TOOL_STACK`]; returns the tail of its
/// stderr, or an error quoting its telling line.
fn run(mut command: Command, program: &Path) -> io::Result<String> {
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls may be made: it makes two system calls
    // (getrlimit, setrlimit), without allocating or taking a lock.
    unsafe { command.pre_exec(raise_stack_limit) };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(e, program))?;
    let stderr = tail(child.stderr.take().expect("piped"))?;
    let status = child.wait()?;
    if !status.success() {
        return Err(tool_failed(program, &status.to_string(), &stderr));
    }
    Ok(stderr)
}

/// A tool's failure in one line: the line of its stderr that tells what
/// went wrong (see `tool.rs`), and what to do.
fn tool_failed(program: &Path, status: &str, stderr: &str) -> io::Error {
    let (name, said) = (program.display(), crate::tool::summary(stderr));
    let (kind, advice) = if stderr.contains("No space left on device") {
        (io::ErrorKind::StorageFull, "free space on the filesystem that holds the image")
    } else {
        (io::ErrorKind::Other, "vmimg is tested with erofs-utils 1.5 (`fsck.erofs -V` shows this host's)")
    };
    io::Error::new(kind, format!("erofs: {name} failed ({status}): {said}: {advice}"))
}

/// Raises the soft stack limit to [`TOOL_STACK`] when it is lower, as far
/// as the hard limit lets it.
fn raise_stack_limit() -> io::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Stack);
    match limit.current {
        Some(current) if current < TOOL_STACK => {
            let raised = limit.maximum.map_or(TOOL_STACK, |hard| hard.min(TOOL_STACK));
            Ok(setrlimit(Resource::Stack, Rlimit { current: Some(raised), maximum: limit.maximum })?)
        }
        _ => Ok(()),
    }
}

fn spawn_error(err: io::Error, program: &Path) -> io::Error {
    if err.kind() != io::ErrorKind::NotFound {
        return context(err, program, "run");
    }
    let msg = format!(
        "erofs: {} not found: install the Debian package {DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE})",
        program.display()
    );
    io::Error::new(err.kind(), msg)
}

/// Reads a stream to its end, keeping its last [`STDERR_TAIL`] bytes.
fn tail(mut stream: impl Read) -> io::Result<String> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(String::from_utf8_lossy(&kept).into_owned());
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * STDERR_TAIL {
            kept.drain(..kept.len() - STDERR_TAIL);
        }
    }
}

/// What mkfs.erofs 1.5 cannot take: names of 255 bytes (it fails on them,
/// saying "No such file or directory") and paths of `PATH_MAX` bytes or more
/// ("Cannot allocate memory").
const MAX_NAME: usize = 254;
const PATH_MAX: usize = 4096;

/// Walks the tree once before mkfs.erofs does: refuses what it cannot take,
/// with a message that says so, and returns the newest mtime in whole seconds
/// (0 for times before 1970).
fn scan(root: &Path) -> io::Result<u64> {
    let mut newest = fs::symlink_metadata(root).map_err(|e| context(e, root, "stat"))?.mtime();
    let mut pending = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| context(e, &dir, "read directory"))? {
            let path = entry.map_err(|e| context(e, &dir, "read directory"))?.path();
            check_name(&path)?;
            depth::check(depth + 1, || path.strip_prefix(root).unwrap_or(&path).display().to_string())?;
            let meta = fs::symlink_metadata(&path).map_err(|e| context(e, &path, "stat"))?;
            newest = newest.max(meta.mtime());
            if meta.is_dir() {
                pending.push((path, depth + 1));
            }
        }
    }
    Ok(u64::try_from(newest).unwrap_or(0))
}

fn check_name(path: &Path) -> io::Result<()> {
    let name_len = path.file_name().map_or(0, |n| n.len());
    if name_len > MAX_NAME {
        return Err(invalid(format!(
            "erofs: {}: a name of {name_len} bytes; mkfs.erofs 1.5 takes at most {MAX_NAME} (Linux allows 255): \
             rename it or build an ext4 disk",
            path.display()
        )));
    }
    if path.as_os_str().len() >= PATH_MAX {
        return Err(invalid(format!(
            "erofs: {}: a path of {} bytes; mkfs.erofs opens files by path, so paths must stay under {PATH_MAX}: \
             build from a shorter root path or an ext4 disk",
            path.display(),
            path.as_os_str().len()
        )));
    }
    Ok(())
}

fn context(err: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(err.kind(), format!("erofs: {}: cannot {what}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_in_the_usual_groups() {
        let bytes = [0x76, 0x6d, 0x69, 0x6d, 0x67, 0x2d, 0x65, 0x72, 0x6f, 0x66, 0x73, 0, 0, 0, 0, 1];
        assert_eq!(uuid(&bytes), "766d696d-672d-6572-6f66-730000000001");
    }

    #[test]
    fn the_version_comes_from_the_banner() {
        assert_eq!(parse_version("fsck.erofs 1.5\n"), Some("1.5"));
        assert_eq!(parse_version("<W> erofs: something\n"), None);
    }

    #[test]
    fn out_of_range_options_are_refused() {
        let level = ErofsOptions { compression: Compression::Lz4hc { level: 13 }, ..ErofsOptions::default() };
        assert!(validate(&level).unwrap_err().to_string().contains("level 13"));
        for size in [0, 4095, 5000, MAX_PCLUSTER + 4096] {
            let options = ErofsOptions { pcluster_size: size, ..ErofsOptions::default() };
            assert!(validate(&options).unwrap_err().to_string().contains("multiple of 4096"), "{size}");
        }
        assert!(validate(&ErofsOptions { pcluster_size: MAX_PCLUSTER, ..ErofsOptions::default() }).is_ok());
    }

    #[test]
    fn stderr_keeps_its_tail() {
        let long = "x".repeat(5 * STDERR_TAIL) + "the end";
        let kept = tail(long.as_bytes()).unwrap();
        assert!(kept.ends_with("the end") && kept.len() <= 2 * STDERR_TAIL);
    }
}
