//! Booting test disks under QEMU, with Debian's own kernel and busybox, to
//! prove that a disk vmimg built really boots.
//!
//! It owns four things, all built with independent tools (never vmimg):
//! - a busybox root filesystem ([`busybox_rootfs`]) from Debian's
//!   `busybox-static`, whose init prints a marker line and powers off;
//! - initramfs archives packed by GNU `cpio -H newc` ([`cpio_initramfs`]),
//!   and the one that boots a disk root ([`disk_boot_initrd`]): the Debian
//!   kernel builds virtio, ext4 and erofs as modules, so this initrd loads
//!   them, mounts the disk and `switch_root`s to its init;
//! - ext4 and erofs images of a directory (`mkfs.ext4 -d`, `mkfs.erofs`);
//! - [`boot`]: `qemu-system-x86_64` with the kernel of `linux-image-amd64`,
//!   the console on the serial port, until a marker line shows, QEMU exits
//!   or a timeout passes (QEMU is then killed).
//!
//! KVM is used when it works (see [`accel`]), else TCG: on this project's
//! 2-core CI machines a TCG boot to an initramfs marker takes 6.5-8 s, to a
//! disk root 7.5-9 s (about 4 s of it before the kernel's first message:
//! firmware and decompressing the kernel), up to twice that while the
//! other core is busy.
//!
//! It refuses nothing on purpose: it is a test tool, and every failure is a
//! `String` that names the command and carries what it printed (for a boot,
//! the console's tail), so a failing test says why.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The modules [`disk_boot_initrd`] loads (with what they depend on, from
/// `modules.dep`), in this order: the virtio PCI transport and block
/// driver (to see `/dev/vda`), `crc32c_generic` (ext4, jbd2 and libcrc32c
/// ask the crypto API for "crc32c" at load or mount time, which only a
/// softdep names; without a modprobe in the initrd nobody loads it for
/// them), then the filesystems.
pub const DISK_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "erofs"];

/// A Debian kernel and its modules.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    /// `/boot/vmlinuz-VERSION`
    pub vmlinuz: PathBuf,
    /// `VERSION`, e.g. `6.1.0-56-amd64`
    pub version: String,
    /// `/lib/modules/VERSION`
    pub modules: PathBuf,
}

impl Kernel {
    /// The newest `/boot/vmlinuz-*` that has its modules installed (from
    /// the package `linux-image-amd64`; the host's running kernel is not
    /// used, it may be anything).
    pub fn find() -> Result<Kernel, String> {
        static FOUND: OnceLock<Result<Kernel, String>> = OnceLock::new();
        FOUND.get_or_init(|| Kernel::find_in(Path::new("/boot"), Path::new("/lib/modules"))).clone()
    }

    fn find_in(boot: &Path, modules: &Path) -> Result<Kernel, String> {
        let entries = fs::read_dir(boot).map_err(|e| format!("{}: {e}", boot.display()))?;
        let mut kernels: Vec<Kernel> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_prefix("vmlinuz-").map(str::to_owned))
            .map(|version| Kernel {
                vmlinuz: boot.join(format!("vmlinuz-{version}")),
                modules: modules.join(&version),
                version,
            })
            .filter(|k| k.modules.join("modules.dep").is_file())
            .collect();
        kernels.sort_by(|a, b| version_cmp(&a.version, &b.version));
        kernels.pop().ok_or_else(|| {
            format!(
                "no kernel: no {}/vmlinuz-* with {}/VERSION/modules.dep (Debian package linux-image-amd64; \
                 .ci/run installs it)",
                boot.display(),
                modules.display()
            )
        })
    }
}

