//! `machine.json`: a bundle's virtual machine definition, in the format of
//! taskcluster-worker's qemu engine.
//!
//! This module owns reading, checking and writing that file. [`Machine`] is
//! the whole definition with a type per field, and every one of those types
//! admits only values the schema allows, so a `Machine` is valid by
//! construction and [`Machine::to_json`] always writes a file that
//! taskcluster-worker (and [`Machine::parse`]) accept.
//!
//! - Writes: version 1 (the only numbered version), every field, in the
//!   schema's order, pretty-printed with a trailing newline. `threads`,
//!   `cores`, `sockets` and `memory` are written only when set: left out,
//!   they mean "as much as the host allows".
//! - Reads: version 1, and version 0 (taskcluster-worker's first format: no
//!   `version`, nested `cpu`/`network`/`keyboard`/`sound` objects), which is
//!   migrated to version 1 with the values taskcluster-worker's own
//!   migration gives (see [`Machine::parse`]).
//! - Fills in: the defaults taskcluster-worker gives an omitted field
//!   (fixed UUID and MAC included), so a parsed `Machine` has every field
//!   but the four above.
//! - Refuses, with an error that names the field, the value and what is
//!   allowed: input over [`MAX_MACHINE_BYTES`] (before parsing), anything
//!   that is not one JSON object, duplicate keys, nesting deeper than
//!   serde_json's limit, unknown fields in version 1, a wrong type, a
//!   number out of range, a value outside an enumeration, a malformed UUID,
//!   a MAC that is not a locally administered unicast address, any CPU flag
//!   (the schema defines none), and versions other than 0 and 1.
//!
//! New definitions ([`Machine::generate`]) get a random version 4 UUID and a
//! random locally administered unicast MAC ([`random_mac`]).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use std::io::Read;
use std::num::NonZeroU8;
use std::path::Path;
use std::str::FromStr;

/// The largest `machine.json` read, in bytes. Real ones are under 1 KiB.
pub const MAX_MACHINE_BYTES: usize = 64 * 1024;

/// The format version this module writes.
pub const CURRENT_VERSION: u32 = 1;

/// The JSON names of a version 1 definition, in the order they are written.
pub const FIELDS: [&str; 22] = [
    "version",
    "uuid",
    "chipset",
    "cpu",
    "flags",
    "threads",
    "cores",
    "sockets",
    "memory",
    "usb",
    "network",
    "mac",
    "storage",
    "graphics",
    "vgaMemory",
    "graphicsRam",
    "graphicsVRam",
    "sound",
    "keyboard",
    "keyboardLayout",
    "mouse",
    "tablet",
];

/// A virtual machine definition (`machine.json`, version 1).
///
/// Fields serialize under taskcluster-worker's JSON names, in its order.
/// `Deserialize` runs the same checks, defaults and migration as
/// [`Machine::parse`] (without its size limit, which is the reader's job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// Always 1.
    pub version: FormatVersion,
    /// The system UUID QEMU gives the guest.
    pub uuid: MachineUuid,
    pub chipset: Chipset,
    pub cpu: Cpu,
    /// CPU flags; the schema allows none, so this is always empty.
    pub flags: Vec<CpuFlag>,
    /// Threads per core; `None`: as the host's limits decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<NonZeroU8>,
    /// Cores per socket; `None`: as the host's limits decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<NonZeroU8>,
    /// Sockets; `None`: as the host's limits decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<NonZeroU8>,
    /// Guest memory; `None`: the most the host allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Mib>,
    pub usb: UsbController,
    pub network: NetworkDevice,
    pub mac: MacAddress,
    pub storage: StorageDevice,
    pub graphics: Graphics,
    /// QEMU's `vgamem`.
    #[serde(rename = "vgaMemory")]
    pub vga_memory: Mib,
    /// qxl-vga's `ram` (ignored by the other adapters).
    #[serde(rename = "graphicsRam")]
    pub graphics_ram: Mib,
    /// qxl-vga's `vram` (ignored by the other adapters).
    #[serde(rename = "graphicsVRam")]
    pub graphics_vram: Mib,
    pub sound: Sound,
    pub keyboard: Keyboard,
    #[serde(rename = "keyboardLayout")]
    pub keyboard_layout: KeyboardLayout,
    pub mouse: Mouse,
    pub tablet: Tablet,
}

