//! The newc writer against GNU cpio (listing and extraction as root) and
//! against the format as the kernel's `init/initramfs.c` reads it.
//!
//! Needs root (device nodes, owners) and GNU `cpio` (Debian package `cpio`).

mod common;

use vmimg_testserver::trees::entries;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{assert_too_deep, chmod, deep_tree, mknod, nest_dirs, noise, odd_owners_and_modes};
use common::{set_mtime, special_files, twin_trees};
use rustix::fs::FileType;
use tempfile::TempDir;
use vmimg_rootfs::cpio::{CpioSummary, MAX_FILE_SIZE, write_tree};
use vmimg_rootfs::depth::MAX_DEPTH;

const BIG_LEN: usize = (1 << 20) + 512 * 1024 + 3;

/// A tree with every kind of entry an initramfs can hold.
fn build_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    for dir in ["etc", "a/b/c/d", "hl", "dev", "run", "bin", "tmp", "shared", "ünï code"] {
        fs::create_dir_all(p(dir)).unwrap();
    }
    fs::write(p("empty"), b"").unwrap();
    fs::write(p("etc/hostname"), b"vm\n").unwrap();
    fs::write(p("a/b/c/d/deep"), b"deep file").unwrap();
    fs::write(p("big.bin"), noise(BIG_LEN, 1)).unwrap();
    fs::write(p("ünï code/with space"), b"names are bytes").unwrap();
    symlink("etc/hostname", p("link-rel")).unwrap();
    symlink("/etc/passwd", p("link-abs")).unwrap();
    symlink("no/such/target", p("dangling")).unwrap();
    symlink("/etc", p("escape")).unwrap();
    fs::write(p("hl/one"), b"three names, one inode").unwrap();
    fs::hard_link(p("hl/one"), p("hl/two")).unwrap();
    fs::hard_link(p("hl/one"), p("a/three")).unwrap();
    fs::write(p("hl/empty-one"), b"").unwrap();
    fs::hard_link(p("hl/empty-one"), p("hl/empty-two")).unwrap();
    special_files(root);
    mknod(&p("run/fifo-link"), FileType::Fifo, 0o600, 0, 0);
    fs::hard_link(p("run/fifo-link"), p("run/fifo-link2")).unwrap();
    fs::write(p("bin/su"), b"#!/bin/sh\n").unwrap();
    fs::write(p("owned"), b"odd owner").unwrap();
    fs::write(p("no-access"), b"mode 000").unwrap();
    lchown(p("link-rel"), Some(4242), Some(4343)).unwrap();
    odd_owners_and_modes(root);
    set_times(root);
}

/// Distinct mtimes everywhere, directories last (adding entries changes them).
fn set_times(root: &Path) {
    let mut dirs = Vec::new();
    for (i, (path, meta)) in entries(root).into_iter().enumerate() {
        if meta.is_dir() {
            dirs.push(path);
        } else {
            set_mtime(&path, 1_600_000_000 + i as i64 * 61, 0);
        }
    }
    for (i, dir) in dirs.iter().rev().enumerate() {
        set_mtime(dir, 1_500_000_000 + i as i64 * 7, 0);
    }
}

/// What extraction must keep of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    rdev: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
}

/// Every entry under root by relative path, and the groups of hard links.
fn snapshot(root: &Path) -> (BTreeMap<PathBuf, Record>, BTreeSet<Vec<PathBuf>>) {
    let mut records = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for (path, meta) in entries(root) {
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let kind = meta.file_type();
        let content = kind.is_file().then(|| read_all(&path));
        let target = kind.is_symlink().then(|| fs::read_link(&path).unwrap());
        if !kind.is_dir() && !kind.is_symlink() {
            inodes.entry(meta.ino()).or_default().push(rel.clone());
        }
        // GNU cpio 2.13 sets no mtime on symlinks, and a directory's changes as
        // its entries are extracted (the archive holds them: see the header test).
        let mtime = if kind.is_symlink() || kind.is_dir() { 0 } else { meta.mtime() };
        let record =
            Record { mode: meta.mode(), uid: meta.uid(), gid: meta.gid(), mtime, rdev: meta.rdev(), content, target };
        records.insert(rel, record);
    }
    let groups = inodes.into_values().filter(|g| g.len() > 1).collect();
    (records, groups)
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut data = Vec::new();
    fs::File::open(path).unwrap().read_to_end(&mut data).unwrap();
    data
}

