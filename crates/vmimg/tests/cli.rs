//! The `vmimg` binary as a user meets it: `info` against `qemu-img info`,
//! `convert` results and refusals, one-line errors and exit codes (usage
//! errors and tool failures too), destinations checked before any work,
//! help, the form of `--json` outputs and of listings.

mod common;

use common::error_line;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

/// `vmimg ARGS` for commands that need no store (through the common
/// helper, with a store that is never made).
fn vmimg(args: &[&str]) -> Output {
    common::vmimg(Path::new("/nonexistent/vmimg-cli-test-store"), args)
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().expect("run qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The keys of `qemu-img info --output=json` that describe the image itself.
const TOP_KEYS: &[&str] = &[
    "format",
    "virtual-size",
    "actual-size",
    "cluster-size",
    "dirty-flag",
    "backing-filename",
    "backing-filename-format",
    "encrypted",
];
const QCOW2_KEYS: &[&str] = &[
    "compat",
    "compression-type",
    "lazy-refcounts",
    "refcount-bits",
    "corrupt",
    "extended-l2",
    "data-file",
    "data-file-raw",
];

/// Checks that vmimg's JSON agrees with qemu-img's on every fact both report.
fn assert_info_matches_qemu(image: &Path) {
    let path = image.to_str().unwrap();
    let theirs: Value = serde_json::from_str(&qemu_img(&["info", "-U", "--output=json", path])).unwrap();
    let out = vmimg(&["info", "--json", path]);
    assert!(out.status.success(), "vmimg info {path}: {}", stderr(&out));
    let ours: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in TOP_KEYS {
        assert_eq!(ours.get(key), theirs.get(key), "{path}: {key}");
    }
    let data = |v: &Value| v.pointer("/format-specific/data").cloned().unwrap_or(Value::Null);
    let (ours_q, theirs_q) = (data(&ours), data(&theirs));
    for key in QCOW2_KEYS {
        assert_eq!(ours_q.get(key), theirs_q.get(key), "{path}: format-specific {key}");
    }
    if let Some(encrypt) = theirs_q.get("encrypt") {
        assert_eq!(ours_q.pointer("/encrypt/format"), encrypt.get("format"), "{path}: encrypt format");
    }
}

#[test]
fn info_agrees_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let raw = p("base.raw");
    fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    let creations: &[&[&str]] = &[
        &["-f", "qcow2", "-o", "compat=0.10", &p("v2.qcow2"), "1G"],
        &["-f", "qcow2", &p("v3.qcow2"), "3G"],
        &["-f", "qcow2", "-o", "compression_type=zstd,extended_l2=on,cluster_size=128k", &p("zstd.qcow2"), "10G"],
        &["-f", "qcow2", "-o", "lazy_refcounts=on,refcount_bits=64,cluster_size=512", &p("lazy.qcow2"), "100M"],
        &["-f", "qcow2", "-o", "cluster_size=2M", &p("big-cluster.qcow2"), "1T"],
        &["-f", "qcow2", "-b", &raw, "-F", "raw", &p("overlay.qcow2")],
        &["-f", "qcow2", "-o", &format!("data_file={}", p("data.bin")), &p("datafile.qcow2"), "64M"],
        &[
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={},data_file_raw=on", p("data2.bin")),
            &p("datafile-raw.qcow2"),
            "1M",
        ],
        &[
            "--object",
            "secret,id=sec0,data=123456",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            &p("luks.qcow2"),
            "16M",
        ],
    ];
    for args in creations {
        let mut full = vec!["create", "-q"];
        full.extend_from_slice(args);
        qemu_img(&full);
    }
    for name in [
        "base.raw",
        "v2.qcow2",
        "v3.qcow2",
        "zstd.qcow2",
        "lazy.qcow2",
        "big-cluster.qcow2",
        "overlay.qcow2",
        "datafile.qcow2",
        "datafile-raw.qcow2",
        "luks.qcow2",
    ] {
        assert_info_matches_qemu(&dir.path().join(name));
    }
}

#[test]
fn info_reports_the_dirty_and_corrupt_bits() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("flags.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "16M"]);
    // incompatible_features is the big-endian u64 at offset 72: dirty is bit 0, corrupt bit 1.
    fs::OpenOptions::new().write(true).open(&image).unwrap().write_all_at(&[3], 79).unwrap();
    let out = vmimg(&["info", "--json", image.to_str().unwrap()]);
    let ours: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ours["dirty-flag"], true);
    assert_eq!(ours.pointer("/format-specific/data/corrupt"), Some(&Value::Bool(true)));
    let text = String::from_utf8(vmimg(&["info", image.to_str().unwrap()]).stdout).unwrap();
    assert!(text.contains("dirty flag: yes") && text.contains("corrupt: true"), "{text}");
}