/// Compares versions with digit runs as numbers (`6.1.0-9` < `6.1.0-56`).
fn version_cmp(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in s.char_indices().skip(1) {
            let prev = s[..i].chars().next_back().is_some_and(|p| p.is_ascii_digit());
            if prev != c.is_ascii_digit() {
                out.push((prev, &s[start..i]));
                start = i;
            }
        }
        if start < s.len() {
            out.push((s[start..].starts_with(|c: char| c.is_ascii_digit()), &s[start..]));
        }
        out
    }
    for (x, y) in parts(a).into_iter().zip(parts(b)) {
        let order = match (x, y) {
            ((true, x), (true, y)) => x.len().cmp(&y.len()).then(x.cmp(y)), // no leading zeros in versions
            ((_, x), (_, y)) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

/// `"kvm"` when KVM works here, else `"tcg"`; `VMIMG_TEST_ACCEL=kvm|tcg`
/// overrides. KVM "works" when `/dev/kvm` opens read-write and the CPU
/// shows its virtualization extensions (`vmx`/`svm` in /proc/cpuinfo): a
/// VM can have a `/dev/kvm` without them (nested virtualization off), and
/// QEMU then spins in the host kernel forever instead of failing.
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| match std::env::var("VMIMG_TEST_ACCEL").as_deref() {
        Ok("kvm") => "kvm",
        Ok("tcg") => "tcg",
        _ if kvm_usable() => "kvm",
        _ => "tcg",
    })
}

fn kvm_usable() -> bool {
    let opens = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let extensions = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|flag| flag == "vmx" || flag == "svm"));
    opens && extensions
}

/// A disk given to the guest as a virtio-blk device (`/dev/vda`, `/dev/vdb`, … in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    pub path: PathBuf,
    /// QEMU's format name: `raw`, `qcow2`.
    pub format: String,
    /// Writes go to a throwaway overlay (QEMU's `snapshot=on`); the file is never changed.
    pub snapshot: bool,
}

/// What to boot. `BootSpec::new().initrd(p).marker("done")` boots an initramfs.
#[derive(Debug, Clone, PartialEq)]
pub struct BootSpec {
    /// The kernel image; `None`: [`Kernel::find`].
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub disks: Vec<Disk>,
    /// Added to `console=ttyS0 panic=-1` (and `quiet` when [`BootSpec::quiet`]).
    pub append: String,
    /// Keep the kernel's own messages off the console (faster under TCG, shorter logs).
    pub quiet: bool,
    /// The boot succeeds once the console shows this; `None`: when QEMU exits.
    pub marker: Option<String>,
    pub timeout: Duration,
    pub memory_mib: u32,
}

impl Default for BootSpec {
    fn default() -> BootSpec {
        BootSpec {
            kernel: None,
            initrd: None,
            disks: Vec::new(),
            append: String::new(),
            quiet: true,
            marker: None,
            timeout: Duration::from_secs(120),
            memory_mib: 512,
        }
    }
}

impl BootSpec {
    pub fn new() -> BootSpec {
        BootSpec::default()
    }

    pub fn kernel(mut self, path: impl Into<PathBuf>) -> BootSpec {
        self.kernel = Some(path.into());
        self
    }

    pub fn initrd(mut self, path: impl Into<PathBuf>) -> BootSpec {
        self.initrd = Some(path.into());
        self
    }

    /// Adds a raw disk, writable.
    pub fn disk(self, path: impl Into<PathBuf>) -> BootSpec {
        self.disk_with(Disk { path: path.into(), format: "raw".into(), snapshot: false })
    }

    pub fn disk_with(mut self, disk: Disk) -> BootSpec {
        self.disks.push(disk);
        self
    }

    /// Adds kernel command-line arguments (space-separated from any before).
    pub fn append(mut self, args: &str) -> BootSpec {
        if !self.append.is_empty() {
            self.append.push(' ');
        }
        self.append.push_str(args);
        self
    }

    pub fn quiet(mut self, quiet: bool) -> BootSpec {
        self.quiet = quiet;
        self
    }