fn archive(root: &Path) -> (Vec<u8>, CpioSummary) {
    let mut out = Vec::new();
    let summary = write_tree(root, &mut out).unwrap();
    (out, summary)
}

fn gnu_cpio(args: &[&str], dir: &Path, input: &[u8]) -> String {
    let mut child = Command::new("cpio")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("GNU cpio is needed: apt-get install cpio");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cpio {args:?} failed: {stderr}");
    assert!(!stderr.contains("warning") && !stderr.contains("error"), "cpio {args:?} complained: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn gnu_cpio_extracts_every_entry_as_it_was() {
    let src = TempDir::new().unwrap();
    build_tree(src.path());
    let (bytes, summary) = archive(src.path());
    let dst = TempDir::new().unwrap();
    gnu_cpio(&["-idmu", "--no-absolute-filenames", "--quiet"], dst.path(), &bytes);

    let (want, want_links) = snapshot(src.path());
    let (got, got_links) = snapshot(dst.path());
    let wrong: Vec<_> = want.iter().filter(|&(path, record)| got.get(path) != Some(record)).collect();
    assert!(wrong.is_empty(), "differ after extraction: {wrong:#?}\nextracted: {got:#?}");
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    assert_eq!(got_links, want_links);
    assert_eq!(want_links.len(), 3, "hl/one, hl/empty-one and run/fifo-link are each linked");
    assert_eq!(summary.entries, want.len() as u64);
    assert_eq!(summary.bytes, bytes.len() as u64);
    assert!(!got.keys().any(|p| p.parent() == Some(Path::new("escape"))), "a symlink is never followed");
}

#[test]
fn gnu_cpio_lists_names_sorted_parents_first() {
    let src = TempDir::new().unwrap();
    build_tree(src.path());
    let (bytes, _) = archive(src.path());
    let listed = gnu_cpio(&["-t", "--quiet"], src.path(), &bytes);
    let names: Vec<&str> = listed.lines().collect();
    assert_eq!(names[0], ".");
    let mut expected: Vec<String> = entries(src.path())
        .into_iter()
        .skip(1)
        .map(|(path, _)| path.strip_prefix(src.path()).unwrap().to_str().unwrap().to_owned())
        .collect();
    // Depth first with sorted children is bytewise order of the paths with '/' sorting first.
    expected.sort_by_key(|name| name.replace('/', "\0"));
    assert_eq!(&names[1..], expected.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, name) in names.iter().enumerate().skip(1) {
        if let Some((parent, _)) = name.rsplit_once('/') {
            assert!(names[..i].contains(&parent), "{parent} must come before {name}");
        }
    }
}

#[test]
fn gnu_cpio_verbose_listing_shows_modes_owners_and_devices() {
    let src = TempDir::new().unwrap();
    build_tree(src.path());
    let (bytes, _) = archive(src.path());
    let listed = gnu_cpio(&["-tv", "--numeric-uid-gid", "--quiet"], src.path(), &bytes);
    let line = |name: &str| {
        listed
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} not listed in:\n{listed}"))
    };
    assert!(line("bin/su").starts_with("-rwsr-xr-x"), "{}", line("bin/su"));
    assert!(line("tmp").starts_with("drwxrwxrwt"), "{}", line("tmp"));
    assert!(line("shared").starts_with("drwxrwsr-x"), "{}", line("shared"));
    assert!(line("owned").contains(" 123456 ") && line("owned").contains(" 654321 "), "{}", line("owned"));
    assert!(
        line("dev/odd").starts_with("crw-------") && line("dev/odd").contains(" 259, 70000 "),
        "{}",
        line("dev/odd")
    );
    assert!(
        line("dev/loop9").starts_with("brw-rw----") && line("dev/loop9").contains(" 7, 9 "),
        "{}",
        line("dev/loop9")
    );
    assert!(line("run/fifo").starts_with("prw-r--r--"), "{}", line("run/fifo"));
    assert!(line("run/sock").starts_with('s'), "{}", line("run/sock"));
    assert!(line("link-abs").contains("link-abs -> /etc/passwd"), "{}", line("link-abs"));
    assert!(line("dangling").contains("dangling -> no/such/target"), "{}", line("dangling"));
    assert!(line("hl/two").starts_with("-rw-r--r-- 3 "), "nlink counts the links: {}", line("hl/two"));
}

/// One newc entry parsed back the way `init/initramfs.c` does.
#[derive(Debug)]
struct Parsed {
    offset: usize,
    fields: [u32; 13],
    name: String,
    data: Vec<u8>,
}