impl Machine {
    /// A new definition: taskcluster-worker's defaults, a fresh random
    /// version 4 UUID and a random MAC; CPUs and memory left to the host.
    ///
    /// # Panics
    /// If the operating system's random source fails.
    pub fn generate() -> Machine {
        Machine { uuid: MachineUuid::random(), mac: MacAddress::random(), ..Machine::defaults() }
    }

    /// What taskcluster-worker fills in for a definition that names nothing
    /// but its version, including its fixed UUID and MAC.
    pub fn defaults() -> Machine {
        Machine {
            version: FormatVersion,
            uuid: MachineUuid::DEFAULT,
            chipset: Chipset::default(),
            cpu: Cpu::default(),
            flags: Vec::new(),
            threads: None,
            cores: None,
            sockets: None,
            memory: None,
            usb: UsbController::default(),
            network: NetworkDevice::default(),
            mac: MacAddress::DEFAULT,
            storage: StorageDevice::default(),
            graphics: Graphics::default(),
            vga_memory: Mib(16),
            graphics_ram: Mib(64),
            graphics_vram: Mib(32),
            sound: Sound::default(),
            keyboard: Keyboard::default(),
            keyboard_layout: KeyboardLayout::default(),
            mouse: Mouse::default(),
            tablet: Tablet::default(),
        }
    }

    /// Reads a `machine.json`: refuses more than [`MAX_MACHINE_BYTES`]
    /// before parsing, migrates version 0, checks every field and fills in
    /// defaults.
    ///
    /// Version 0 is read as taskcluster-worker reads it: `uuid`, `memory`,
    /// `cpu.threads`/`cores`/`sockets`, `network.mac`, `keyboard.layout` and
    /// `sound.device`/`controller` are kept (a sound device whose controller
    /// is not `pci` becomes `device/controller`; no `sound` is `none`), zero
    /// counts count as absent, `threads` becomes 1 when not given,
    /// `network.device` is dropped (the NIC is always e1000) and the rest is
    /// fixed: chipset pc-i440fx-2.8, cpu host, no flags, nec-usb-xhci,
    /// virtio-blk-pci, vmware-svga with 16/64/32 MiB, usb-kbd, usb-mouse,
    /// no tablet. Other keys are ignored there, as taskcluster-worker does.
    pub fn parse(bytes: &[u8]) -> Result<Machine, MachineError> {
        if bytes.len() > MAX_MACHINE_BYTES {
            return Err(MachineError::TooLarge { limit: MAX_MACHINE_BYTES });
        }
        let StrictJson(value) = serde_json::from_slice(bytes).map_err(MachineError::Json)?;
        Machine::from_value(&value)
    }

    /// [`Machine::parse`] on what `reader` yields, reading no more than one
    /// byte past [`MAX_MACHINE_BYTES`].
    pub fn read_from(reader: impl Read) -> Result<Machine, MachineError> {
        let mut bytes = Vec::new();
        reader.take(MAX_MACHINE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(MachineError::Io)?;
        Machine::parse(&bytes)
    }

    /// [`Machine::read_from`] the file at `path`: whatever its size (a
    /// device, a pipe, a file that grows), no more than one byte past
    /// [`MAX_MACHINE_BYTES`] is read.
    pub fn load(path: &Path) -> Result<Machine, MachineError> {
        Machine::read_from(std::fs::File::open(path).map_err(MachineError::Io)?)
    }

    /// Checks, migrates and completes an already parsed document (which,
    /// unlike bytes given to [`Machine::parse`], cannot show duplicate keys).
    pub fn from_value(value: &Value) -> Result<Machine, MachineError> {
        let Value::Object(doc) = value else {
            return Err(MachineError::NotAnObject { found: describe(value) });
        };
        match doc.get("version") {
            None => from_version_0(doc),
            Some(version) => match integer("version", version)? {
                0 => from_version_0(doc),
                1 => from_version_1(doc),
                _ => Err(MachineError::UnsupportedVersion { found: describe(version) }),
            },
        }
    }

    /// The definition as `machine.json` holds it: pretty JSON, fields in the
    /// schema's order, a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("a Machine holds only strings and numbers");
        json.push(b'\n');
        json
    }
}