    pub fn marker(mut self, marker: &str) -> BootSpec {
        self.marker = Some(marker.to_owned());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> BootSpec {
        self.timeout = timeout;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> BootSpec {
        self.memory_mib = mib;
        self
    }

    /// The QEMU command this spec runs.
    pub fn command(&self) -> Result<Command, String> {
        let kernel = match &self.kernel {
            Some(kernel) => kernel.clone(),
            None => Kernel::find()?.vmlinuz,
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        // -nodefaults: no NIC (whose option ROM a --no-install-recommends QEMU may lack), no VGA, no monitor.
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot"]);
        cmd.args(["-smp", "1", "-m", &self.memory_mib.to_string()]);
        match accel() {
            "kvm" => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            _ => cmd.args(["-accel", "tcg"]),
        };
        cmd.arg("-kernel").arg(kernel);
        if let Some(initrd) = &self.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        for disk in &self.disks {
            let path = disk.path.to_str().ok_or_else(|| format!("{}: not UTF-8", disk.path.display()))?;
            let snapshot = if disk.snapshot { "on" } else { "off" };
            // QEMU splits -drive options at commas; a doubled comma is a literal one.
            let file = path.replace(',', ",,");
            cmd.arg("-drive").arg(format!("file={file},format={},if=virtio,snapshot={snapshot}", disk.format));
        }
        let mut append = String::from("console=ttyS0 panic=-1");
        if self.quiet {
            append.push_str(" quiet");
        }
        if !self.append.is_empty() {
            append.push(' ');
            append.push_str(&self.append);
        }
        cmd.arg("-append").arg(append);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Ok(cmd)
    }
}

/// Boots `spec` and returns the console text: once the marker shows (QEMU
/// is then given a few seconds to power off, then killed), or when QEMU
/// exits when no marker is set. An error (QEMU exited without the marker,
/// or the timeout passed: QEMU is killed) carries QEMU's stderr and the
/// console's tail.
pub fn boot(spec: &BootSpec) -> Result<String, String> {
    let mut child =
        spec.command()?.spawn().map_err(|e| format!("qemu-system-x86_64 (Debian package qemu-system-x86): {e}"))?;
    let console = Arc::new(Mutex::new(Vec::new()));
    let stdout = drain(child.stdout.take(), console.clone());
    let errors = Arc::new(Mutex::new(Vec::new()));
    let stderr = drain(child.stderr.take(), errors.clone());
    let started = Instant::now();
    let outcome = watch(&mut child, spec, &console, started);
    let _ = child.kill();
    let _ = child.wait();
    let _ = stdout.join();
    let _ = stderr.join();
    let console = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    let errors = String::from_utf8_lossy(&errors.lock().unwrap()).into_owned();
    match outcome {
        Ok(()) => Ok(console),
        Err(why) => Err(format!(
            "boot ({} accel) failed after {:.1} s: {why}\nqemu stderr: {}\nconsole (tail):\n{}",
            accel(),
            started.elapsed().as_secs_f64(),
            errors.trim(),
            tail(&console, 4000)
        )),
    }
}

/// Waits for the marker, QEMU's exit or the timeout.
fn watch(child: &mut Child, spec: &BootSpec, console: &Mutex<Vec<u8>>, started: Instant) -> Result<(), String> {
    let seen = |console: &Mutex<Vec<u8>>| {
        spec.marker.as_ref().is_some_and(|m| contains(&console.lock().unwrap(), m.as_bytes()))
    };
    loop {
        if seen(console) {
            // Let the guest finish (poweroff -f) so the log ends cleanly; it is killed after.
            let grace = Instant::now() + Duration::from_secs(5);
            while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                // The reader may still hold the last bytes; give it a moment.
                std::thread::sleep(Duration::from_millis(100));
                return match &spec.marker {
                    None if status.success() => Ok(()),
                    None => Err(format!("qemu exited with {status}")),
                    Some(_) if seen(console) => Ok(()),
                    Some(marker) => Err(format!("qemu exited ({status}) before the console showed {marker:?}")),
                };
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for qemu: {e}")),
        }
        if started.elapsed() > spec.timeout {
            return Err(format!("timeout after {:?}; qemu killed", spec.timeout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(mut pipe) = pipe else { return };
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The path of the static busybox (Debian package `busybox-static`).
pub fn busybox() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/bin")])
        .map(|dir| dir.join("busybox"))
        .find(|p| p.is_file())
        .ok_or("no busybox (Debian package busybox-static; .ci/run installs it)")?;
    let elf = fs::read(&found).map_err(|e| format!("{}: {e}", found.display()))?;
    if has_interpreter(&elf) {
        return Err(format!(
            "{} is not a static x86-64 program (the Debian package busybox is dynamic); a guest without libc \
             needs busybox-static",
            found.display()
        ));
    }
    Ok(found)
}

/// Whether a 64-bit little-endian ELF names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |at: usize| elf.get(at..at + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |at: usize| elf.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return true; // not what a static x86-64 busybox is
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..]) // PT_INTERP
    })
}

/// Fills `dir` with busybox: `/bin/busybox` and a symlink per applet in
/// `/bin`, and empty `/dev`, `/proc`, `/sys`, `/tmp`, `/sbin`, `/etc`.
pub fn busybox_tree(dir: &Path) -> Result<(), String> {
    let busybox = busybox()?;
    for sub in ["bin", "sbin", "dev", "proc", "sys", "tmp", "etc"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.join(sub).display()))?;
    }
    let target = dir.join("bin/busybox");
    fs::copy(&busybox, &target).map_err(|e| format!("copying {} to {}: {e}", busybox.display(), target.display()))?;
    let list = run(Command::new(&busybox).arg("--list"))?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox") {
        let link = dir.join("bin").join(applet);
        if fs::symlink_metadata(&link).is_err() {
            symlink("busybox", &link).map_err(|e| format!("{}: {e}", link.display()))?;
        }
    }
    Ok(())
}