impl Parsed {
    fn ino(&self) -> u32 {
        self.fields[0]
    }
    fn mode(&self) -> u32 {
        self.fields[1]
    }
    fn nlink(&self) -> u32 {
        self.fields[4]
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses every entry, checking magic, hex fields, NUL-terminated names and
/// that all padding is zeros at 4-byte alignment.
fn parse(bytes: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        assert_eq!(pos % 4, 0, "every header starts 4-aligned");
        let header = &bytes[pos..pos + 110];
        assert_eq!(&header[..6], b"070701", "magic at {pos}");
        let mut fields = [0u32; 13];
        for (i, field) in fields.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&header[6 + 8 * i..][..8]).unwrap();
            assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)), "{hex}");
            *field = u32::from_str_radix(hex, 16).unwrap();
        }
        let namesize = fields[11] as usize;
        let name_end = pos + 110 + namesize;
        assert_eq!(bytes[name_end - 1], 0, "name is NUL-terminated");
        let name = String::from_utf8(bytes[pos + 110..name_end - 1].to_vec()).unwrap();
        let data_start = align4(name_end);
        assert!(bytes[name_end..data_start].iter().all(|&b| b == 0), "name padding of {name}");
        let data_end = data_start + fields[6] as usize;
        let next = align4(data_end);
        assert!(bytes[data_end..next].iter().all(|&b| b == 0), "data padding of {name}");
        assert_eq!(fields[12], 0, "check field");
        assert_eq!((fields[7], fields[8]), (0, 0), "device of the archived filesystem");
        let trailer = name == "TRAILER!!!";
        out.push(Parsed { offset: pos, fields, name, data: bytes[data_start..data_end].to_vec() });
        pos = next;
        if trailer {
            assert_eq!(pos, bytes.len(), "nothing after the trailer");
            return out;
        }
    }
}

#[test]
fn headers_padding_inodes_and_links_are_what_the_kernel_reads() {
    let src = TempDir::new().unwrap();
    build_tree(src.path());
    let (bytes, summary) = archive(src.path());
    let parsed = parse(&bytes);
    let by_name = |name: &str| parsed.iter().find(|p| p.name == name).unwrap();

    let trailer = parsed.last().unwrap();
    assert_eq!((trailer.ino(), trailer.mode(), trailer.nlink(), trailer.data.len()), (0, 0, 1, 0));
    assert_eq!(parsed.len() as u64, summary.entries + 1);
    let inos: Vec<u32> = parsed[..parsed.len() - 1].iter().map(Parsed::ino).collect();
    assert_eq!(inos.iter().copied().max().unwrap() as usize, inos.iter().collect::<BTreeSet<_>>().len());

    let root = &parsed[0];
    assert_eq!((root.name.as_str(), root.ino(), root.offset), (".", 1, 0));
    assert_eq!(root.mode(), fs::metadata(src.path()).unwrap().mode());
    // . holds 9 directories: 2 + 9 links, counted from the tree, not the host.
    assert_eq!(root.nlink(), 11);
    assert_eq!(by_name("a/b/c/d").nlink(), 2);

    let links: Vec<&Parsed> = ["a/three", "hl/one", "hl/two"].iter().map(|n| by_name(n)).collect();
    assert!(links.iter().all(|p| p.ino() == links[0].ino() && p.nlink() == 3));
    assert!(links[0].offset < links[1].offset && links[1].offset < links[2].offset);
    assert_eq!(links.iter().map(|p| p.data.len()).collect::<Vec<_>>(), [0, 0, 22], "data with the last link only");
    assert_eq!(links[2].data, b"three names, one inode");

    assert_eq!(by_name("big.bin").data, noise(BIG_LEN, 1));
    assert_eq!(by_name("link-abs").data, b"/etc/passwd");
    assert_eq!(by_name("dev/odd").fields[9..11], [259, 70000]);
    assert_eq!(by_name("bin/su").mode(), 0o104755);
    assert_eq!(by_name("tmp").mode(), 0o41777);
    assert_eq!(by_name("owned").fields[2..4], [123_456, 654_321]);
    assert_eq!(by_name("run/sock").mode() & 0o170000, 0o140000);
    for (path, meta) in entries(src.path()) {
        let rel = path.strip_prefix(src.path()).unwrap().to_str().unwrap();
        let name = if rel.is_empty() { "." } else { rel };
        assert_eq!(i64::from(by_name(name).fields[5]), meta.mtime(), "mtime of {name}");
    }
}

