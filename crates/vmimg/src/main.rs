//! The `vmimg` command line: argument parsing, human and JSON output, exit
//! codes. Everything a library user would need lives in the library crates.

mod args;
mod build;
mod bundle;
mod catalog;
mod docs;
mod files;
mod format;
mod info;
mod inspect;
mod manage;
mod oci;
mod progress;
mod pull;
#[cfg(test)]
mod reference;
mod serve;

use anyhow::Result;
use args::{ContainerArgs, DownloadArgs, GetArgs, NamingArgs, Opening, RegistryArgs, SourceArgs};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vmimg_disk::{ConvertOptions, Format};
use vmimg_store::{ErrorKind, InstanceRequest, RootfsFormat, Source};

/// Get VM disk images onto the host, verified, converted and ready to boot.
#[derive(Parser)]
#[command(name = "vmimg", version, about, propagate_version = true)]
struct Cli {
    /// Print nothing but results and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log what vmimg does on stderr: -v for steps, -vv for details, -vvv
    /// for everything (RUST_LOG=target=level filters finer).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// The store directory [default: $XDG_CACHE_HOME/vmimg, else ~/.cache/vmimg].
    #[arg(long, global = true, env = "VMIMG_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The store, opened with what the command gives it.
    fn open(&self, opening: Opening) -> Result<vmimg_store::Store> {
        opening.open(self.store.as_deref())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Get a VM disk into the store: a catalog alias, a URL, a file or oci://REF.
    ///
    /// Prints the path of the ready raw disk as the last line of stdout (its
    /// record with --json). An alias is verified against the catalog's
    /// digest; a URL or file only with --digest. The download resumes after
    /// a cut and is retried with backoff; conversion of a qcow2 overlaps the
    /// download. Nothing enters the store unless the digest matched. A
    /// second pull of the same source returns at once.
    Pull {
        /// `debian-12` (see `vmimg catalog list`), `https://…/disk.qcow2`,
        /// `./disk.img`, or `oci://REGISTRY/REPO[:TAG|@DIGEST]` (a cloud-image
        /// artifact; `docker://` works too).
        source: String,
        /// The digest the source must have: sha256:<hex> or sha512:<hex>.
        #[arg(long)]
        digest: Option<vmimg_fetch::Digest>,
        /// Print the image record as JSON instead of the path.
        #[arg(long)]
        json: bool,
        /// For a container image: the disk to build (see `vmimg build`)
        /// [default: ext4].
        #[arg(long, value_parser = args::listed(str::parse::<RootfsFormat>, ROOTFS_FORMATS.map(RootfsFormat::name)))]
        format: Option<RootfsFormat>,
        #[command(flatten)]
        naming: NamingArgs,
        /// For a URL given without --digest: ask its server (ETag,
        /// Last-Modified) whether the image in the store is still the file it
        /// serves, and pull the new one if not, replacing the old. Without
        /// it, the store's image is returned. Aliases and digests are pinned;
        /// registry tags are always asked.
        #[arg(long)]
        refresh: bool,
        #[command(flatten)]
        get: GetArgs,
    },
    /// Build a disk from a container image: ext4 (default), erofs or cpio.
    ///
    /// The image (an OCI or Docker manifest, or the linux/ARCH entry of an
    /// index) has its layers downloaded into the layer cache, shared by
    /// every image (checked for size and digest), applied in order with
    /// their whiteouts (nothing is ever written outside the root), and made
    /// into: ext4, a sparse raw disk sized from the tree with room to spare
    /// (checked with e2fsck); erofs, a compressed read-only raw disk
    /// (checked with fsck.erofs); or cpio, a newc initramfs. Prints the
    /// file's path; the record (--json) keeps the entrypoint, cmd, env,
    /// working dir, user, and whether the image boots systemd. The same
    /// reference asked twice is built once; a build killed midway is run
    /// again by `vmimg builds recover`.
    Build {
        /// oci://REGISTRY/REPO[:TAG|@DIGEST] (docker:// too; docker.io/library
        /// is the default), oci:DIR[:NAME] or oci-archive:FILE[:NAME].
        source: String,
        /// The disk to make: ext4, erofs or cpio.
        #[arg(long, default_value = "ext4", value_parser = ["ext4", "erofs", "cpio"])]
        format: String,
        /// Print the image record as JSON instead of the path.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        naming: NamingArgs,
        #[command(flatten)]
        get: ContainerArgs,
    },
    /// Container image builds: their status, recovery, removal.
    #[command(subcommand)]
    Builds(BuildsCommand),
    /// Disks made from nothing.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Stream a cloud image's disk from a registry to stdout.
    ///
    /// The disk's layers (parts) are written in order as they arrive, each
    /// checked for its size and digest as it streams (a mismatch is an
    /// error, and the output is then not to be trusted); nothing is kept.
    Cat {
        /// oci://REGISTRY/REPO[:TAG|@DIGEST]
        source: String,
        /// The architecture an image index resolves to [default: this host's].
        #[arg(long, value_parser = ["amd64", "arm64"])]
        arch: Option<String>,
        #[command(flatten)]
        download: DownloadArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Push a store image to a registry as a cloud-image artifact.
    ///
    /// The disk is split into parts of --part-size, hashed and uploaded
    /// --jobs at a time; parts the repository already has are not sent. The
    /// manifest is an OCI 1.1 artifact (application/vnd.cocoonstack.os-image.v1+json)
    /// that vmimg and cocoonstack's tools read. Prints the pushed reference,
    /// pinned to its digest (oci://…@sha256:…, as `vmimg pull` takes it).
    Push {
        /// The store image to push: its name, or the source it was pulled from.
        image: String,
        /// oci://REGISTRY/REPO[:TAG]
        target: String,
        /// Bytes per part: 512M, 1G, bytes.
        #[arg(long, default_value = "512M", value_parser = vmimg_disk::parse_size, value_name = "SIZE")]
        part_size: u64,
        /// The disk format pushed: qcow2 (zstd-compressed clusters, made on
        /// all cores: what pushes and pulls least) or raw (the disk as is,
        /// holes sent as zeros).
        #[arg(long, default_value = "qcow2", value_parser = ["qcow2", "raw"])]
        format: String,
        /// Parts hashed and uploaded at once.
        #[arg(long, default_value_t = 4, value_name = "N")]
        jobs: usize,
        /// Print what was pushed as JSON (reference, digest, parts, sent,
        /// signature).
        #[arg(long)]
        json: bool,
        /// Sign what is pushed with this key (a PEM ECDSA P-256 private
        /// key, unencrypted PKCS#8 or SEC1), in cosign's key-based format:
        /// the tag sha256-HEX.sig beside it.
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
        #[command(flatten)]
        download: DownloadArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// List the images in the store, least recently used first: name,
    /// format, sizes, instances, source.
    Images {
        /// Print the images as JSON.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Print each image through TEMPLATE: {{.FIELD}}, FIELD a key of
        /// --json's objects ({{.source.kind}} goes inside one); \t and \n
        /// are a tab and a newline; `table TEMPLATE` adds a header row and
        /// aligns tab-separated columns; `json` is --json.
        #[arg(long, value_name = "TEMPLATE", value_parser = format::ListFormat::parse)]
        format: Option<format::ListFormat>,
        /// List only images that match: kind=KIND (alias, url, file,
        /// bundle, blank, oci, layout), source=TEXT (in the source or where
        /// it came from), format=FORMAT, verified=BOOL, in-use=BOOL (has
        /// instances), before=IMAGE, since=IMAGE (made before or after it),
        /// unused-for=DURATION (30d, 12h). Repeatable: all must match.
        #[arg(long, value_name = "KEY=VALUE")]
        filter: Vec<vmimg_store::ImageFilter>,
    },
    /// Show everything about one store image: its record, where its bytes
    /// came from and what verified them, its disk, its instances, its build.
    ///
    /// IMAGE is taken as `rm` takes it: a key, a name, the source it was
    /// pulled from, or the start of one key. Nothing is written: inspecting
    /// an image does not count as using it.
    Inspect {
        /// An image name (`vmimg images`), the source it was pulled from,
        /// or the start of its key.
        image: String,
        /// Print one JSON object: the keys of `images --json` and more.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image from the store (and its blob, if no other image uses it).
    ///
    /// Refused while the image has qcow2 instances, unless --force, which
    /// removes them too (a qcow2 instance cannot outlive its backing image);
    /// raw instances are copies of their own and stay. Prints what it removed.
    Rm {
        /// An image name (`vmimg images`) or the source it was pulled from.
        image: String,
        /// Remove the image's qcow2 instances with it.
        #[arg(long)]
        force: bool,
    },
    /// Give an image a name, as a tag: commands then take the name for the
    /// image, and gc never evicts a named image.
    ///
    /// A name already naming another image moves to this one. Names are 1 to
    /// 64 of [A-Za-z0-9._-]; a catalog alias or an image's key cannot be one.
    /// When a newer version of a file or URL replaces an image, its names
    /// move to the new one.
    Tag {
        /// An image name (`vmimg images`), the start of its key, or the
        /// source it was pulled from.
        image: String,
        /// The name to give it.
        name: String,
    },
    /// Remove a name from the image it names (the image stays).
    Untag {
        /// A name given by `vmimg tag` or `--name`.
        name: String,
    },
    /// Bytes on disk: images, downloaded blobs, partial downloads, instances.
    Du {
        /// Print the bytes by part as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove what nothing needs, and old images beyond a budget.
    ///
    /// Removes abandoned work, empty and day-old partial downloads under
    /// tmp/ (every one with --partials), lock files a killed process left,
    /// blobs and layers no image names (none while a pull or build is in
    /// flight), and, with --keep-under, the least recently used images
    /// without instances that can be pulled again (never bundles or blank
    /// images) until the store fits the budget. A partial download a pull
    /// is resuming is never removed.
    Gc {
        /// Store size to get under: 20G, 512M, bytes.
        #[arg(long, value_parser = vmimg_disk::parse_size, value_name = "SIZE")]
        keep_under: Option<u64>,
        /// Remove every partial download no running pull holds, however
        /// fresh: what a pull that ran out of space kept to resume.
        #[arg(long)]
        partials: bool,
        /// List what would be removed and the bytes freed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Writable disks made from store images, one per VM.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Serve the store over HTTP for VM platforms, in the foreground, until
    /// SIGTERM: images, disks, /dl/ streams, instances, builds, metrics.
    /// The API is described at /openapi.json (or by --openapi).
    #[command(next_help_heading = "Daemon")]
    Serve {
        /// unix:PATH or tcp:HOST:PORT; repeatable [default:
        /// unix:/run/vmimg/vmimg.sock as root, else unix:$XDG_RUNTIME_DIR/vmimg.sock].
        #[arg(long, value_name = "ADDRESS")]
        listen: Vec<vmimg_serve::Listen>,
        /// A file whose first line is the token TCP clients must send
        /// (Authorization: Bearer TOKEN); required with tcp: addresses.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Container image builds run at once.
        #[arg(long, value_name = "N", default_value_t = vmimg_serve::Limits::default().builds)]
        builds: usize,
        /// A directory whose files and OCI layouts clients may name as
        /// sources (repeatable); without it, local paths are refused (403).
        #[arg(long, value_name = "DIR")]
        allow_local: Vec<PathBuf>,
        /// Print the API's OpenAPI document and exit.
        #[arg(long)]
        openapi: bool,
        #[command(flatten)]
        get: GetArgs,
    },
    /// Image bundles (image.tar.zst: disk.img, layer.qcow2, machine.json).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Images made here rather than pulled.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The embedded catalog of aliases, with any overrides.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Print the shell completion script: bash, zsh, fish, elvish or powershell.
    ///
    /// bash: `vmimg completions bash > /etc/bash_completion.d/vmimg`; zsh:
    /// into a directory of $fpath as _vmimg; fish: into
    /// ~/.config/fish/completions/vmimg.fish.
    #[command(arg = args::unused_store(), arg = args::unused_quiet())]
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one per command into DIR.
    #[command(arg = args::unused_store(), arg = args::unused_quiet())]
    Man {
        /// Write vmimg.1, vmimg-pull.1, … here instead of printing vmimg.1.
        dir: Option<PathBuf>,
    },
    /// Show what a disk image is: format, sizes, qcow2 features, references.
    ///
    /// Reads only the header, so it also describes images that `convert`
    /// refuses (backing files, external data files, encryption). The JSON
    /// output has the shape of `qemu-img info --output=json`.
    #[command(arg = args::unused_store(), arg = args::unused_quiet())]
    Info {
        /// The image file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Read the file as this format instead of probing it.
        #[arg(short = 'f', long, value_parser = args::listed(parse_format, FORMATS.map(Format::name)))]
        format: Option<Format>,
    },
    /// Convert a raw or qcow2 image to a sparse raw disk.
    ///
    /// The output equals `qemu-img convert -O raw` byte for byte and allocates
    /// no more: zero ranges become holes. Clusters are decompressed on all
    /// cores. The output appears at DST only when complete (written beside it,
    /// flushed, renamed). qcow2 images that name a backing file or an
    /// external data file are refused.
    #[command(arg = args::unused_store())]
    Convert {
        /// The source image.
        src: PathBuf,
        /// The raw disk to write (a file, replaced atomically if it exists;
        /// a directory or a device is refused before any work).
        dst: PathBuf,
        /// Read the source as this format instead of probing it. Without
        /// it, a file with no image header is raw only if it is whole
        /// 512-byte sectors and not text; -f raw takes any file as raw.
        #[arg(short = 'f', long, value_parser = args::listed(parse_format, FORMATS.map(Format::name)))]
        format: Option<Format>,
        /// Output format (only raw for now).
        #[arg(short = 'O', long = "output-format", default_value = "raw", value_parser = ["raw"])]
        output_format: String,
        /// Worker threads [default: one per core, at most 8].
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Do not flush the output to disk before publishing it.
        #[arg(long)]
        no_sync: bool,
        /// Print what was done as JSON (sizes, bytes written, seconds).
        #[arg(long)]
        json: bool,
    },
    /// Copy a raw disk, keeping its holes, optionally growing it; or an
    /// image from one registry to another (two oci:// references).
    ///
    /// Where the filesystem can (btrfs, XFS), the copy is a reflink: it
    /// shares the source's blocks, so nothing is copied. Elsewhere only the
    /// source's data ranges (SEEK_DATA/SEEK_HOLE) are copied, with
    /// copy_file_range, or with reads and writes when the kernel refuses
    /// that (across filesystems, for one); holes are never read or written.
    /// With --size the copy is extended to SIZE and the new space is a hole
    /// that reads as zeros; a SIZE smaller than the source is refused. The
    /// copy appears at DST only when complete (written beside it, flushed,
    /// renamed). A qcow2 source is refused (use `vmimg convert`), and so is
    /// copying a file onto itself.
    Copy {
        /// The raw disk to copy, or oci://REGISTRY/REPO[:TAG|@DIGEST] to
        /// copy an image between registries.
        src: PathBuf,
        /// The copy (a file, replaced atomically if it exists; a directory or
        /// a device is refused before any work), or oci://REGISTRY/REPO[:TAG].
        dst: PathBuf,
        /// Extend the copy to SIZE bytes: a whole number with an optional K,
        /// M, G, T or P suffix, binary as in qemu-img (1K = 1024; KiB and KB
        /// mean the same), e.g. 20G. At least the source's size.
        #[arg(long, value_parser = vmimg_disk::parse_size)]
        size: Option<u64>,
        /// Do not flush the copy to disk before publishing it.
        #[arg(long)]
        no_sync: bool,
        /// Print what was done as JSON (sizes, bytes copied, method,
        /// seconds; for registries: digest, manifests, blobs sent, mounted,
        /// present, bytes sent, signed).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        download: DownloadArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

#[derive(Subcommand)]
enum BuildsCommand {
    /// List the builds: id, status, format, bytes pulled, reference, error.
    List {
        /// Print the builds as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run again the builds a killed process left unfinished, and wait for them.
    Recover {
        /// Builds run at once.
        #[arg(long, default_value_t = vmimg_store::ManagerOptions::default().concurrency, value_name = "N")]
        concurrency: usize,
        #[command(flatten)]
        get: Box<ContainerArgs>,
    },
    /// Remove a finished build's record and the image it made.
    Rm {
        /// The build's id (`vmimg builds list`).
        id: String,
        /// Remove the image's instances too.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Make an empty sparse ext4 disk at PATH (a volume, an overlay's upper
    /// layer); PATH must not exist.
    #[command(arg = args::unused_store(), arg = args::unused_quiet())]
    NewExt4 {
        /// Where to make the disk.
        path: PathBuf,
        /// The disk's size: 1G, 512M, bytes.
        #[arg(long, value_parser = vmimg_disk::parse_size)]
        size: u64,
    },
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum InstanceCommand {
    /// Make a writable disk from IMAGE and print its path.
    ///
    /// By default a qcow2 overlay whose backing file is the image (constant
    /// time whatever the image size); --format raw makes a full copy (a
    /// reflink where the filesystem allows, else sparse). IMAGE is an image
    /// name or a source, pulled first if needed.
    Create {
        /// An image name, or a source (pulled first if needed).
        image: String,
        /// The instance's name [default: <image>-<n>].
        #[arg(long)]
        name: Option<String>,
        /// A virtual size at least the image's: 20G, 512M, bytes.
        #[arg(long, value_parser = vmimg_disk::parse_size)]
        size: Option<u64>,
        /// qcow2 (an overlay backed by the image) or raw (a copy).
        #[arg(long, default_value = "qcow2", value_parser = ["qcow2", "raw"])]
        format: String,
        /// Print the instance as JSON instead of its disk's path.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        get: GetArgs,
    },
    /// List the instances.
    List {
        /// Print the instances as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an instance and its disk.
    Rm {
        /// The instance's name (`vmimg instance list`).
        name: String,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Pack a store image into FILE and print FILE.
    ///
    /// FILE is a zstd-compressed tar of disk.img (the raw disk, its holes
    /// stored as holes: PAX sparse 1.0, which GNU tar and bsdtar extract
    /// sparse), layer.qcow2 (an empty qcow2 whose backing file is disk.img)
    /// and machine.json (the image's, or a new one with a random MAC), each
    /// zstd frame with its content checksum. FILE appears only when
    /// complete; its sha256 (computed while writing) is printed on stderr,
    /// or as `digest` with --json. A mutable image with instances is refused.
    Export {
        /// The store image to pack: its name, or the source it was pulled from.
        image: String,
        /// The bundle to write (image.tar.zst).
        file: PathBuf,
        /// zstd level, 1 (fastest) to 19 (smallest).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
        level: i32,
        /// Compression threads [default: one per core].
        #[arg(long, value_name = "N")]
        compress_threads: Option<u32>,
        /// Print path, digest, size and data_bytes as JSON instead of FILE.
        #[arg(long)]
        json: bool,
    },
    /// Import a bundle into the store as an image and print its disk's path.
    ///
    /// Reads what GNU tar writes (old GNU sparse, PAX sparse 0.0, 0.1 and
    /// 1.0, or no sparse) compressed with zstd. The bundle must hold exactly
    /// disk.img (raw), layer.qcow2 (backing file exactly disk.img, format
    /// raw, no external data file) and a valid machine.json; anything else
    /// is refused and nothing is kept. The layer is committed onto the disk:
    /// the image is one sparse raw disk.
    ///
    /// FILE is read to its end: every zstd frame's checksum must match, and
    /// a truncated file or bytes after the last frame are refused. Without
    /// --digest every frame must carry a checksum (zstd writes one by
    /// default); with --digest, FILE's digest must match instead and frames
    /// without a checksum are accepted.
    Import {
        /// The bundle to import (image.tar.zst).
        file: PathBuf,
        /// The image's name [default: FILE's name without .tar.zst].
        #[arg(long)]
        name: Option<String>,
        /// The digest FILE must have: sha256:<hex> or sha512:<hex>.
        #[arg(long)]
        digest: Option<vmimg_fetch::Digest>,
        /// Refuse a compressed bundle larger than this (20G, 512M, bytes).
        #[arg(long, default_value = "50G", value_parser = vmimg_disk::parse_size, value_name = "SIZE")]
        max_archive_size: u64,
        /// Refuse a file in the bundle larger than this, holes included.
        #[arg(long, default_value = "50G", value_parser = vmimg_disk::parse_size, value_name = "SIZE")]
        max_file_size: u64,
        /// Print the image record as JSON instead of the disk's path.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Make a blank mutable image: a sparse raw disk of SIZE and a machine.json.
    ///
    /// Prints the disk's path: write it in place (install a system with
    /// QEMU, say), then pack it with `vmimg bundle export`. While it has
    /// instances it can be neither exported nor removed.
    New {
        /// The image's name.
        name: String,
        /// The disk's size: 20G, 512M, bytes.
        #[arg(long, value_parser = vmimg_disk::parse_size)]
        size: u64,
        /// The machine definition to use [default: a new one, random MAC].
        #[arg(long, value_name = "FILE")]
        machine: Option<PathBuf>,
        /// Print the image record as JSON instead of the disk's path.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// List the aliases: distribution, version, snapshot, architectures.
    List {
        /// Print the catalog itself (JSON).
        #[arg(long)]
        json: bool,
        /// A catalog file whose aliases add to or override the embedded ones.
        #[arg(long, value_name = "FILE")]
        catalog: Option<PathBuf>,
    },
    /// Show one alias: its snapshot and, per architecture, URL and digest.
    Show {
        /// The alias (`vmimg catalog list`).
        alias: String,
        /// A catalog file whose aliases add to or override the embedded ones.
        #[arg(long, value_name = "FILE")]
        catalog: Option<PathBuf>,
    },
    /// Move aliases to their publisher's newest snapshot, in a catalog file.
    ///
    /// Reads each distribution's published directory listing for the newest
    /// dated snapshot, and its checksum file for each architecture's digest
    /// (never computed here). Rewrites FILE atomically and prints one line
    /// per alias: unchanged, or ALIAS: OLD -> NEW. An alias that cannot be
    /// refreshed is an error for that alias alone; FILE keeps the others'
    /// updates. --mirror rules apply to what is read; FILE keeps upstream
    /// URLs. Use the result with --catalog FILE.
    Refresh {
        /// The catalog file to rewrite (made from the embedded catalog if absent).
        file: PathBuf,
        /// The aliases to refresh [default: every alias in FILE].
        aliases: Vec<String>,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        download: DownloadArgs,
    },
}

/// The formats `info -f` and `convert -f` take.
const FORMATS: [Format; 2] = [Format::Raw, Format::Qcow2];

/// The disks `pull --format` builds.
const ROOTFS_FORMATS: [RootfsFormat; 3] = [RootfsFormat::Ext4, RootfsFormat::Erofs, RootfsFormat::Cpio];

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: vmimg_disk::Error| e.to_string())
}

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_logs(cli.verbose, matches!(cli.command, Command::Serve { .. }));
    let reads_sources = cli.command.reads_sources();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmimg: error: {}", error_line(&e, reads_sources));
            ExitCode::from(exit_code(e.chain().find_map(ErrorKind::of)))
        }
    }
}

/// Logs to stderr: `RUST_LOG` if set, else warnings (a daemon's steps
/// too), -v steps, -vv details, -vvv everything.
fn init_logs(verbose: u8, daemon: bool) {
    let level = match (verbose, daemon) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

/// The command line, or the exit code once clap's help or version is
/// printed as clap prints it (0; the help for a missing command, 2), or a
/// usage error as one `vmimg: error:` line (2): clap's message, its tips,
/// the usage and where the help is (the command's own: clap's usage names
/// it, else the command line does).
fn parse_command_line() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind as Clap;
    let error = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(error) => error,
    };
    if matches!(error.kind(), Clap::DisplayHelp | Clap::DisplayVersion | Clap::DisplayHelpOnMissingArgumentOrSubcommand)
    {
        let _ = error.print();
        return Err(ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2)));
    }
    // clap renders paragraphs: the error (its details indented below it),
    // tips, `Usage: …`, `For more information, try '--help'.`
    let rendered = error.render().to_string();
    let (mut message, mut notes, mut command) = (String::new(), Vec::new(), None);
    for paragraph in rendered.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let joined = paragraph.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        if let Some(usage) = joined.strip_prefix("Usage: ") {
            let words = usage.split(' ').take_while(|w| !w.starts_with(['[', '<', '-']));
            command = Some(words.collect::<Vec<_>>().join(" "));
            notes.push(format!("usage: {usage}"));
        } else if joined.starts_with("tip: ") {
            notes.push(joined);
        } else if message.is_empty() {
            message = joined.strip_prefix("error: ").unwrap_or(&joined).to_owned();
        }
    }
    // A bad value has no usage in clap's message.
    let command = command.unwrap_or_else(|| command_words(std::env::args_os()));
    notes.push(format!("`{command} --help` says more"));
    eprintln!("vmimg: error: {message} ({})", notes.join("; "));
    Err(ExitCode::from(2))
}

/// The words of the command that `args` (the process's arguments) name,
/// as far as they name one: `vmimg`, `vmimg pull`, `vmimg builds recover`.
/// Options are skipped with their values (`--store pull` names no command).
fn command_words(args: impl IntoIterator<Item = std::ffi::OsString>) -> String {
    let mut root = Cli::command();
    root.build(); // global options into every command
    let mut command = &root;
    let mut words = vec![command.get_name()];
    let takes_value = |arg: Option<&clap::Arg>| arg.is_some_and(|arg| arg.get_action().takes_values());
    let mut args = args.into_iter().skip(1);
    while command.has_subcommands()
        && let Some(arg) = args.next()
    {
        let Some(arg) = arg.to_str().filter(|arg| *arg != "--") else { break };
        if let Some(long) = arg.strip_prefix("--") {
            let option = command.get_arguments().find(|option| option.get_long() == Some(long));
            if takes_value(option) {
                args.next(); // --NAME VALUE (--NAME=VALUE is one word, not found)
            }
        } else if let Some(shorts) = arg.strip_prefix('-').filter(|shorts| !shorts.is_empty()) {
            // -qv, -fVALUE, -f VALUE: the first letter that takes a value
            // takes the rest of the word, or the next word.
            for (at, letter) in shorts.char_indices() {
                if takes_value(command.get_arguments().find(|option| option.get_short() == Some(letter))) {
                    if at + letter.len_utf8() == shorts.len() {
                        args.next();
                    }
                    break;
                }
            }
        } else {
            let Some(sub) = command.find_subcommand(arg) else { break };
            words.push(sub.get_name());
            command = sub;
        }
    }
    words.join(" ")
}

/// The exit code of an error of `kind` (README lists them): 2 is also
/// clap's for a malformed command line.
fn exit_code(kind: Option<ErrorKind>) -> u8 {
    match kind {
        Some(ErrorKind::InvalidInput) => 2,
        Some(ErrorKind::NotFound) => 3,
        Some(ErrorKind::Conflict) => 4,
        Some(ErrorKind::InUse) => 5,
        Some(ErrorKind::Refused) => 6,
        Some(ErrorKind::Unavailable) => 7,
        Some(ErrorKind::Denied) => 8,
        Some(ErrorKind::OutOfSpace) => 9,
        Some(ErrorKind::Internal) | None => 1,
    }
}

/// The error and its causes on one line, without repeating a cause that the
/// message above it already quotes, and the flags that would help.
impl Command {
    /// Whether the command takes a source to get an image from (an alias,
    /// a URL, a file, a registry image or a local layout), so that a local
    /// copy or a mirror can stand in for what it could not reach.
    fn reads_sources(&self) -> bool {
        matches!(self, Command::Pull { .. } | Command::Build { .. } | Command::Instance(InstanceCommand::Create { .. }))
    }
}

/// What an error prints: the error, its causes that add to it, and what
/// the command line has for it (`reads_sources`: the command gets images).
fn error_line(e: &anyhow::Error, reads_sources: bool) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    if let Some(hint) = hint(e, reads_sources) {
        line = format!("{line} ({hint})");
    }
    line
}

/// What the command line adds to a library error: its own flags.
fn hint(e: &anyhow::Error, reads_sources: bool) -> Option<&'static str> {
    use vmimg_store::Error as E;
    let store = e.chain().find_map(|cause| cause.downcast_ref::<E>());
    let oci = e.chain().find_map(|cause| match cause.downcast_ref::<E>() {
        Some(E::Oci(oci)) => Some(oci),
        _ => cause.downcast_ref::<vmimg_oci::Error>(),
    });
    if let Some(vmimg_oci::Error::Unauthorized { .. }) = oci {
        return Some("credentials: --username with --password or --password-stdin");
    }
    if oci.and_then(vmimg_oci::Error::unresolved_host).is_some() {
        return Some(if reads_sources {
            "a mirror in --hosts-dir, or oci:DIR[:NAME] or oci-archive:FILE[:NAME] for a local copy"
        } else {
            "a mirror in --hosts-dir stands in for a registry"
        });
    }
    match store? {
        E::InUse { .. } => Some("`vmimg rm --force` removes them with it"),
        E::NoArch { .. } | E::NoHostArch { .. } => Some("choose one with --arch"),
        E::UnknownAlias { .. } if reads_sources => {
            Some("`vmimg catalog list` shows the aliases; a local file is named with a slash: ./FILE")
        }
        E::UnknownAlias { .. } => Some("`vmimg catalog list` shows the aliases"),
        E::UnknownImage { .. } => Some("`vmimg images` lists them"),
        E::NoStore { .. } => Some("--store DIR or VMIMG_STORE names the store"),
        E::Fetch(fetch) if fetch.unresolved_host().is_some() => Some("with --mirror FROM=TO, or ./FILE"),
        E::Exists { what: "instance", .. } => Some("`vmimg instance rm NAME` removes it; --name gives another"),
        E::Exists { .. } => Some("`vmimg rm NAME` removes it; --name gives another"),
        E::DigestMismatch { .. } => Some("`vmimg catalog refresh FILE` moves a catalog to its publisher's newest"),
        E::NotADisk { .. } => Some("`vmimg build --format ext4` makes a disk"),
        E::Bundle { source: vmimg_store::BundleError::OverLimit { .. }, .. } => Some("raise it with --max-file-size"),
        E::Bundle { source: vmimg_store::BundleError::UncheckedFrame(_), .. } => Some("check it with --digest"),
        _ => None,
    }
}

fn run(cli: Cli) -> Result<()> {
    let plain = Opening::default();
    let reading = Opening { read_only: true, existing: true, ..plain };
    // Commands that change what the store holds: a store named but missing
    // holds nothing to change, and is not made.
    let held = Opening { existing: true, ..plain };
    match &cli.command {
        Command::Pull { source, digest, json, format, naming, refresh, get } => {
            let store = cli.open(get.opening())?;
            let wanted = pull::Wanted {
                source,
                digest: digest.clone(),
                format: *format,
                name: naming.name.clone(),
                refresh: *refresh,
                json: *json,
            };
            runtime()?.block_on(pull::run(&store, wanted, cli.quiet))
        }
        Command::Build { source, format, json, naming, get } => {
            let store = cli.open(get.opening())?;
            if !matches!(vmimg_store::Source::parse(source, store.catalog())?, Source::Registry(_) | Source::Layout(_))
            {
                anyhow::bail!(vmimg_store::Error::Invalid(format!(
                    "{source:?} is not a container image: write oci://REGISTRY/REPOSITORY[:TAG], oci:DIR[:NAME] or oci-archive:FILE[:NAME]"
                )));
            }
            let wanted = pull::Wanted {
                source,
                digest: None,
                format: Some(format.parse()?),
                name: naming.name.clone(),
                refresh: false,
                json: *json,
            };
            runtime()?.block_on(pull::run(&store, wanted, cli.quiet))
        }
        Command::Builds(BuildsCommand::List { json }) => build::list(cli.open(reading)?, *json),
        Command::Builds(BuildsCommand::Recover { concurrency, get }) => runtime()?.block_on(build::recover(
            cli.open(Opening { existing: true, ..get.opening() })?,
            *concurrency,
            cli.quiet,
        )),
        Command::Builds(BuildsCommand::Rm { id, force }) => {
            runtime()?.block_on(build::remove(cli.open(held)?, id, *force))
        }
        Command::Disk(DiskCommand::NewExt4 { path, size }) => {
            vmimg_rootfs::ext4::new_empty(path, *size, &Default::default())?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Cat { source, arch, download, registry } => {
            // cat keeps nothing: it reads only the store's registry settings, if the store exists.
            let opening = Opening {
                arch: arch.as_deref(),
                download: Some(download),
                registry: Some(registry),
                read_only: true,
                ..plain
            };
            runtime()?.block_on(oci::cat(&cli.open(opening)?, source, cli.quiet))
        }
        Command::Push { image, target, part_size, format, jobs, json, sign_key, download, registry } => {
            let format = match format.as_str() {
                "raw" => vmimg_oci::artifact::DiskFormat::Raw,
                _ => vmimg_oci::artifact::DiskFormat::Qcow2,
            };
            let options =
                vmimg_store::PushOptions { format, part_size: *part_size, jobs: *jobs, sign_key: sign_key.clone() };
            let opening = Opening { download: Some(download), registry: Some(registry), ..held };
            runtime()?.block_on(oci::push(&cli.open(opening)?, image, target, options, *json, cli.quiet))
        }
        Command::Images { json, format, filter } => {
            let listing = format::ListFormat::chosen(format, *json);
            runtime()?.block_on(manage::images(&cli.open(reading)?, filter, listing))
        }
        Command::Inspect { image, json } => runtime()?.block_on(inspect::run(&cli.open(reading)?, image, *json)),
        Command::Rm { image, force } => {
            runtime()?.block_on(manage::remove_image(&cli.open(held)?, image, *force, cli.quiet))
        }
        Command::Tag { image, name } => runtime()?.block_on(manage::tag(&cli.open(held)?, image, name, cli.quiet)),
        Command::Untag { name } => manage::untag(&cli.open(held)?, name, cli.quiet),
        Command::Du { json } => manage::du(&cli.open(reading)?, *json),
        Command::Serve { get, listen, token_file, builds, allow_local, openapi } => {
            let args = serve::ServeArgs {
                listen: listen.clone(),
                token_file: token_file.clone(),
                builds: *builds,
                allow_local: allow_local.clone(),
                openapi: *openapi,
            };
            serve::run(|| cli.open(get.opening()), args)
        }
        Command::Gc { keep_under, partials, dry_run, json } => {
            let options = vmimg_store::GcOptions { keep_under: *keep_under, partials: *partials, dry_run: *dry_run };
            let opening = if *dry_run { reading } else { held };
            runtime()?.block_on(manage::gc(&cli.open(opening)?, &options, *json, cli.quiet))
        }
        Command::Instance(InstanceCommand::Create { image, name, size, format, json, get }) => {
            let store = cli.open(get.opening())?;
            let request =
                InstanceRequest { image: image.clone(), name: name.clone(), size: *size, format: format.parse()? };
            runtime()?.block_on(manage::create_instance(&store, request, *json, cli.quiet))
        }
        Command::Bundle(BundleCommand::Export { image, file, level, compress_threads, json }) => {
            let options = vmimg_store::ExportOptions { level: *level, threads: compress_threads.unwrap_or(0) };
            runtime()?.block_on(bundle::export(&cli.open(held)?, image, file, options, *json, cli.quiet))
        }
        Command::Bundle(BundleCommand::Import { file, name, digest, max_archive_size, max_file_size, json }) => {
            let limits = vmimg_store::BundleLimits { max_archive: *max_archive_size, max_file: *max_file_size };
            let store = cli.open(plain)?;
            runtime()?.block_on(bundle::import(&store, file, name.as_deref(), limits, digest.clone(), *json, cli.quiet))
        }
        Command::Image(ImageCommand::New { name, size, machine, json }) => {
            let store = cli.open(plain)?;
            runtime()?.block_on(bundle::new_image(&store, name, *size, machine.as_deref(), *json, cli.quiet))
        }
        Command::Instance(InstanceCommand::List { json }) => manage::list_instances(&cli.open(reading)?, *json),
        Command::Instance(InstanceCommand::Rm { name }) => {
            runtime()?.block_on(async { Ok(cli.open(held)?.remove_instance(name).await?) })
        }
        Command::Catalog(CatalogCommand::List { json, catalog }) => {
            catalog::list(&cli.open(catalog_only(catalog))?, *json)
        }
        Command::Catalog(CatalogCommand::Show { alias, catalog }) => {
            catalog::show(&cli.open(catalog_only(catalog))?, alias)
        }
        Command::Catalog(CatalogCommand::Refresh { file, aliases, source, download }) => {
            let store = cli.open(Opening { download: Some(download), ..source.opening() })?;
            runtime()?.block_on(catalog::refresh(&store, file, aliases))
        }
        Command::Info { file, json, format } => info::run(file, *format, *json),
        Command::Completions { shell } => {
            docs::completions::<Cli>(*shell);
            Ok(())
        }
        Command::Man { dir } => docs::man::<Cli>(dir.as_deref()),
        Command::Convert { src, dst, format, output_format: _, threads, no_sync, json } => {
            let options = ConvertOptions { threads: threads.unwrap_or(0), sync: !no_sync };
            files::convert(src, dst, *format, &options, files::Output { json: *json, quiet: cli.quiet })
        }
        Command::Copy { src, dst, size, no_sync, json, download, registry } => {
            if let Some((src, dst)) = oci::registry_pair(src, dst)? {
                if size.is_some() || *no_sync {
                    anyhow::bail!(vmimg_store::Error::Invalid(
                        "--size and --no-sync are for disk files, not copies between registries".into()
                    ));
                }
                let opening = Opening { download: Some(download), registry: Some(registry), read_only: true, ..plain };
                return runtime()?.block_on(oci::copy(&cli.open(opening)?, &src, &dst, *json, cli.quiet));
            }
            let options = vmimg_disk::CopyOptions { size: *size, sync: !no_sync, ..Default::default() };
            files::copy(src, dst, &options, files::Output { json: *json, quiet: cli.quiet })
        }
    }
}

/// The store read with a catalog file and nothing else.
fn catalog_only(catalog: &Option<PathBuf>) -> Opening<'_> {
    Opening { catalog: catalog.as_deref(), read_only: true, ..Opening::default() }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_words_skip_options_and_their_values() {
        let cases: &[(&str, &str)] = &[
            ("vmimg", "vmimg"),
            ("vmimg frob pull", "vmimg"),
            ("vmimg pull --arch sparc x", "vmimg pull"),
            ("vmimg --store pull images", "vmimg images"),
            ("vmimg --store=pull -v builds -q recover --concurrency x", "vmimg builds recover"),
            ("vmimg -qv info -f vmdk x", "vmimg info"),
            ("vmimg -- pull", "vmimg"),
            ("vmimg disk new-ext4 --size x", "vmimg disk new-ext4"),
        ];
        for (line, words) in cases {
            let args = line.split(' ').map(std::ffi::OsString::from);
            assert_eq!(super::command_words(args), *words, "{line}");
        }
    }
}