#[test]
fn info_text_names_format_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", image.to_str().unwrap(), "20G"]);
    let out = vmimg(&["info", image.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in ["file format: qcow2", "virtual size: 20 GiB (21474836480 bytes)", "compression type: zstd"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn convert_writes_the_disk_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("in.raw");
    fs::write(&raw, (0..3 << 20).map(|i: u32| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    let image = dir.path().join("in.qcow2");
    let dst = dir.path().join("out.raw");
    qemu_img(&["convert", "-c", "-O", "qcow2", raw.to_str().unwrap(), image.to_str().unwrap()]);
    let out = vmimg(&["convert", image.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&dst).unwrap(), fs::read(&raw).unwrap());
    assert!(stderr(&out).contains("converted"), "{}", stderr(&out));
    let quiet = vmimg(&["-q", "convert", image.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(quiet.status.success() && quiet.stderr.is_empty() && quiet.stdout.is_empty());
}

/// A refusal is one line on stderr, the exit code of an input refused (6),
/// invalid (2) or missing (3), and no output file or temporary file left
/// behind.
fn assert_refused(args: &[&str], dir: &Path, expected: &[&str]) {
    let before: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    let out = vmimg(args);
    let err = stderr(&out);
    assert!(matches!(out.status.code(), Some(2 | 3 | 6)), "{args:?}: {:?} {err}", out.status);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("vmimg: error: "), "{err}");
    for e in expected {
        assert!(err.contains(e), "{args:?}: {err:?} lacks {e:?}");
    }
    let after: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "files changed in {}", dir.display());
}

#[test]
fn convert_refuses_foreign_references_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    fs::write(p("base.raw"), [1u8; 4096]).unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", &p("base.raw"), "-F", "raw", &p("overlay.qcow2")]);
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", &format!("data_file={}", p("data.bin")), &p("df.qcow2"), "1M"]);
    let dst = p("out.raw");
    assert_refused(&["convert", &p("overlay.qcow2"), &dst], d, &["backing file", "base.raw"]);
    assert_refused(&["convert", &p("df.qcow2"), &dst], d, &["external data file", "data.bin"]);
    assert_refused(&["convert", &p("missing.qcow2"), &dst], d, &["cannot open", "missing.qcow2"]);
    assert_refused(&["convert", "-f", "qcow2", &p("base.raw"), &dst], d, &["not a qcow2 image"]);
}

#[test]
fn usage_errors_exit_2_and_name_the_bad_value() {
    let out = vmimg(&["info", "-f", "vmdk", "whatever.img"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown image format \"vmdk\""), "{}", stderr(&out));
}

#[test]
fn convert_failure_midway_leaves_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("in.raw");
    fs::write(&raw, (0..4 << 20).map(|i: u32| (i / 3 % 256) as u8).collect::<Vec<_>>()).unwrap();
    let image = d.join("in.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", raw.to_str().unwrap(), image.to_str().unwrap()]);
    // Garble the tail of the file, where the last compressed clusters live.
    let len = fs::metadata(&image).unwrap().len();
    fs::OpenOptions::new().write(true).open(&image).unwrap().write_all_at(&[0xff; 4096], len - 8192).unwrap();
    fs::remove_file(&raw).unwrap();
    let dst = d.join("out.raw");
    assert_refused(&["convert", image.to_str().unwrap(), dst.to_str().unwrap()], d, &["corrupt compressed cluster"]);
}

#[test]
fn help_documents_each_command() {
    let top = String::from_utf8(vmimg(&["--help"]).stdout).unwrap();
    for cmd in ["info", "convert"] {
        assert!(top.contains(cmd), "{top}");
        let help = String::from_utf8(vmimg(&[cmd, "--help"]).stdout).unwrap();
        assert!(help.contains("--format") && help.contains("Usage"), "{cmd}: {help}");
    }
    let convert = String::from_utf8(vmimg(&["convert", "--help"]).stdout).unwrap();
    assert!(convert.contains("qemu-img convert -O raw") && convert.contains("--threads"));
}

/// Every command's `-h`, by its words after `vmimg`.
const COMMANDS: &[&[&str]] = &[
    &["pull"],
    &["build"],
    &["builds", "list"],
    &["builds", "recover"],
    &["builds", "rm"],
    &["disk", "new-ext4"],
    &["cat"],
    &["push"],
    &["images"],
    &["inspect"],
    &["rm"],
    &["du"],
    &["gc"],
    &["instance", "create"],
    &["instance", "list"],
    &["instance", "rm"],
    &["serve"],
    &["bundle", "export"],
    &["bundle", "import"],
    &["image", "new"],
    &["catalog", "list"],
    &["catalog", "show"],
    &["catalog", "refresh"],
    &["info"],
    &["convert"],
    &["copy"],
];

#[test]
fn each_command_shows_its_own_options_each_described() {
    for command in COMMANDS {
        let out = vmimg(&[&command[..], &["-h"]].concat());
        assert!(out.status.success(), "{command:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let indent = |line: &str| line.len() - line.trim_start().len();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in
            lines.iter().enumerate().filter(|(_, l)| indent(l) <= 6 && l.trim_start().starts_with(['-', '<']))
        {
            // "  --flag <VALUE>  What it does", or the description on the next, deeper line.
            let same_line = line.trim().split_once("  ").is_some_and(|(_, text)| !text.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|next| indent(next) > indent(line) && !next.trim().is_empty());
            assert!(same_line || next_line, "{command:?}: an option without a description: {line:?}\n{help}");
        }
        assert!(!help.contains("[default: 0]"), "{command:?} shows a default of 0 where it means \"automatic\"");
        let network = ["pull", "build", "recover", "cat", "push", "create", "serve", "refresh", "copy"];
        if !command.iter().any(|word| network.contains(word)) {
            for foreign in ["--retries", "--mirror", "--password", "--insecure-registry", "--speed-limit"] {
                assert!(!help.contains(foreign), "{command:?} shows {foreign}, which does not apply to it:\n{help}");
            }
        }
    }
    let help = |words: &[&str]| String::from_utf8(vmimg(&[words, &["--help"]].concat()).stdout).unwrap();
    assert!(help(&["build"]).contains("[possible values: ext4, erofs, cpio]"));
    assert!(help(&["instance", "create"]).contains("[possible values: qcow2, raw]"));
    assert!(help(&["pull"]).contains("[possible values: ext4, erofs, cpio]"));
    assert!(help(&["info"]).contains("[possible values: raw, qcow2]"));
    assert!(help(&["convert"]).contains("[possible values: raw, qcow2]"));
    let serve = help(&["serve"]);
    assert!(serve.contains("Container image builds run at once [default: 2]"), "{serve}");
    let pull = help(&["pull"]);
    for group in ["Sources:", "Downloads:", "Registries:", "--retries", "--mirror", "--username", "VMIMG_RETRIES"] {
        assert!(pull.contains(group), "pull --help lacks {group}:\n{pull}");
    }
}

/// The heading `option` sits under in `help` ("Options" for a command's
/// own), or None if `help` lacks it.
fn heading_of(help: &str, option: &str) -> Option<String> {
    let mut heading = String::new();
    for line in help.lines() {
        if let Some(title) = line.strip_suffix(':').filter(|title| !title.starts_with(' ') && !title.contains(' ')) {
            heading = title.to_owned();
        }
        let words = line.trim_start().split([' ', ',']).filter(|w| !w.is_empty());
        if line.starts_with("  ") && words.take(2).any(|word| word == option) {
            return Some(heading);
        }
    }
    None
}

#[test]
fn options_sit_under_their_group_s_heading() {
    let help = |words: &[&str]| String::from_utf8(vmimg(&[words, &["-h"]].concat()).stdout).unwrap();
    let serve = help(&["serve"]);
    for option in ["--listen", "--token-file", "--builds", "--allow-local", "--openapi"] {
        assert_eq!(heading_of(&serve, option).as_deref(), Some("Daemon"), "{option}:\n{serve}");
    }
    for (option, heading) in [("--catalog", "Sources"), ("--retries", "Downloads"), ("--username", "Registries")] {
        assert_eq!(heading_of(&serve, option).as_deref(), Some(heading), "{option}:\n{serve}");
    }
    for command in [&["pull"][..], &["instance", "create"], &["serve"]] {
        let help = help(command);
        assert_eq!(heading_of(&help, "--threads").as_deref(), Some("Options"), "{command:?}:\n{help}");
    }
    // A container image is named by its reference (no alias, no URL to
    // mirror) and unpacked, not converted.
    for command in [&["build"][..], &["builds", "recover"]] {
        let help = help(command);
        for option in ["--catalog", "--mirror", "--threads"] {
            assert_eq!(heading_of(&help, option), None, "{command:?} offers {option}:\n{help}");
        }
        assert_eq!(heading_of(&help, "--arch").as_deref(), Some("Sources"), "{command:?}:\n{help}");
        assert_eq!(heading_of(&help, "--password").as_deref(), Some("Registries"), "{command:?}:\n{help}");
    }
}

/// `--store` and `-q` are global, but a command that opens no store, or
/// prints nothing but its result, does not show them; it still accepts
/// them, anywhere on the line.
#[test]
fn global_options_are_shown_where_they_apply() {
    let help = |words: &[&str]| String::from_utf8(vmimg(&[words, &["-h"]].concat()).stdout).unwrap();
    let storeless: &[(&[&str], bool)] = &[
        (&["info"], false),
        (&["convert"], true),
        (&["completions"], false),
        (&["man"], false),
        (&["disk", "new-ext4"], false),
    ];
    for (command, quiet) in storeless {
        let help = help(command);
        assert!(!help.contains("--store"), "{command:?} shows --store:\n{help}");
        assert_eq!(help.contains("--quiet"), *quiet, "{command:?}:\n{help}");
        assert!(help.contains("--verbose"), "{command:?}:\n{help}");
    }
    for command in [&["pull"][..], &["images"], &["copy"], &["catalog", "list"]] {
        let help = help(command);
        assert!(help.contains("--store") && help.contains("--quiet"), "{command:?}:\n{help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "1M"]);
    let image = image.to_str().unwrap();
    for args in [&["info", "--store", "/nonexistent", "-q", image][..], &["-q", "info", image, "--quiet"]] {
        let out = vmimg(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(String::from_utf8(out.stdout).unwrap().contains("file format: qcow2"), "{args:?}");
    }
}

#[test]
fn copy_extends_the_disk_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("in.raw"), dir.path().join("out.raw"));
    let file = fs::File::create(&src).unwrap();
    file.set_len(3 << 20).unwrap();
    file.write_all_at(b"data at an odd offset", 1_000_001).unwrap();
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let out = vmimg(&["copy", s, d, "--size", "8MiB"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = fs::read(&dst).unwrap();
    assert_eq!(copy.len(), 8 << 20);
    assert_eq!(copy[..3 << 20], fs::read(&src).unwrap()[..]);
    assert!(copy[3 << 20..].iter().all(|&b| b == 0));
    let report = stderr(&out);
    assert!(report.contains("copied") && report.contains("(8 MiB)") && report.contains(" by "), "{report}");
    let quiet = vmimg(&["-q", "copy", s, d]);
    assert!(quiet.status.success() && quiet.stderr.is_empty() && quiet.stdout.is_empty());
    assert_eq!(fs::metadata(&dst).unwrap().len(), 3 << 20);
}

#[test]
fn copy_refusals_are_one_line_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    fs::write(p("in.raw"), [1u8; 8192]).unwrap();
    fs::write(p("out.raw"), b"old").unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", &p("disk.qcow2"), "1G"]);
    assert_refused(
        &["copy", &p("in.raw"), &p("out.raw"), "--size", "4K"],
        d,
        &["shrinking is refused", "8192", "4096"],
    );
    assert_refused(&["copy", &p("disk.qcow2"), &p("out.raw")], d, &["qcow2", "convert it to raw"]);
    assert_refused(&["copy", &p("in.raw"), &p("in.raw")], d, &["same file"]);
    assert_eq!(fs::read(p("out.raw")).unwrap(), b"old");
    let bad = vmimg(&["copy", &p("in.raw"), &p("out.raw"), "--size", "20X"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("invalid size \"20X\": unknown unit"), "{}", stderr(&bad));
    let help = String::from_utf8(vmimg(&["copy", "--help"]).stdout).unwrap();
    assert!(help.contains("--size") && help.contains("reflink") && help.contains("1K = 1024"), "{help}");
}

#[test]
fn verbose_logs_the_steps_and_rust_log_filters() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.qcow2");
    qemu_img(&["create", "-f", "qcow2", disk.to_str().unwrap(), "8M"]);
    let store = dir.path().join("store");
    let pull = |flags: &[&str], rust_log: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vmimg"));
        command.env_remove("RUST_LOG").arg("--store").arg(&store).arg("pull").arg(&disk).args(flags);
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let quiet = pull(&[], None);
    assert!(!quiet.contains("INFO"), "no log without -v: {quiet}");
    let second = pull(&["-v"], None);
    assert!(second.contains("INFO") && second.contains("in the store already"), "{second}");
    assert!(!second.contains("DEBUG"), "{second}");
    let debug = pull(&["-vv"], None);
    assert!(debug.contains("DEBUG") && debug.contains("planned"), "{debug}");
    let filtered = pull(&["-vv"], Some("vmimg_store::pull=info"));
    assert!(filtered.contains("in the store already") && !filtered.contains("planned"), "{filtered}");
}

#[test]
fn completions_and_man_pages_come_from_the_commands() {
    let bash = vmimg(&["completions", "bash"]);
    assert!(bash.status.success());
    let bash = String::from_utf8(bash.stdout).unwrap();
    assert!(bash.contains("complete") && bash.contains("instance") && bash.contains("--keep-under"), "{bash}");
    let checked = Command::new("bash").arg("-n").arg("-c").arg(&bash).status().unwrap();
    assert!(checked.success(), "bash cannot parse the completion script");
    for shell in ["zsh", "fish"] {
        let out = vmimg(&["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }
    let page = String::from_utf8(vmimg(&["man"]).stdout).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH vmimg"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = vmimg(&["man", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["vmimg.1", "vmimg-pull.1", "vmimg-instance-create.1", "vmimg-serve.1"] {
        let text = fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.contains(".TH"), "{name}");
    }
    let pull = fs::read_to_string(dir.path().join("vmimg-pull.1")).unwrap();
    assert!(pull.contains("retries") && pull.contains("mirror"), "the pull page documents its options");
}

#[test]
fn names_are_suggested_and_images_found_by_an_unambiguous_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let in_store = |args: &[&str]| common::vmimg(&store, args);
    let typo = in_store(&["pull", "debian12"]);
    assert_eq!(typo.status.code(), Some(3), "{}", stderr(&typo));
    assert!(stderr(&typo).contains("did you mean debian-12?"), "{}", stderr(&typo));
    assert!(stderr(&typo).contains("a local file is named with a slash: ./FILE"), "{}", stderr(&typo));
    // catalog show takes no files: it says nothing of them.
    let shown = in_store(&["catalog", "show", "debian12"]);
    assert_eq!(shown.status.code(), Some(3), "{}", stderr(&shown));
    assert!(
        stderr(&shown).contains("did you mean debian-12?") && !stderr(&shown).contains("file"),
        "{}",
        stderr(&shown)
    );

    let mut keys = Vec::new();
    for name in ["a.qcow2", "b.qcow2"] {
        let disk = dir.path().join(name);
        qemu_img(&["create", "-f", "qcow2", disk.to_str().unwrap(), "1M"]);
        let pulled = in_store(&["pull", disk.to_str().unwrap()]);
        assert!(pulled.status.success(), "{}", stderr(&pulled));
        let path = String::from_utf8(pulled.stdout).unwrap();
        keys.push(Path::new(path.trim()).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned());
    }
    // "file-" starts both: refused with both named, nothing removed.
    let ambiguous = in_store(&["rm", "file-"]);
    assert_eq!(ambiguous.status.code(), Some(2), "{}", stderr(&ambiguous));
    assert!(stderr(&ambiguous).contains(&keys[0]) && stderr(&ambiguous).contains(&keys[1]), "{}", stderr(&ambiguous));
    // A key with one character changed: not found, and the real one suggested.
    let mut typo = keys[0].clone();
    typo.replace_range(6..7, if &keys[0][6..7] == "0" { "1" } else { "0" });
    let missing = in_store(&["rm", &typo]);
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    assert!(stderr(&missing).contains(&format!("did you mean {}?", keys[0])), "{}", stderr(&missing));
    // The start of one key names that image.
    let removed = in_store(&["rm", &keys[0][..12]]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(stderr(&removed).contains(&format!("removed image {}", keys[0])), "{}", stderr(&removed));
    let listed = String::from_utf8(in_store(&["images"]).stdout).unwrap();
    assert!(!listed.contains(&keys[0]) && listed.contains(&keys[1]) && listed.contains("LAST USED"), "{listed}");
}

#[test]
fn json_output_from_gc_and_instance_create() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let in_store = |args: &[&str]| common::vmimg(&store, args);
    let disk = dir.path().join("a.qcow2");
    qemu_img(&["create", "-f", "qcow2", disk.to_str().unwrap(), "1M"]);
    assert!(in_store(&["pull", disk.to_str().unwrap()]).status.success());
    let created = in_store(&["instance", "create", disk.to_str().unwrap(), "--name", "vm1", "--json"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let instance: Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(instance["name"], "vm1");
    assert_eq!(instance["format"], "qcow2");
    assert!(Path::new(instance["path"].as_str().unwrap()).is_file(), "{instance}");
    // A name taken is refused before the image is fetched (port 9 would refuse it).
    let taken = in_store(&["instance", "create", "http://127.0.0.1:9/big.raw", "--name", "vm1"]);
    assert_eq!(taken.status.code(), Some(4), "{}", stderr(&taken));
    assert!(stderr(&taken).contains("`vmimg instance rm NAME` removes it"), "{}", stderr(&taken));
    assert!(!stderr(&taken).contains("retrying"), "{}", stderr(&taken));
    let gc = in_store(&["gc", "--dry-run", "--json"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    let report: Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert!(report["bytes_freed"].is_u64() && report["images"].is_array(), "{report}");
    assert!(stderr(&gc).is_empty(), "--json says it all on stdout: {}", stderr(&gc));
}

/// Every key of every object in `value`, with where it is (`.disk.format`).
fn keys(value: &Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                found.push((at.to_owned(), key.clone()));
                keys(inner, &format!("{at}.{key}"), found);
            }
        }
        Value::Array(items) => items.iter().enumerate().for_each(|(i, item)| keys(item, &format!("{at}[{i}]"), found)),
        _ => {}
    }
}

/// Each command's --json is pretty (an indented object or array on
/// several lines) and every key in it is snake_case, as README promises of
/// the records the daemon serves too. `info --json` alone keeps qemu-img's
/// names (`virtual-size`): checked against qemu-img above.
#[test]
fn json_outputs_are_pretty_and_snake_case() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    qemu_img(&["create", "-q", "-f", "qcow2", &p("a.qcow2"), "1M"]);
    let on_store: &[&[&str]] = &[
        &["pull", &p("a.qcow2"), "--json"],
        &["instance", "create", &p("a.qcow2"), "--name", "vm1", "--json"],
        &["image", "new", "blank", "--size", "1M", "--json"],
        &["bundle", "export", "blank", &p("blank.tar.zst"), "--json"],
        &["bundle", "import", &p("blank.tar.zst"), "--name", "again", "--json"],
        &["images", "--json"],
        &["inspect", &p("a.qcow2"), "--json"],
        &["instance", "list", "--json"],
        &["du", "--json"],
        &["gc", "--dry-run", "--json"],
    ];
    let off_store: &[&[&str]] =
        &[&["convert", &p("a.qcow2"), &p("a.raw"), "--json"], &["copy", &p("a.raw"), &p("b.raw"), "--json"]];
    let runs = on_store.iter().map(|args| (args, common::vmimg(&store, args)));
    for (args, out) in runs.chain(off_store.iter().map(|args| (args, vmimg(args)))) {
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 2 && lines[1].starts_with("  "), "{args:?} is not pretty:\n{text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        let mut found = Vec::new();
        keys(&value, "", &mut found);
        assert!(!found.is_empty(), "{args:?}: {text}");
        for (at, key) in found {
            let snake = key.starts_with(|c: char| c.is_ascii_lowercase())
                && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            assert!(snake, "{args:?}: the key {key:?} at {at:?} is not snake_case:\n{text}");
        }
    }
}

/// `instance list`'s columns start where their headers do, whatever the
/// length of a name.
#[test]
fn instance_list_columns_stay_aligned_with_a_long_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let disk = dir.path().join("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "1M"]);
    let long = "a-rather-long-instance-name-longer-than-any-column";
    for (name, format) in [(long, "qcow2"), ("vm1", "raw")] {
        let args = ["instance", "create", disk.to_str().unwrap(), "--name", name, "--format", format];
        common::ok(&store, &args);
    }
    let listed = common::ok(&store, &["instance", "list"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    let header = lines[0];
    let column = |title: &str| header.find(title).unwrap_or_else(|| panic!("no {title} in {header:?}"));
    let size_end = column("SIZE") + "SIZE".len();
    for (row, (name, format)) in lines[1..].iter().zip([(long, "qcow2"), ("vm1", "raw")]) {
        let row_at = |at: usize| row.get(at..).unwrap_or("");
        assert!(row.starts_with(&format!("{name} ")), "{listed}");
        assert!(row_at(column("FORMAT")).starts_with(&format!("{format} ")), "FORMAT:\n{listed}");
        assert!(row[..size_end].ends_with(" MiB"), "SIZE ends where its header does:\n{listed}");
        assert!(row_at(column("CREATED")).starts_with("20"), "CREATED:\n{listed}");
        assert!(row_at(column("IMAGE")).starts_with("file-"), "IMAGE:\n{listed}");
    }
}

#[test]
fn images_help_says_its_order() {
    for flag in ["-h", "--help"] {
        let help = String::from_utf8(vmimg(&["images", flag]).stdout).unwrap();
        assert!(help.contains("least recently used first"), "images {flag}:\n{help}");
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A destination that cannot be written is refused before any work, in
/// one line with the exit code of its kind, and nothing is written. The
/// source given to `convert` is corrupt past its header: a check made after
/// the work would report the corrupt cluster instead.
#[test]
fn convert_and_copy_refuse_a_bad_destination_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_owned();
    fs::write(p("in.raw"), (0..4 << 20).map(|i: u32| (i / 3 % 256) as u8).collect::<Vec<_>>()).unwrap();
    qemu_img(&["convert", "-c", "-O", "qcow2", &p("in.raw"), &p("in.qcow2")]);
    let len = fs::metadata(p("in.qcow2")).unwrap().len();
    fs::OpenOptions::new().write(true).open(p("in.qcow2")).unwrap().write_all_at(&[0xff; 4096], len - 8192).unwrap();
    fs::create_dir(p("out")).unwrap();
    fs::write(p("file"), b"a file").unwrap();
    let status = Command::new("mkfifo").arg(p("fifo")).status().unwrap();
    assert!(status.success());
    fs::hard_link(p("in.qcow2"), p("link.qcow2")).unwrap();
    let source = fs::read(p("in.qcow2")).unwrap();
    let before = names(d);
    let cases: &[(&str, &str, &str, i32, &[&str])] = &[
        (
            "convert",
            "in.qcow2",
            "out",
            2,
            &["out is a directory: give the path of the file to write, e.g. ", "out/in.raw"],
        ),
        ("copy", "in.raw", "out", 2, &["out is a directory", "e.g. ", "out/in.raw"]),
        ("convert", "in.qcow2", "missing/x.raw", 3, &["missing/x.raw: its directory ", "missing does not exist"]),
        ("copy", "in.raw", "missing/deeper/x.raw", 3, &["missing/deeper does not exist: create it first"]),
        ("convert", "in.qcow2", "file/x.raw", 2, &["cannot write ", "file is not a directory"]),
        ("copy", "in.raw", "file/x.raw", 2, &["file is not a directory"]),
        ("convert", "in.qcow2", "in.qcow2", 2, &["converting a file onto itself is refused", "same file"]),
        ("convert", "in.qcow2", "link.qcow2", 2, &["converting a file onto itself", "link.qcow2 are the same file"]),
        ("convert", "in.qcow2", "fifo", 2, &["fifo is a FIFO", "give the path of a regular file"]),
        ("copy", "in.raw", "fifo", 2, &["fifo is a FIFO"]),
    ];
    for (command, src, dst, code, expected) in cases {
        let out = vmimg(&[command, &p(src), &p(dst)]);
        let (exit, line) = error_line(&out);
        assert_eq!(exit, *code, "{command} {src} {dst}: {line}");
        for e in *expected {
            assert!(line.contains(e), "{command} {src} {dst}: {line:?} lacks {e:?}");
        }
        assert!(!line.contains("corrupt"), "the work was done before the check: {line}");
        assert_eq!(names(d), before, "{command} {src} {dst} left something");
        assert!(names(&d.join("out")).is_empty(), "{command} {src} {dst} wrote into the directory");
    }
    assert_eq!(fs::read(p("in.qcow2")).unwrap(), source, "the source is untouched");
    assert_eq!(fs::read(p("file")).unwrap(), b"a file");
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(p("fifo")).unwrap().file_type().is_fifo(), "the FIFO is still one");
}

/// Usage errors are one `vmimg: error:` line (exit 2) that keeps clap's
/// message and tips, with the usage and where the help is; help and
/// version print as clap prints them (exit 0).
#[test]
fn usage_errors_are_one_line_and_help_is_clap_s() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["frob"],
            &["unrecognized subcommand 'frob'", "usage: vmimg [OPTIONS] <COMMAND>", "`vmimg --help` says more"],
        ),
        (&["pul", "x"], &["unrecognized subcommand 'pul'", "tip: some similar subcommands exist", "'pull'"]),
        (
            &["convert", "in.qcow2"],
            &[
                "the following required arguments were not provided: <DST>",
                "usage: vmimg convert <SRC> <DST>",
                "`vmimg convert --help` says more",
            ],
        ),
        (&["convert", "--bogus", "a", "b"], &["unexpected argument '--bogus' found", "tip: to pass '--bogus'"]),
        (
            &["pull", "--arch", "sparc", "x"],
            &[
                "invalid value 'sparc' for '--arch <ARCH>' [possible values: amd64, arm64]",
                "`vmimg pull --help` says more",
            ],
        ),
        // A bad value: clap gives no usage, the help named is still the command's.
        (&["images", "--filter", "colour=red"], &["unknown filter \"colour\"", "`vmimg images --help` says more"]),
        (
            &["-q", "--store", "gc", "gc", "--keep-under", "lots"],
            &["invalid size \"lots\"", "`vmimg gc --help` says more"],
        ),
        (&["builds", "recover", "--concurrency", "x"], &["'--concurrency <N>'", "`vmimg builds recover --help` says"]),
        (&["-qv", "info", "-fvmdk", "x"], &["unknown image format", "`vmimg info --help` says more"]),
        (&["copy", "a", "b", "--size"], &["a value is required for '--size <SIZE>'"]),
        (&["info", "-f", "vmdk", "x"], &["unknown image format \"vmdk\": vmimg reads raw and qcow2"]),
    ];
    for (args, expected) in cases {
        let (code, line) = error_line(&vmimg(args));
        assert_eq!(code, 2, "{args:?}: {line}");
        for e in *expected {
            assert!(line.contains(e), "{args:?}: {line:?} lacks {e:?}");
        }
    }
    for args in [&["--help"][..], &["convert", "--help"], &["--version"]] {
        let out = vmimg(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {}", stderr(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.starts_with("vmimg ") || stdout.contains("Usage: vmimg"), "{args:?}: {stdout}");
    }
    // Options but no command: the commands are named.
    let (code, line) = error_line(&vmimg(&[]));
    assert_eq!(code, 2);
    assert!(line.contains("requires a subcommand") && line.contains("pull, build"), "{line}");
}

/// A mke2fs that fails says so in one line, the line of its output that
/// tells what went wrong, with what to do and the exit code of its kind
/// (9: out of space); the disk is not left behind. Needs root (a tmpfs too
/// small for the disk's metadata).
#[test]
fn a_failing_mke2fs_is_one_line() {
    let mount = match vmimg_testserver::mounts::Mount::tmpfs_of(32 << 10) {
        Ok(mount) => mount,
        Err(why) => return vmimg_testserver::mounts::skip_missing(why),
    };
    let disk = mount.path().join("volume.ext4");
    let (code, line) = error_line(&vmimg(&["disk", "new-ext4", disk.to_str().unwrap(), "--size", "64M"]));
    assert_eq!(code, 9, "{line}");
    let expected = format!("mke2fs failed on {} (exit status: 1): mke2fs: No space left on device", disk.display());
    assert!(line.contains(&expected) && line.contains("free space"), "{line}");
    assert!(names(mount.path()).is_empty(), "left behind: {:?}", names(mount.path()));
}

#[test]
fn convert_and_copy_report_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let (src, raw, copy) = (dir.path().join("a.qcow2"), dir.path().join("a.raw"), dir.path().join("b.raw"));
    qemu_img(&["create", "-f", "qcow2", src.to_str().unwrap(), "4M"]);
    let converted = vmimg(&["convert", src.to_str().unwrap(), raw.to_str().unwrap(), "--json"]);
    assert!(converted.status.success(), "{}", stderr(&converted));
    let done: Value = serde_json::from_slice(&converted.stdout).unwrap();
    assert_eq!((&done["source_format"], &done["virtual_size"]), (&Value::from("qcow2"), &Value::from(4 << 20)));
    assert_eq!(done["destination"], raw.to_str().unwrap());
    assert!(stderr(&converted).is_empty(), "{}", stderr(&converted));
    let copied = vmimg(&["copy", raw.to_str().unwrap(), copy.to_str().unwrap(), "--size", "8M", "--json"]);
    assert!(copied.status.success(), "{}", stderr(&copied));
    let done: Value = serde_json::from_slice(&copied.stdout).unwrap();
    assert_eq!((&done["source_size"], &done["virtual_size"]), (&Value::from(4 << 20), &Value::from(8 << 20)));
    assert!(done["method"].is_string() && done["bytes_copied"].is_u64(), "{done}");
}

#[test]
fn commands_that_only_read_make_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A mistyped --store: refused, and no directory made.
    let typo = dir.path().join("sotre");
    let commands: [&[&str]; 14] = [
        &["images"],
        &["du"],
        &["instance", "list"],
        &["builds", "list"],
        // Commands that change what a store holds: a missing one holds nothing.
        &["gc"],
        &["gc", "--dry-run"],
        &["rm", "x"],
        &["tag", "x", "y"],
        &["untag", "y"],
        &["instance", "rm", "x"],
        &["builds", "rm", "x"],
        &["builds", "recover"],
        &["bundle", "export", "x", "/dev/null"],
        &["push", "x", "oci://127.0.0.1:9/vm/x:1"],
    ];
    for command in commands {
        let out = common::vmimg(&typo, command);
        assert_eq!(out.status.code(), Some(3), "{command:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("no store at"), "{command:?}: {}", stderr(&out));
        assert!(!typo.exists(), "{command:?} made the mistyped store");
    }
    // The catalog needs no store, and makes none.
    assert!(common::vmimg(&typo, &["catalog", "list"]).status.success());
    assert!(!typo.exists(), "catalog list made the store");
    // A store that is a file is named as such.
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let out = common::vmimg(&file, &["pull", "./none"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a directory; a store is a directory"), "{}", stderr(&out));
    // A store on a read-only filesystem: every listing works.
    let mount = match vmimg_testserver::mounts::Mount::tmpfs() {
        Ok(mount) => mount,
        Err(e) => return vmimg_testserver::mounts::skip_missing(format!("a tmpfs (root): {e}")),
    };
    let store = mount.path().join("store");
    let disk = dir.path().join("a.qcow2");
    qemu_img(&["create", "-f", "qcow2", disk.to_str().unwrap(), "1M"]);
    assert!(common::vmimg(&store, &["pull", disk.to_str().unwrap()]).status.success());
    let remounted = Command::new("mount").args(["-o", "remount,ro"]).arg(mount.path()).status().unwrap();
    assert!(remounted.success(), "remount read-only");
    let commands: [&[&str]; 6] =
        [&["images"], &["du"], &["instance", "list"], &["builds", "list"], &["catalog", "list"], &["gc", "--dry-run"]];
    for command in commands {
        let out = common::vmimg(&store, command);
        assert!(out.status.success(), "{command:?} on a read-only store: {}", stderr(&out));
    }
    let listed = String::from_utf8(common::vmimg(&store, &["images"]).stdout).unwrap();
    assert!(listed.lines().count() == 2, "{listed}");
    let remounted = Command::new("mount").args(["-o", "remount,rw"]).arg(mount.path()).status().unwrap();
    assert!(remounted.success(), "remount read-write, for the unmount");
}