/// A guest init script: mounts /proc, /sys and devtmpfs on /dev (unless
/// mounted), runs `commands` (shell lines; their output goes to the
/// console), prints `marker` on a line of its own, and powers off.
pub fn init_script(marker: &str, commands: &[&str]) -> String {
    let mut script = String::from(
        "#!/bin/sh\nexport PATH=/bin:/sbin:/usr/bin:/usr/sbin\n\
         mount -t proc proc /proc\nmount -t sysfs sysfs /sys\n\
         grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev\n",
    );
    for command in commands {
        script.push_str(command);
        script.push('\n');
    }
    let _ = write!(script, "echo {}\nsync\npoweroff -f\n", shell_quote(marker));
    script
}

/// A busybox root filesystem in `dir` ([`busybox_tree`]) whose `/sbin/init`
/// is [`init_script`]`(marker, commands)`, and `/init` a link to it (the
/// name a kernel runs from an initramfs).
pub fn busybox_rootfs(dir: &Path, marker: &str, commands: &[&str]) -> Result<(), String> {
    busybox_tree(dir)?;
    write_executable(&dir.join("sbin/init"), &init_script(marker, commands))?;
    let link = dir.join("init");
    if fs::symlink_metadata(&link).is_err() {
        symlink("sbin/init", &link).map_err(|e| format!("{}: {e}", link.display()))?;
    }
    Ok(())
}

/// Packs `dir` into an uncompressed newc initramfs at `out` with GNU cpio
/// (entries sorted, owners kept).
pub fn cpio_initramfs(dir: &Path, out: &Path) -> Result<(), String> {
    let mut find = Command::new("find")
        .args([".", "-mindepth", "1", "-print0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("find: {e}"))?;
    let mut names = Vec::new();
    find.stdout.take().unwrap().read_to_end(&mut names).map_err(|e| format!("find: {e}"))?;
    let status = find.wait().map_err(|e| format!("find: {e}"))?;
    if !status.success() {
        return Err(format!("find in {} failed: {status}", dir.display()));
    }
    let mut names: Vec<&[u8]> = names.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    names.sort();
    let list: Vec<u8> = names.iter().flat_map(|n| n.iter().copied().chain([0])).collect();
    run_into(Command::new("cpio").args(["--create", "--format=newc", "--null", "--quiet"]).current_dir(dir), &list, out)
}

/// An ext4 image of `dir` at `out`, `size_mib` large (`mkfs.ext4 -d`; owners, modes, xattrs and device nodes kept).
pub fn ext4_image(dir: &Path, out: &Path, size_mib: u64) -> Result<(), String> {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "vmimg-test", "-d"])
        .arg(dir)
        .arg(out)
        .arg(format!("{size_mib}M")))
    .map(drop)
}