#[test]
fn same_tree_same_bytes_whatever_the_host_numbering() {
    let (first, second) = twin_trees(build_tree, 50);
    set_times(second.path());
    set_times(first.path());
    assert_eq!(archive(first.path()).0, archive(second.path()).0);
}

#[test]
fn a_file_of_four_gib_is_refused_by_name() {
    let src = TempDir::new().unwrap();
    fs::create_dir(src.path().join("var")).unwrap();
    let file = fs::File::create(src.path().join("var/huge")).unwrap();
    file.set_len(MAX_FILE_SIZE + 1).unwrap();
    let err = write_tree(src.path(), std::io::sink()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("var/huge") && msg.contains("32-bit"), "{msg}");
}

#[test]
fn a_file_just_under_four_gib_fits() {
    let src = TempDir::new().unwrap();
    let file = fs::File::create(src.path().join("sparse")).unwrap();
    file.set_len(MAX_FILE_SIZE).unwrap();
    let summary = write_tree(src.path(), std::io::sink()).unwrap();
    assert!(summary.bytes > MAX_FILE_SIZE);
}

#[test]
fn a_name_beyond_the_kernels_path_max_is_refused() {
    let src = TempDir::new().unwrap();
    // 17 levels of 250-byte names: 4266 bytes of path.
    nest_dirs(src.path(), &"n".repeat(250), 17);
    let err = write_tree(src.path(), std::io::sink()).unwrap_err();
    assert!(err.to_string().contains("PATH_MAX"), "{err}");
}

/// The crate's one depth bound: a tree at it is archived (and GNU cpio
/// extracts it), one a level deeper is refused by the first walk, before a
/// byte is written.
#[test]
fn a_tree_at_the_depth_bound_is_archived_and_a_deeper_one_refused_before_any_output() {
    let src = TempDir::new().unwrap();
    let bottom = deep_tree(src.path(), MAX_DEPTH);
    let (bytes, summary) = archive(src.path());
    assert_eq!(summary.entries, MAX_DEPTH as u64 + 1, "the root, {} directories and the file", MAX_DEPTH - 1);
    let dst = TempDir::new().unwrap();
    gnu_cpio(&["-idm", "--no-absolute-filenames", "--quiet"], dst.path(), &bytes);
    assert_eq!(fs::read(dst.path().join(&bottom)).unwrap(), b"at the bottom");

    let src = TempDir::new().unwrap();
    let bottom = deep_tree(src.path(), MAX_DEPTH + 1);
    let mut written = Vec::new();
    let err = write_tree(src.path(), &mut written).unwrap_err();
    assert_too_deep(&err, &bottom, MAX_DEPTH + 1);
    assert!(written.is_empty(), "{} bytes written before the refusal", written.len());
}