impl<'de> Deserialize<'de> for Machine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Machine, D::Error> {
        let StrictJson(value) = StrictJson::deserialize(deserializer)?;
        Machine::from_value(&value).map_err(de::Error::custom)
    }
}

/// Why a `machine.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("machine.json is larger than {limit} bytes, the most allowed")]
    TooLarge { limit: usize },
    #[error("machine.json could not be read: {0}")]
    Io(#[source] std::io::Error),
    #[error("machine.json is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("machine.json must hold a JSON object, not {found}")]
    NotAnObject { found: String },
    #[error(
        "machine.json: \"version\" is {found}; vmimg reads version 1 and migrates version 0 (a file without \"version\")"
    )]
    UnsupportedVersion { found: String },
    #[error("machine.json: unknown field {}; the fields are {}", quote(.field), FIELDS.join(", "))]
    UnknownField { field: String },
    #[error("machine.json: \"{field}\" is missing; it is required")]
    MissingField { field: &'static str },
    #[error("machine.json: \"{field}\" is {found}; it must be {expected}")]
    WrongType { field: &'static str, found: String, expected: &'static str },
    #[error("machine.json: \"{field}\" is {value}; it must be {min} to {max}")]
    OutOfRange { field: &'static str, value: String, min: i64, max: i64 },
    #[error("machine.json: \"{field}\" is {value}; it must be one of {}", one_of(.allowed))]
    NotAllowed { field: &'static str, value: String, allowed: &'static [&'static str] },
    #[error("machine.json: \"flags\" holds {value}; the schema defines no CPU flag, so \"flags\" must be []")]
    FlagNotAllowed { value: String },
    #[error(
        "machine.json: \"uuid\" is {value}; it must be a lower-case RFC 4122 UUID of version 1 to 5, like {}",
        MachineUuid::DEFAULT
    )]
    BadUuid { value: String },
    #[error("machine.json: \"mac\" is {value}; {problem}")]
    BadMac { value: String, problem: MacError },
    #[error("{source} (while migrating machine.json from version {from} to {CURRENT_VERSION})")]
    Migrating { from: u32, source: Box<MachineError> },
}

/// The format version, a type with one value: 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FormatVersion;

impl FormatVersion {
    /// Its number in `machine.json`.
    pub const NUMBER: u32 = CURRENT_VERSION;
}

impl Serialize for FormatVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(Self::NUMBER)
    }
}

/// An amount of memory in MiB, 1 to [`Mib::MAX`] (1 TiB), the range the
/// schema gives `memory`, `vgaMemory`, `graphicsRam` and `graphicsVRam`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mib(u32);

impl Mib {
    /// 1 TiB.
    pub const MAX: u32 = 1024 * 1024;

    /// `None` unless `mib` is 1 to [`Mib::MAX`].
    pub const fn new(mib: u32) -> Option<Mib> {
        if mib >= 1 && mib <= Self::MAX { Some(Mib(mib)) } else { None }
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// The amount in bytes.
    pub const fn bytes(self) -> u64 {
        self.0 as u64 * 1024 * 1024
    }
}

impl Serialize for Mib {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB", self.0)
    }
}

/// A system UUID as the schema wants it: RFC 4122 variant, version 1 to 5,
/// written in lower-case hex with hyphens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MachineUuid([u8; 16]);