/// An erofs image of `dir` at `out` (`mkfs.erofs`, uncompressed).
pub fn erofs_image(dir: &Path, out: &Path) -> Result<(), String> {
    run(Command::new("mkfs.erofs").arg("--quiet").arg(out).arg(dir)).map(drop)
}

/// Builds at `out` an initramfs that boots a disk root: busybox, the
/// [`DISK_MODULES`] of [`Kernel::find`] (uncompressed, for busybox's
/// insmod), and an `/init` that loads them, mounts `root=` (default
/// `/dev/vda`) with `rootfstype=` (default: whatever mounts) read-only
/// when `ro` is on the command line, and `switch_root`s to `init=`
/// (default `/sbin/init`). On failure it prints a line starting
/// `vmimg-initrd:` and powers off. Returns the modules in load order.
pub fn disk_boot_initrd(out: &Path) -> Result<Vec<String>, String> {
    let kernel = Kernel::find()?;
    let modules = load_order(&kernel.modules, DISK_MODULES)?;
    let scratch = Scratch::new("initrd")?;
    let root = scratch.path();
    busybox_tree(root)?;
    fs::create_dir_all(root.join("newroot")).map_err(|e| e.to_string())?;
    let module_dir = root.join("lib/modules");
    fs::create_dir_all(&module_dir).map_err(|e| format!("{}: {e}", module_dir.display()))?;
    let mut inserts = String::new();
    for (name, path) in &modules {
        uncompressed_module(path, &module_dir.join(format!("{name}.ko")))?;
        let _ = writeln!(inserts, "insmod /lib/modules/{name}.ko || echo 'vmimg-initrd: insmod {name} failed'");
    }
    write_executable(&root.join("init"), &DISK_INIT.replace("@INSMOD@\n", &inserts))?;
    cpio_initramfs(root, out)?;
    Ok(modules.into_iter().map(|(name, _)| name).collect())
}

/// The initrd's /init; `@INSMOD@` becomes one insmod per module.
const DISK_INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "vmimg-initrd: $*"; poweroff -f; }
@INSMOD@
root=/dev/vda fstype= init=/sbin/init mode=rw
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root="${arg#root=}" ;;
    rootfstype=*) fstype="${arg#rootfstype=}" ;;
    init=*) init="${arg#init=}" ;;
    ro) mode=ro ;;
    rw) mode=rw ;;
  esac
done
i=0
while [ ! -b "$root" ] && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
[ -b "$root" ] || fail "no block device $root"
mount ${fstype:+-t "$fstype"} -o "$mode" "$root" /newroot || fail "cannot mount $root (${fstype:-any type}, $mode)"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || fail "no $init on $root"
umount /proc /sys
if [ -d /newroot/dev ]; then mount --move /dev /newroot/dev; else umount /dev; fi
exec switch_root /newroot "$init"
"#;

