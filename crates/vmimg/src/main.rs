//! The `vmimg` command line: argument parsing, human and JSON output, exit
//! codes. Everything a library user would need lives in the library crates.

mod info;
mod units;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vmimg_disk::{ConvertOptions, DiskImage, Format};

/// Get VM disk images onto the host, verified, converted and ready to boot.
#[derive(Parser)]
#[command(name = "vmimg", version, about, propagate_version = true)]
struct Cli {
    /// Print nothing but results and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a disk image is: format, sizes, qcow2 features, references.
    ///
    /// Reads only the header, so it also describes images that `convert`
    /// refuses (backing files, external data files, encryption). The JSON
    /// output has the shape of `qemu-img info --output=json`.
    Info {
        /// The image file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Read the file as this format instead of probing it.
        #[arg(short = 'f', long, value_parser = parse_format)]
        format: Option<Format>,
    },
    /// Convert a raw or qcow2 image to a sparse raw disk.
    ///
    /// The output equals `qemu-img convert -O raw` byte for byte and allocates
    /// no more: zero ranges become holes. Clusters are decompressed on all
    /// cores. The output appears at DST only when complete (written beside it,
    /// flushed, renamed). qcow2 images that name a backing file or an
    /// external data file are refused.
    Convert {
        /// The source image.
        src: PathBuf,
        /// The raw disk to write (replaced atomically if it exists).
        dst: PathBuf,
        /// Read the source as this format instead of probing it. A file
        /// without the qcow2 magic always probes as raw.
        #[arg(short = 'f', long, value_parser = parse_format)]
        format: Option<Format>,
        /// Output format (only raw for now).
        #[arg(short = 'O', long = "output-format", default_value = "raw", value_parser = ["raw"])]
        output_format: String,
        /// Worker threads (default: one per core, at most 8).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Do not flush the output to disk before publishing it.
        #[arg(long)]
        no_sync: bool,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: vmimg_disk::Error| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmimg: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause that the
/// message above it already quotes.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { file, json, format } => info::run(&file, format, json),
        Command::Convert { src, dst, format, output_format: _, threads, no_sync } => {
            let image = DiskImage::open(&src, format)?;
            let options = ConvertOptions { threads, sync: !no_sync };
            let started = std::time::Instant::now();
            let stats = vmimg_disk::convert_to_path(&image, &dst, &options)?;
            if !cli.quiet {
                eprintln!(
                    "converted {} ({}, {}) to {} in {:.2?}: {} written, the rest left as holes",
                    src.display(),
                    image.format().name(),
                    units::human(stats.virtual_size),
                    dst.display(),
                    started.elapsed(),
                    units::human(stats.bytes_written),
                );
            }
            Ok(())
        }
    }
}