impl MachineUuid {
    /// The UUID taskcluster-worker fills in when `uuid` is omitted.
    pub const DEFAULT: MachineUuid =
        MachineUuid([0x52, 0xba, 0xb6, 0x07, 0x10, 0xf1, 0x40, 0x49, 0xa0, 0xf8, 0xee, 0x47, 0x25, 0xcb, 0x71, 0x5b]);

    /// `None` unless `bytes` has the RFC 4122 variant and a version 1 to 5.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<MachineUuid> {
        let version = bytes[6] >> 4;
        let rfc4122 = bytes[8] & 0xc0 == 0x80;
        ((1..=5).contains(&version) && rfc4122).then_some(MachineUuid(bytes))
    }

    /// A random (version 4) UUID.
    ///
    /// # Panics
    /// If the operating system's random source fails.
    pub fn random() -> MachineUuid {
        let mut bytes: [u8; 16] = random_bytes();
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        MachineUuid(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The UUID's version, 1 to 5.
    pub fn version(&self) -> u8 {
        self.0[6] >> 4
    }
}

impl FromStr for MachineUuid {
    type Err = BadUuid;

    /// Accepts exactly the schema's form, `xxxxxxxx-xxxx-Vxxx-Nxxx-xxxxxxxxxxxx`
    /// in lower case, V 1 to 5, N 8, 9, a or b.
    fn from_str(text: &str) -> Result<MachineUuid, BadUuid> {
        let text = text.as_bytes();
        if text.len() != 36 || [8, 13, 18, 23].iter().any(|&i| text[i] != b'-') {
            return Err(BadUuid);
        }
        let digits: Vec<u8> = text.iter().copied().filter(|&c| c != b'-').collect();
        if digits.len() != 32 {
            return Err(BadUuid);
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            *byte = hex_pair(pair).ok_or(BadUuid)?;
        }
        MachineUuid::from_bytes(bytes).ok_or(BadUuid)
    }
}

impl fmt::Display for MachineUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for MachineUuid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A string that is not a UUID as the schema wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a lower-case RFC 4122 UUID of version 1 to 5")]
pub struct BadUuid;

/// A locally administered unicast MAC address, written as six lower-case
/// hex octets joined by colons (`aa:54:1a:30:5c:de`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// The MAC taskcluster-worker fills in when `mac` is omitted.
    pub const DEFAULT: MacAddress = MacAddress([0xaa, 0x54, 0x1a, 0x30, 0x5c, 0xde]);

    /// Refuses a multicast address (bit 0 of the first octet set) and a
    /// globally administered one (bit 1 clear).
    pub fn new(octets: [u8; 6]) -> Result<MacAddress, MacError> {
        if octets[0] & 1 != 0 {
            Err(MacError::Multicast)
        } else if octets[0] & 2 == 0 {
            Err(MacError::Global)
        } else {
            Ok(MacAddress(octets))
        }
    }

    /// Six random octets with the local bit set and the multicast bit clear.
    ///
    /// # Panics
    /// If the operating system's random source fails.
    pub fn random() -> MacAddress {
        let mut octets: [u8; 6] = random_bytes();
        octets[0] = (octets[0] | 2) & !1;
        MacAddress(octets)
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

/// A random locally administered unicast MAC ([`MacAddress::random`]).
///
/// # Panics
/// If the operating system's random source fails.
pub fn random_mac() -> MacAddress {
    MacAddress::random()
}

impl FromStr for MacAddress {
    type Err = MacError;

    fn from_str(text: &str) -> Result<MacAddress, MacError> {
        let text = text.as_bytes();
        if text.len() != 17 || text.chunks(3).any(|part| part.len() == 3 && part[2] != b':') {
            return Err(MacError::Malformed);
        }
        let mut octets = [0u8; 6];
        for (octet, part) in octets.iter_mut().zip(text.chunks(3)) {
            *octet = hex_pair(&part[..2]).ok_or(MacError::Malformed)?;
        }
        MacAddress::new(octets)
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why a MAC address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("it must be six lower-case hex octets joined by colons, like {}", MacAddress::DEFAULT)]
    Malformed,
    #[error("it is a multicast address; it must be unicast (bit 0 of the first octet clear)")]
    Multicast,
    #[error("it is a globally administered address; it must be locally administered (bit 1 of the first octet set)")]
    Global,
}

/// An enumeration of the exact strings the schema allows for one field.
macro_rules! choices {
    ($(#[$attr:meta])* $name:ident { $($(#[$vattr:meta])* $variant:ident = $json:literal,)* }) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vattr])* #[serde(rename = $json)] $variant,)*
        }

        impl $name {
            /// Every value, in the schema's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// The JSON names, in the schema's order.
            pub const NAMES: &'static [&'static str] = &[$($json),*];

            /// The JSON name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $json,)*
                }
            }

            /// The value of a JSON name (exact, case-sensitive).
            pub fn from_name(name: &str) -> Option<$name> {
                match name {
                    $($json => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choices! {
    /// `chipset`: the QEMU machine type.
    #[derive(Default)]
    Chipset {
        #[default]
        PcI440fx2_8 = "pc-i440fx-2.8",
    }
}

choices! {
    /// `cpu`: the CPU model shown to the guest.
    #[derive(Default)]
    Cpu {
        #[default]
        Host = "host",
    }
}

choices! {
    /// An entry of `flags`. The schema defines none, so no value exists.
    CpuFlag {}
}

choices! {
    /// `usb`: the USB host controller.
    #[derive(Default)]
    UsbController {
        Piix3Uhci = "piix3-usb-uhci",
        Piix4Uhci = "piix4-usb-uhci",
        #[default]
        NecXhci = "nec-usb-xhci",
    }
}

choices! {
    /// `network`: the network interface controller.
    #[derive(Default)]
    NetworkDevice {
        Rtl8139 = "rtl8139",
        #[default]
        E1000 = "e1000",
    }
}

choices! {
    /// `storage`: the block device the disk is attached with.
    #[derive(Default)]
    StorageDevice {
        #[default]
        VirtioBlkPci = "virtio-blk-pci",
    }
}

choices! {
    /// `graphics`: the display adapter.
    #[derive(Default)]
    Graphics {
        Vga = "VGA",
        VmwareSvga = "vmware-svga",
        #[default]
        QxlVga = "qxl-vga",
        VirtioVga = "virtio-vga",
    }
}

choices! {
    /// `sound`: the sound device, `device/controller` for HDA codecs.
    #[derive(Default)]
    Sound {
        #[default]
        None = "none",
        Ac97 = "AC97",
        Es1370 = "ES1370",
        HdaDuplexIntelHda = "hda-duplex/intel-hda",
        HdaMicroIntelHda = "hda-micro/intel-hda",
        HdaOutputIntelHda = "hda-output/intel-hda",
        HdaDuplexIch9IntelHda = "hda-duplex/ich9-intel-hda",
        HdaMicroIch9IntelHda = "hda-micro/ich9-intel-hda",
        HdaOutputIch9IntelHda = "hda-output/ich9-intel-hda",
    }
}

choices! {
    /// `keyboard`: how the keyboard is attached.
    #[derive(Default)]
    Keyboard {
        #[default]
        UsbKbd = "usb-kbd",
        Ps2 = "PS/2",
    }
}

choices! {
    /// `keyboardLayout`: QEMU's `-k` keymap.
    #[derive(Default)]
    KeyboardLayout {
        Ar = "ar",
        Da = "da",
        De = "de",
        DeCh = "de-ch",
        EnGb = "en-gb",
        #[default]
        EnUs = "en-us",
        Es = "es",
        Et = "et",
        Fi = "fi",
        Fo = "fo",
        Fr = "fr",
        FrBe = "fr-be",
        FrCa = "fr-ca",
        FrCh = "fr-ch",
        Hr = "hr",
        Hu = "hu",
        Is = "is",
        It = "it",
        Ja = "ja",
        Lt = "lt",
        Lv = "lv",
        Mk = "mk",
        Nl = "nl",
        NlBe = "nl-be",
        No = "no",
        Pl = "pl",
        Pt = "pt",
        PtBr = "pt-br",
        Ru = "ru",
        Sl = "sl",
        Sv = "sv",
        Th = "th",
        Tr = "tr",
    }
}

choices! {
    /// `mouse`: how the mouse is attached.
    #[derive(Default)]
    Mouse {
        #[default]
        UsbMouse = "usb-mouse",
        Ps2 = "PS/2",
    }
}

choices! {
    /// `tablet`: an absolute pointing device, or none.
    #[derive(Default)]
    Tablet {
        #[default]
        UsbTablet = "usb-tablet",
        None = "none",
    }
}

/// Version 1: the schema's fields only, each checked, omitted ones defaulted.
fn from_version_1(doc: &Map<String, Value>) -> Result<Machine, MachineError> {
    if let Some(field) = doc.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(MachineError::UnknownField { field: field.clone() });
    }
    let d = Machine::defaults();
    Ok(Machine {
        version: FormatVersion,
        uuid: optional(doc, "uuid", uuid)?.unwrap_or(d.uuid),
        chipset: choice(doc, "chipset", Chipset::NAMES, Chipset::from_name)?.unwrap_or(d.chipset),
        cpu: choice(doc, "cpu", Cpu::NAMES, Cpu::from_name)?.unwrap_or(d.cpu),
        flags: optional(doc, "flags", flags)?.unwrap_or(d.flags),
        threads: optional(doc, "threads", count)?,
        cores: optional(doc, "cores", count)?,
        sockets: optional(doc, "sockets", count)?,
        memory: optional(doc, "memory", mib)?,
        usb: choice(doc, "usb", UsbController::NAMES, UsbController::from_name)?.unwrap_or(d.usb),
        network: choice(doc, "network", NetworkDevice::NAMES, NetworkDevice::from_name)?.unwrap_or(d.network),
        mac: optional(doc, "mac", mac)?.unwrap_or(d.mac),
        storage: choice(doc, "storage", StorageDevice::NAMES, StorageDevice::from_name)?.unwrap_or(d.storage),
        graphics: choice(doc, "graphics", Graphics::NAMES, Graphics::from_name)?.unwrap_or(d.graphics),
        vga_memory: optional(doc, "vgaMemory", mib)?.unwrap_or(d.vga_memory),
        graphics_ram: optional(doc, "graphicsRam", mib)?.unwrap_or(d.graphics_ram),
        graphics_vram: optional(doc, "graphicsVRam", mib)?.unwrap_or(d.graphics_vram),
        sound: choice(doc, "sound", Sound::NAMES, Sound::from_name)?.unwrap_or(d.sound),
        keyboard: choice(doc, "keyboard", Keyboard::NAMES, Keyboard::from_name)?.unwrap_or(d.keyboard),
        keyboard_layout: choice(doc, "keyboardLayout", KeyboardLayout::NAMES, KeyboardLayout::from_name)?
            .unwrap_or(d.keyboard_layout),
        mouse: choice(doc, "mouse", Mouse::NAMES, Mouse::from_name)?.unwrap_or(d.mouse),
        tablet: choice(doc, "tablet", Tablet::NAMES, Tablet::from_name)?.unwrap_or(d.tablet),
    })
}

/// Version 0 (no `version`): rewritten as the version 1 document
/// taskcluster-worker's migration makes, which must then pass version 1's
/// checks. Any error says it happened while migrating.
fn from_version_0(doc: &Map<String, Value>) -> Result<Machine, MachineError> {
    migrate_0_to_1(doc)
        .and_then(|migrated| from_version_1(&migrated))
        .map_err(|e| MachineError::Migrating { from: 0, source: Box::new(e) })
}

fn migrate_0_to_1(doc: &Map<String, Value>) -> Result<Map<String, Value>, MachineError> {
    let cpu = v0_object(doc, "cpu", "cpu")?;
    let network = v0_object(doc, "network", "network")?;
    let keyboard = v0_object(doc, "keyboard", "keyboard")?;
    // Type-checked like the rest, but its value is dropped: the migration
    // always picks e1000.
    v0_string(network, "device", "network.device")?;
    let required = |found: Option<String>, field| found.ok_or(MachineError::MissingField { field });
    let uuid = required(v0_string(doc, "uuid", "uuid")?, "uuid")?;
    let mac = required(v0_string(network, "mac", "network.mac")?, "network.mac")?;
    let layout = required(v0_string(keyboard, "layout", "keyboard.layout")?, "keyboard.layout")?;
    let sound = match doc.get("sound") {
        None | Some(Value::Null) => "none".to_owned(),
        Some(_) => {
            let sound = v0_object(doc, "sound", "sound")?;
            let device = v0_string(sound, "device", "sound.device")?.unwrap_or_default();
            match v0_string(sound, "controller", "sound.controller")?.unwrap_or_default() {
                controller if controller == "pci" => device,
                controller => format!("{device}/{controller}"),
            }
        }
    };
    let mut v1 = Map::new();
    let mut set = |key: &str, value: Value| v1.insert(key.to_owned(), value);
    set("version", 1.into());
    set("uuid", uuid.into());
    set("chipset", Chipset::PcI440fx2_8.as_str().into());
    set("cpu", Cpu::Host.as_str().into());
    set("flags", Value::Array(Vec::new()));
    set("threads", v0_count(cpu, "threads", "cpu.threads")?.unwrap_or_else(|| 1.into()));
    if let Some(cores) = v0_count(cpu, "cores", "cpu.cores")? {
        set("cores", cores);
    }
    if let Some(sockets) = v0_count(cpu, "sockets", "cpu.sockets")? {
        set("sockets", sockets);
    }
    if let Some(memory) = v0_count(doc, "memory", "memory")? {
        set("memory", memory);
    }
    set("usb", UsbController::NecXhci.as_str().into());
    set("network", NetworkDevice::E1000.as_str().into());
    set("mac", mac.into());
    set("storage", StorageDevice::VirtioBlkPci.as_str().into());
    set("graphics", Graphics::VmwareSvga.as_str().into());
    set("vgaMemory", 16.into());
    set("graphicsRam", 64.into());
    set("graphicsVRam", 32.into());
    set("sound", sound.into());
    set("keyboard", Keyboard::UsbKbd.as_str().into());
    set("keyboardLayout", layout.into());
    set("mouse", Mouse::UsbMouse.as_str().into());
    set("tablet", Tablet::None.as_str().into());
    Ok(v1)
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

/// A version 0 nested object; absent or `null` reads as empty.
fn v0_object<'a>(
    doc: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a Map<String, Value>, MachineError> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(&EMPTY),
        Some(Value::Object(object)) => Ok(object),
        Some(other) => Err(wrong_type(field, other, "an object")),
    }
}

/// A version 0 string; absent or `null` reads as `None`.
fn v0_string(doc: &Map<String, Value>, key: &str, field: &'static str) -> Result<Option<String>, MachineError> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(wrong_type(field, other, "a string")),
    }
}

/// A version 0 integer; absent, `null` and 0 read as `None`. The value is
/// kept as written, for version 1's range checks to report.
fn v0_count(doc: &Map<String, Value>, key: &str, field: &'static str) -> Result<Option<Value>, MachineError> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => Ok((integer(field, value)? != 0).then(|| value.clone())),
    }
}

/// A field's value through `read`, or `None` when the field is absent.
fn optional<T>(
    doc: &Map<String, Value>,
    field: &'static str,
    read: fn(&'static str, &Value) -> Result<T, MachineError>,
) -> Result<Option<T>, MachineError> {
    doc.get(field).map(|value| read(field, value)).transpose()
}

/// A field whose value is one of `names`.
fn choice<T>(
    doc: &Map<String, Value>,
    field: &'static str,
    names: &'static [&'static str],
    from_name: fn(&str) -> Option<T>,
) -> Result<Option<T>, MachineError> {
    let Some(value) = doc.get(field) else { return Ok(None) };
    let Value::String(name) = value else { return Err(wrong_type(field, value, "a string")) };
    match from_name(name) {
        Some(choice) => Ok(Some(choice)),
        None => Err(MachineError::NotAllowed { field, value: quote(name), allowed: names }),
    }
}

fn uuid(_: &'static str, value: &Value) -> Result<MachineUuid, MachineError> {
    let Value::String(text) = value else { return Err(wrong_type("uuid", value, "a string")) };
    text.parse().map_err(|_| MachineError::BadUuid { value: quote(text) })
}

fn mac(_: &'static str, value: &Value) -> Result<MacAddress, MachineError> {
    let Value::String(text) = value else { return Err(wrong_type("mac", value, "a string")) };
    text.parse().map_err(|problem| MachineError::BadMac { value: quote(text), problem })
}

fn flags(_: &'static str, value: &Value) -> Result<Vec<CpuFlag>, MachineError> {
    match value {
        Value::Array(items) => match items.first() {
            None => Ok(Vec::new()),
            Some(item) => Err(MachineError::FlagNotAllowed { value: describe(item) }),
        },
        other => Err(wrong_type("flags", other, "an array")),
    }
}

/// `threads`, `cores`, `sockets`: 1 to 255.
fn count(field: &'static str, value: &Value) -> Result<NonZeroU8, MachineError> {
    let n = integer(field, value)?;
    u8::try_from(n).ok().and_then(NonZeroU8::new).ok_or_else(|| out_of_range(field, value, 1, u8::MAX.into()))
}

fn mib(field: &'static str, value: &Value) -> Result<Mib, MachineError> {
    let n = integer(field, value)?;
    u32::try_from(n).ok().and_then(Mib::new).ok_or_else(|| out_of_range(field, value, 1, Mib::MAX.into()))
}

/// A JSON number with no fraction (`2` or `2.0`, as taskcluster-worker
/// reads them), as an `i128` so no JSON integer is out of its range.
fn integer(field: &'static str, value: &Value) -> Result<i128, MachineError> {
    let Value::Number(number) = value else { return Err(wrong_type(field, value, "an integer")) };
    if let Some(n) = number.as_i64() {
        Ok(n.into())
    } else if let Some(n) = number.as_u64() {
        Ok(n.into())
    } else {
        match number.as_f64() {
            // Saturates for huge values, which range checks then refuse.
            Some(f) if f.fract() == 0.0 => Ok(f as i128),
            _ => Err(wrong_type(field, value, "an integer")),
        }
    }
}

fn wrong_type(field: &'static str, value: &Value, expected: &'static str) -> MachineError {
    MachineError::WrongType { field, found: describe(value), expected }
}

fn out_of_range(field: &'static str, value: &Value, min: i64, max: i64) -> MachineError {
    MachineError::OutOfRange { field, value: describe(value), min, max }
}

/// A JSON value as an error message shows it: scalars as written (strings
/// quoted and cut short), containers by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items) if items.is_empty() => "[]".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// `text` as a JSON string (so control characters are escaped), cut after
/// 64 characters.
fn quote(text: &str) -> String {
    const SHOWN: usize = 64;
    let shown: String = text.chars().take(SHOWN).collect();
    let mut quoted = Value::String(shown.clone()).to_string();
    if shown.len() < text.len() {
        quoted.push('…');
    }
    quoted
}

fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| quote(name)).collect();
    match quoted.split_last() {
        None => "nothing".to_owned(),
        Some((only, [])) => only.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    match pair {
        [high, low] => Some((digit(*high)? << 4) | digit(*low)?),
        _ => None,
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// A JSON document read like `serde_json::Value`, but refusing an object
/// that repeats a key (parsers disagree on which copy wins).
struct StrictJson(Value);

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StrictJson, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        StrictJson::deserialize(deserializer).map(|StrictJson(value)| value)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictJson(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {}", quote(&key))));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}