/// `wanted` and what they need, dependencies first, as (name, file);
/// modules built into the kernel are left out.
fn load_order(modules: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let read = |name: &str| {
        let path = modules.join(name);
        fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let builtin: HashSet<String> = read("modules.builtin").unwrap_or_default().lines().map(module_name).collect();
    let mut deps: HashMap<String, (PathBuf, Vec<String>)> = HashMap::new();
    for line in read("modules.dep")?.lines() {
        let Some((file, needs)) = line.split_once(':') else { continue };
        let needs = needs.split_whitespace().map(module_name).collect();
        deps.insert(module_name(file), (modules.join(file), needs));
    }
    fn visit(
        name: &str,
        deps: &HashMap<String, (PathBuf, Vec<String>)>,
        builtin: &HashSet<String>,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), String> {
        if builtin.contains(name) || out.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let (file, needs) = deps.get(name).ok_or_else(|| format!("kernel module {name} not in modules.dep"))?;
        for need in needs {
            visit(need, deps, builtin, out)?;
        }
        out.push((name.to_owned(), file.clone()));
        Ok(())
    }
    let mut out = Vec::new();
    for name in wanted {
        visit(&module_name(name), &deps, &builtin, &mut out)?;
    }
    Ok(out)
}

/// `kernel/crypto/crc32c-intel.ko.xz` → `crc32c_intel`
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.find(".ko").map_or(file, |at| &file[..at]);
    stem.replace('-', "_")
}

/// Copies a module to `out`, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz` with the host's tools.
fn uncompressed_module(path: &Path, out: &Path) -> Result<(), String> {
    let name = path.to_string_lossy();
    let tool = ["xz", "zstd", "gzip"].into_iter().zip([".xz", ".zst", ".gz"]).find(|(_, ext)| name.ends_with(ext));
    match tool {
        None => fs::copy(path, out).map(drop).map_err(|e| format!("copying {name}: {e}")),
        Some((tool, _)) => run_into(Command::new(tool).arg("-dc").arg(path), &[], out),
    }
}

fn write_executable(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(|e| format!("{}: {e}", path.display()))
}

/// `text` as one shell word.
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Runs `cmd`; its stdout, or an error naming it with what it printed.
pub(crate) fn run(cmd: &mut Command) -> Result<String, String> {
    execute(cmd.stdout(Stdio::piped()), &[])
}

/// Runs `cmd` with `input` on its stdin and its stdout into the file `out`.
pub(crate) fn run_into(cmd: &mut Command, input: &[u8], out: &Path) -> Result<(), String> {
    let file = fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    execute(cmd.stdout(file), input).map(drop)
}

fn execute(cmd: &mut Command, input: &[u8]) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd.stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| format!("{shown}: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let output = child.wait_with_output().map_err(|e| format!("{shown}: {e}"))?;
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{shown} failed ({}): {} {}", output.status, stderr.trim(), tail(stdout.trim(), 2000)));
    }
    Ok(stdout)
}

/// A fresh directory under the system's temporary directory, removed on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(what: &str) -> Result<Scratch, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
        let path = std::env::temp_dir().join(format!("vmimg-{what}-{}-{n}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Scratch(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(version_cmp("6.1.0-9-amd64", "6.1.0-56-amd64"), Ordering::Less);
        assert_eq!(version_cmp("6.10.0-1-amd64", "6.9.0-1-amd64"), Ordering::Greater);
        assert_eq!(version_cmp("6.1.0-56-amd64", "6.1.0-56-amd64"), Ordering::Equal);
    }

    #[test]
    fn module_names_are_normalised() {
        assert_eq!(module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz"), "crc32c_intel");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
        assert_eq!(module_name("crc32c-generic"), "crc32c_generic");
    }

    #[test]
    fn load_order_puts_dependencies_first_and_skips_builtins() {
        let dir = Scratch::new("moddep").unwrap();
        fs::write(
            dir.path().join("modules.dep"),
            "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\n\
             kernel/lib/crc16.ko:\n",
        )
        .unwrap();
        fs::write(dir.path().join("modules.builtin"), "kernel/lib/crc16.ko\n").unwrap();
        let order = load_order(dir.path(), &["ext4", "jbd2"]).unwrap();
        let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["jbd2", "ext4"]);
        assert!(load_order(dir.path(), &["nope"]).unwrap_err().contains("nope"));
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn static_elf_has_no_interpreter() {
        let mut elf = vec![0u8; 0x40 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert!(!has_interpreter(&elf));
        elf[0x40..0x44].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert!(has_interpreter(&elf));
    }
}