#[test]
fn a_missing_root_is_named_in_the_error() {
    let err = write_tree(Path::new("/nonexistent/rootfs"), std::io::sink()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/rootfs"), "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

/// The kernel Debian boots (package `linux-image-amd64`), or none.
fn kernel_image() -> PathBuf {
    let mut kernels: Vec<PathBuf> =
        fs::read_dir("/boot").map(|dir| dir.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    kernels.retain(|p| p.file_name().unwrap().to_str().unwrap().starts_with("vmlinuz-"));
    kernels.sort();
    kernels.pop().expect("a kernel in /boot is needed: apt-get install linux-image-amd64")
}

/// What `busybox stat -c '%n|%f|%u|%g|%h|%t|%T|%s|%Y'` prints for `path`
/// inside the VM, computed from the host tree (sizes only for files and symlinks).
fn expected_stat(root: &Path, path: &Path, meta: &fs::Metadata) -> String {
    let rel = Path::new("/").join(path.strip_prefix(root).unwrap());
    let size = if meta.is_file() || meta.file_type().is_symlink() { meta.size().to_string() } else { "-".into() };
    let (major, minor) = (rustix::fs::major(meta.rdev()), rustix::fs::minor(meta.rdev()));
    let nlink = meta.nlink();
    format!(
        "{}|{:x}|{}|{}|{nlink}|{major:x}|{minor:x}|{size}|{}",
        rel.display(),
        meta.mode(),
        meta.uid(),
        meta.gid(),
        meta.mtime()
    )
}

/// Boots the Debian kernel on the archive as its initramfs; the archive's
/// `/init` reports what the kernel unpacked, and the report must match the tree.
#[test]
fn the_kernel_unpacks_it_exactly() {
    let src = TempDir::new().unwrap();
    build_tree(src.path());
    fs::create_dir(src.path().join("sbin")).unwrap();
    fs::copy("/bin/busybox", src.path().join("sbin/busybox")).expect("apt-get install busybox-static");
    let checked: Vec<_> = entries(src.path()).into_iter().skip(1).collect();
    let mut checklist = String::new();
    let mut expected = Vec::new();
    for (path, meta) in &checked {
        let line = expected_stat(src.path(), path, meta);
        checklist.push_str(line.split('|').next().unwrap());
        checklist.push('\n');
        expected.push(line);
    }
    fs::write(src.path().join("checklist"), checklist).unwrap();
    let init = "#!/sbin/busybox sh\n\
        B=/sbin/busybox\n\
        $B echo VMIMG-BEGIN\n\
        while IFS= read -r p; do\n\
          $B stat -c '%n|%f|%u|%g|%h|%t|%T|%s|%Y' \"$p\"\n\
          [ -f \"$p\" ] && [ ! -L \"$p\" ] && $B sha256sum \"$p\"\n\
          [ -L \"$p\" ] && $B echo \"link $p -> $($B readlink \"$p\")\"\n\
          $B echo \"inode $p $($B stat -c %i \"$p\")\"\n\
        done < /checklist\n\
        $B echo VMIMG-END\n\
        $B poweroff -f\n";
    fs::write(src.path().join("init"), init).unwrap();
    chmod(&src.path().join("init"), 0o755);
    let work = TempDir::new().unwrap();
    let initrd = work.path().join("initrd.cpio");
    write_tree(src.path(), fs::File::create(&initrd).unwrap()).unwrap();

    let report = boot(&initrd, &work.path().join("console.log"));
    let report: Vec<&str> = report.lines().map(str::trim_end).collect();
    for line in &expected {
        let name = line.split('|').next().unwrap();
        let got =
            report.iter().find(|l| l.starts_with(&format!("{name}|"))).unwrap_or_else(|| panic!("{name} missing"));
        let (want, got) = (line.split('|').collect::<Vec<_>>(), got.split('|').collect::<Vec<_>>());
        let fields = if want[7] == "-" { [0, 1, 2, 3, 4, 5, 6, 8].as_slice() } else { &[0, 1, 2, 3, 4, 5, 6, 7, 8] };
        for &i in fields {
            assert_eq!(got[i], want[i], "field {i} of {name}: got {got:?}, want {want:?}");
        }
    }
    for (path, meta) in &checked {
        let name = Path::new("/").join(path.strip_prefix(src.path()).unwrap());
        let name = name.to_str().unwrap();
        if meta.is_file() {
            let digest = sha256(path);
            assert!(report.contains(&format!("{digest}  {name}").as_str()), "content of {name}");
        }
        if meta.file_type().is_symlink() {
            let target = fs::read_link(path).unwrap();
            assert!(report.contains(&format!("link {name} -> {}", target.display()).as_str()), "target of {name}");
        }
    }
    let inode = |name: &str| report.iter().find(|l| l.starts_with(&format!("inode {name} "))).unwrap().to_string();
    let ino = |name: &str| inode(name).rsplit(' ').next().unwrap().to_string();
    assert_eq!(ino("/hl/one"), ino("/hl/two"));
    assert_eq!(ino("/hl/one"), ino("/a/three"));
    assert_eq!(ino("/run/fifo-link"), ino("/run/fifo-link2"));
    assert_ne!(ino("/hl/one"), ino("/hl/empty-one"));
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split(' ').next().unwrap().to_owned()
}

/// Runs QEMU until the guest powers off, and returns the console between the
/// report's markers. TCG only: it boots in seconds, while KVM inside a
/// Firecracker guest (this machine's kind) spins without ever starting.
fn boot(initrd: &Path, log: &Path) -> String {
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "256", "-nodefaults", "-no-reboot", "-display", "none"])
        .arg("-kernel")
        .arg(kernel_image())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1", "-serial"])
        .arg(format!("file:{}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("QEMU is needed: apt-get install qemu-system-x86");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while qemu.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            qemu.kill().unwrap();
            panic!("the guest did not power off in 180 s; console:\n{}", fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let console = String::from_utf8_lossy(&fs::read(log).unwrap()).replace('\r', "");
    let begin = console.find("VMIMG-BEGIN").unwrap_or_else(|| panic!("init never ran; console:\n{console}"));
    let end = console.find("VMIMG-END").unwrap_or_else(|| panic!("init stopped early; console:\n{console}"));
    console[begin..end].to_owned()
}
