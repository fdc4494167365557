//! machine.json: parsing, checks, defaults, version 0 migration, writing,
//! random identities and hostile input.

use std::num::NonZeroU8;
use vmimg_bundle::machine::*;

fn parse(json: &str) -> Result<Machine, MachineError> {
    Machine::parse(json.as_bytes())
}

fn n(count: u8) -> Option<NonZeroU8> {
    NonZeroU8::new(count)
}

fn mib(amount: u32) -> Mib {
    Mib::new(amount).unwrap()
}

/// A version 1 document with `field` set to `value` (raw JSON).
fn v1_with(field: &str, value: &str) -> String {
    format!(r#"{{"version": 1, "{field}": {value}}}"#)
}

/// Every field set, none to its default.
const FULL: &str = r#"{
  "version": 1,
  "uuid": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
  "chipset": "pc-i440fx-2.8",
  "cpu": "host",
  "flags": [],
  "threads": 2,
  "cores": 4,
  "sockets": 255,
  "memory": 1048576,
  "usb": "piix4-usb-uhci",
  "network": "rtl8139",
  "mac": "02:00:5e:10:00:01",
  "storage": "virtio-blk-pci",
  "graphics": "virtio-vga",
  "vgaMemory": 1,
  "graphicsRam": 128,
  "graphicsVRam": 1048576,
  "sound": "hda-output/ich9-intel-hda",
  "keyboard": "PS/2",
  "keyboardLayout": "pt-br",
  "mouse": "PS/2",
  "tablet": "none"
}
"#;

fn full() -> Machine {
    Machine {
        version: FormatVersion,
        uuid: "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9".parse().unwrap(),
        chipset: Chipset::PcI440fx2_8,
        cpu: Cpu::Host,
        flags: vec![],
        threads: n(2),
        cores: n(4),
        sockets: n(255),
        memory: Some(mib(1024 * 1024)),
        usb: UsbController::Piix4Uhci,
        network: NetworkDevice::Rtl8139,
        mac: "02:00:5e:10:00:01".parse().unwrap(),
        storage: StorageDevice::VirtioBlkPci,
        graphics: Graphics::VirtioVga,
        vga_memory: mib(1),
        graphics_ram: mib(128),
        graphics_vram: mib(1024 * 1024),
        sound: Sound::HdaOutputIch9IntelHda,
        keyboard: Keyboard::Ps2,
        keyboard_layout: KeyboardLayout::PtBr,
        mouse: Mouse::Ps2,
        tablet: Tablet::None,
    }
}

#[test]
fn full_definition_round_trips_byte_for_byte() {
    let machine = parse(FULL).unwrap();
    assert_eq!(machine, full());
    assert_eq!(String::from_utf8(machine.to_json()).unwrap(), FULL);
    assert_eq!(Machine::parse(&machine.to_json()).unwrap(), machine);
}

#[test]
fn serde_deserialize_runs_the_same_checks() {
    let machine: Machine = serde_json::from_str(FULL).unwrap();
    assert_eq!(machine, full());
    let error = serde_json::from_str::<Machine>(&v1_with("threads", "0")).unwrap_err();
    assert!(error.to_string().contains(r#""threads" is 0; it must be 1 to 255"#), "{error}");
    let value = serde_json::to_value(full()).unwrap();
    assert_eq!(Machine::from_value(&value).unwrap(), full());
}

#[test]
fn omitted_fields_get_taskcluster_workers_defaults() {
    let machine = parse(r#"{"version": 1}"#).unwrap();
    assert_eq!(machine, Machine::defaults());
    assert_eq!(machine.uuid.to_string(), "52bab607-10f1-4049-a0f8-ee4725cb715b");
    assert_eq!(machine.mac.to_string(), "aa:54:1a:30:5c:de");
    assert_eq!(machine.chipset, Chipset::PcI440fx2_8);
    assert_eq!(machine.cpu, Cpu::Host);
    assert!(machine.flags.is_empty());
    assert_eq!((machine.threads, machine.cores, machine.sockets, machine.memory), (None, None, None, None));
    assert_eq!(machine.usb, UsbController::NecXhci);
    assert_eq!(machine.network, NetworkDevice::E1000);
    assert_eq!(machine.storage, StorageDevice::VirtioBlkPci);
    assert_eq!(machine.graphics, Graphics::QxlVga);
    assert_eq!((machine.vga_memory.get(), machine.graphics_ram.get(), machine.graphics_vram.get()), (16, 64, 32));
    assert_eq!(machine.sound, Sound::None);
    assert_eq!(machine.keyboard, Keyboard::UsbKbd);
    assert_eq!(machine.keyboard_layout, KeyboardLayout::EnUs);
    assert_eq!(machine.mouse, Mouse::UsbMouse);
    assert_eq!(machine.tablet, Tablet::UsbTablet);

    // Only the four host-decided fields stay out of what is written.
    let written: serde_json::Value = serde_json::from_slice(&machine.to_json()).unwrap();
    let keys: Vec<&str> = written.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected: Vec<&str> =
        FIELDS.iter().copied().filter(|f| !["threads", "cores", "sockets", "memory"].contains(f)).collect();
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn some_fields_given_others_defaulted() {
    let machine = parse(r#"{"version": 1, "graphics": "VGA", "memory": 2048, "cores": 2}"#).unwrap();
    assert_eq!(machine.graphics, Graphics::Vga);
    assert_eq!(machine.memory, Some(mib(2048)));
    assert_eq!(machine.memory.unwrap().bytes(), 2048 << 20);
    assert_eq!(machine.cores, n(2));
    assert_eq!(machine.threads, None);
    assert_eq!(machine.usb, UsbController::NecXhci);
}

#[test]
fn integral_numbers_written_with_a_fraction_are_integers() {
    let machine = parse(r#"{"version": 1.0, "threads": 2.0, "memory": 4e3}"#).unwrap();
    assert_eq!(machine.threads, n(2));
    assert_eq!(machine.memory, Some(mib(4000)));
}

#[test]
fn every_count_is_refused_outside_1_to_255() {
    for field in ["threads", "cores", "sockets"] {
        for good in ["1", "255"] {
            parse(&v1_with(field, good)).unwrap();
        }
        for bad in ["0", "256", "-1", "9223372036854775808", "18446744073709551616", "1e300"] {
            let error = parse(&v1_with(field, bad)).unwrap_err();
            match &error {
                MachineError::OutOfRange { field: f, min: 1, max: 255, .. } => assert_eq!(f, &field),
                other => panic!("{field} = {bad}: {other:?}"),
            }
        }
    }
    let message = parse(&v1_with("threads", "0")).unwrap_err().to_string();
    assert_eq!(message, r#"machine.json: "threads" is 0; it must be 1 to 255"#);
}

#[test]
fn every_amount_of_memory_is_refused_outside_1_mib_to_1_tib() {
    for field in ["memory", "vgaMemory", "graphicsRam", "graphicsVRam"] {
        for good in ["1", "1048576"] {
            parse(&v1_with(field, good)).unwrap();
        }
        for bad in ["0", "1048577", "-5", "4294967296"] {
            match parse(&v1_with(field, bad)).unwrap_err() {
                MachineError::OutOfRange { field: f, value, min: 1, max: 1_048_576 } => {
                    assert_eq!((f, value.as_str()), (field, bad));
                }
                other => panic!("{field} = {bad}: {other:?}"),
            }
        }
    }
    let message = parse(&v1_with("memory", "1048577")).unwrap_err().to_string();
    assert_eq!(message, r#"machine.json: "memory" is 1048577; it must be 1 to 1048576"#);
}

#[test]
fn every_choice_field_refuses_other_values_and_names_the_allowed_ones() {
    let fields: [(&str, &[&str]); 11] = [
        ("chipset", Chipset::NAMES),
        ("cpu", Cpu::NAMES),
        ("usb", UsbController::NAMES),
        ("network", NetworkDevice::NAMES),
        ("storage", StorageDevice::NAMES),
        ("graphics", Graphics::NAMES),
        ("sound", Sound::NAMES),
        ("keyboard", Keyboard::NAMES),
        ("keyboardLayout", KeyboardLayout::NAMES),
        ("mouse", Mouse::NAMES),
        ("tablet", Tablet::NAMES),
    ];
    for (field, names) in fields {
        for name in names {
            let machine = parse(&v1_with(field, &format!("\"{name}\""))).unwrap();
            // Written back under the same name.
            let written: serde_json::Value = serde_json::from_slice(&machine.to_json()).unwrap();
            assert_eq!(written[field], *name);
        }
        let upper = format!("\"{}\"", names[0].to_uppercase());
        let lower = format!("\"{}\"", names[0].to_lowercase());
        for bad in ["\"\"", "\"nope\"", upper.as_str(), lower.as_str()] {
            if bad == format!("\"{}\"", names[0]) {
                continue; // the case change was no change
            }
            match parse(&v1_with(field, bad)).unwrap_err() {
                MachineError::NotAllowed { field: f, allowed, .. } => assert_eq!((f, allowed), (field, names)),
                other => panic!("{field} = {bad}: {other:?}"),
            }
        }
    }
    let message = parse(&v1_with("usb", r#""ohci""#)).unwrap_err().to_string();
    assert_eq!(
        message,
        r#"machine.json: "usb" is "ohci"; it must be one of "piix3-usb-uhci", "piix4-usb-uhci" or "nec-usb-xhci""#
    );
    let message = parse(&v1_with("graphics", r#""vga""#)).unwrap_err().to_string();
    assert!(message.contains(r#""graphics" is "vga"; it must be one of "VGA", "#), "{message}");
}

#[test]
fn the_schemas_enumerations_are_complete() {
    assert_eq!(Sound::NAMES.len(), 9);
    assert_eq!(KeyboardLayout::NAMES.len(), 33);
    assert_eq!(Graphics::NAMES, ["VGA", "vmware-svga", "qxl-vga", "virtio-vga"]);
    assert!(CpuFlag::NAMES.is_empty());
    for (value, name) in Sound::ALL.iter().zip(Sound::NAMES) {
        assert_eq!(value.as_str(), *name);
        assert_eq!(Sound::from_name(name), Some(*value));
        assert_eq!(value.to_string(), *name);
    }
}

#[test]
fn any_cpu_flag_is_refused() {
    for bad in [r#"["sse4"]"#, r#"[""]"#, "[1]", "[[]]"] {
        let error = parse(&v1_with("flags", bad)).unwrap_err();
        assert!(matches!(error, MachineError::FlagNotAllowed { .. }), "{bad}: {error:?}");
    }
    let message = parse(&v1_with("flags", r#"["sse4"]"#)).unwrap_err().to_string();
    assert_eq!(message, r#"machine.json: "flags" holds "sse4"; the schema defines no CPU flag, so "flags" must be []"#);
}

#[test]
fn uuids_must_match_the_schemas_pattern() {
    for good in [
        "52bab607-10f1-4049-a0f8-ee4725cb715b",
        "00000000-0000-1000-8000-000000000000",
        "ffffffff-ffff-5fff-bfff-ffffffffffff",
    ] {
        assert_eq!(parse(&v1_with("uuid", &format!("\"{good}\""))).unwrap().uuid.to_string(), good);
    }
    for bad in [
        "",
        "52BAB607-10F1-4049-A0F8-EE4725CB715B",   // upper case
        "52bab60710f14049a0f8ee4725cb715b",       // no hyphens
        "{52bab607-10f1-4049-a0f8-ee4725cb715b}", // braces
        "52bab607-10f1-0049-a0f8-ee4725cb715b",   // version 0
        "52bab607-10f1-6049-a0f8-ee4725cb715b",   // version 6
        "52bab607-10f1-4049-c0f8-ee4725cb715b",   // Microsoft variant
        "52bab607-10f1-4049-70f8-ee4725cb715b",   // NCS variant
        "52bab607-10f1-4049-a0f8-ee4725cb715",    // short
        "52bab607-10f1-4049-a0f8-ee4725cb715bb",  // long
        "52bab607-10f1-4049-a0f8-ee4725cb71-b",   // hyphen for a digit
        "52bab607+10f1-4049-a0f8-ee4725cb715b",   // other separator
        "52bab607-10f1-4049-a0f8-ee4725cb715g",   // not hex
        "52bab607-10f1-4049-a0f8-ee4725cb71é",    // not ASCII
    ] {
        match parse(&v1_with("uuid", &serde_json::to_string(bad).unwrap())).unwrap_err() {
            MachineError::BadUuid { .. } => {}
            other => panic!("{bad}: {other:?}"),
        }
    }
    let message = parse(&v1_with("uuid", r#""xyz""#)).unwrap_err().to_string();
    assert_eq!(
        message,
        r#"machine.json: "uuid" is "xyz"; it must be a lower-case RFC 4122 UUID of version 1 to 5, like 52bab607-10f1-4049-a0f8-ee4725cb715b"#
    );
}

fn mac_error(mac: &str) -> Option<MacError> {
    match parse(&v1_with("mac", &serde_json::to_string(mac).unwrap())) {
        Ok(machine) => {
            assert_eq!(machine.mac.to_string(), mac);
            None
        }
        Err(MachineError::BadMac { problem, .. }) => Some(problem),
        Err(other) => panic!("{mac}: {other:?}"),
    }
}

// The address lists are taskcluster-worker's own MAC tests.
#[test]
fn local_unicast_macs_are_accepted() {
    for mac in [
        "ba:47:78:65:e1:a5",
        "ea:4d:fa:a4:18:ec",
        "0e:54:fb:3a:45:d0",
        "4a:56:d3:0d:b6:86",
        "b6:8d:8f:7e:25:d9",
        "ae:21:ef:2a:ea:19",
        "a6:66:b0:f9:69:cc",
        "86:1c:55:d5:95:cc",
        "6a:f1:92:58:15:2b",
        "06:32:ba:a3:56:64",
        "1e:e7:e9:00:f2:20",
        "e6:c0:5d:a4:41:8c",
        "76:e6:ce:41:37:4f",
        "16:27:00:58:7c:18",
        "52:e2:96:70:a2:f0",
        "02:3d:4b:b6:27:5e",
        "5e:f2:fc:19:55:cd",
        "0a:a7:2e:26:a7:91",
        "be:e5:91:b6:81:cf",
    ] {
        assert_eq!(mac_error(mac), None, "{mac}");
    }
}

#[test]
fn global_multicast_and_malformed_macs_are_refused() {
    for mac in ["00:0d:4b:ec:d6:18", "00:0d:4b:13:2e:61", "00:00:0a:40:ce:1f", "00:00:0a:5b:81:59"] {
        assert_eq!(mac_error(mac), Some(MacError::Global), "{mac}");
    }
    for mac in [
        "df:db:a9:30:67:a1",
        "37:d6:97:2d:36:5f",
        "1f:0e:b2:1d:85:33",
        "f3:ba:9a:6b:75:d2",
        "0b:be:8a:5e:ca:d9",
        "ab:5f:73:24:76:9e",
        "93:66:dc:ba:27:21",
        "a7:c4:a1:2f:0e:0e",
    ] {
        assert_eq!(mac_error(mac), Some(MacError::Multicast), "{mac}");
    }
    for mac in [
        "d:db:a9:30:67:a1",
        "37:d6:7:2d:36:5f",
        "1f:0e:b2:1d:8",
        "9f:0a:11:bbd5:63",
        "2f:92df:14:1d:09",
        "0f::06:2c:e8:03",
        "0b:be:tt:5e:ca:d9",
        "df:f9:65:qf:b3:8b",
        "ab:5fd:73:24:76:9e",
        ":47:78:65:e1:a5",
        "ea::fa:a4:18:ec",
        "4a56:d3:0d:b6:86",
        "a6:66:b0:f9:69",
        "86:1c:55:-:95:cc",
        "1e:0xe7:e9:00:f2:20",
        "e6:c0:5d:%:41:8c",
        "",
        "--",
        "AA:54:1A:30:5C:DE", // the schema wants lower case
        "aa-54-1a-30-5c-de",
        "aa:54:1a:30:5c:de:",
        "aa:54:1a:30:5c:dé",
    ] {
        assert_eq!(mac_error(mac), Some(MacError::Malformed), "{mac}");
    }
    let message = parse(&v1_with("mac", r#""01:00:5e:00:00:01""#)).unwrap_err().to_string();
    assert_eq!(
        message,
        r#"machine.json: "mac" is "01:00:5e:00:00:01"; it is a multicast address; it must be unicast (bit 0 of the first octet clear)"#
    );
}

#[test]
fn wrong_types_are_refused_with_field_value_and_expected_type() {
    let cases = [
        ("threads", r#""2""#, "an integer"),
        ("threads", "1.5", "an integer"),
        ("threads", "null", "an integer"),
        ("threads", "true", "an integer"),
        ("memory", "[]", "an integer"),
        ("memory", "{}", "an integer"),
        ("usb", "1", "a string"),
        ("usb", "null", "a string"),
        ("uuid", "[]", "a string"),
        ("mac", "42", "a string"),
        ("flags", r#""sse4""#, "an array"),
        ("flags", "null", "an array"),
        ("version", r#""1""#, "an integer"),
        ("version", "null", "an integer"),
        ("version", "1.5", "an integer"),
    ];
    for (field, value, expected) in cases {
        let doc = match field {
            "version" => format!(r#"{{"version": {value}}}"#),
            _ => v1_with(field, value),
        };
        match parse(&doc).unwrap_err() {
            MachineError::WrongType { field: f, expected: e, .. } => assert_eq!((f, e), (field, expected)),
            other => panic!("{field} = {value}: {other:?}"),
        }
    }
    let message = parse(&v1_with("threads", r#""two""#)).unwrap_err().to_string();
    assert_eq!(message, r#"machine.json: "threads" is "two"; it must be an integer"#);
}

#[test]
fn unknown_fields_are_refused() {
    for field in ["Threads", "memoryMiB", "", "network.mac", "disk"] {
        match parse(&v1_with(field, "1")).unwrap_err() {
            MachineError::UnknownField { field: f } => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let message = parse(&v1_with("disk", "1")).unwrap_err().to_string();
    assert!(message.starts_with(r#"machine.json: unknown field "disk"; the fields are version, uuid, chipset,"#));
}

#[test]
fn only_versions_0_and_1_are_read() {
    for (version, shown) in
        [("2", "2"), ("-1", "-1"), ("1e12", "1000000000000.0"), ("18446744073709551616", "1.8446744073709552e+19")]
    {
        match parse(&format!(r#"{{"version": {version}}}"#)).unwrap_err() {
            MachineError::UnsupportedVersion { found } => assert_eq!(found, shown),
            other => panic!("{version}: {other:?}"),
        }
    }
    let message = parse(r#"{"version": 2}"#).unwrap_err().to_string();
    assert_eq!(
        message,
        r#"machine.json: "version" is 2; vmimg reads version 1 and migrates version 0 (a file without "version")"#
    );
}

#[test]
fn documents_that_are_not_one_object_are_refused() {
    for (text, found) in [("[]", "[]"), ("null", "null"), (r#""x""#, r#""x""#), ("1", "1"), ("[1]", "an array")] {
        match parse(text).unwrap_err() {
            MachineError::NotAnObject { found: f } => assert_eq!(f, found),
            other => panic!("{text}: {other:?}"),
        }
    }
    for text in ["", "{", r#"{"version": 1} {}"#, r#"{"version": 1,}"#, "{'version': 1}", "\u{feff}{}", "NaN"] {
        assert!(matches!(parse(text), Err(MachineError::Json(_))), "{text:?}");
    }
    assert!(matches!(Machine::parse(b"{\"version\": 1, \"uuid\": \"\xff\"}"), Err(MachineError::Json(_))));
}

#[test]
fn duplicate_keys_are_refused() {
    let error = parse(r#"{"version": 1, "threads": 1, "threads": 200}"#).unwrap_err();
    assert!(matches!(error, MachineError::Json(_)), "{error:?}");
    assert!(error.to_string().contains(r#"duplicate key "threads""#), "{error}");
    let nested = r#"{"uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b", "network": {"mac": "aa:54:1a:30:5c:de", "mac": "02:00:00:00:00:01"}, "keyboard": {"layout": "en-us"}}"#;
    assert!(matches!(parse(nested), Err(MachineError::Json(_))));
}

#[test]
fn input_over_the_limit_is_refused_before_parsing() {
    let doc = r#"{"version": 1}"#;
    let at_limit = format!("{doc}{}", " ".repeat(MAX_MACHINE_BYTES - doc.len()));
    assert_eq!(at_limit.len(), MAX_MACHINE_BYTES);
    parse(&at_limit).unwrap();

    let over = format!("{at_limit} ");
    let error = parse(&over).unwrap_err();
    assert!(matches!(error, MachineError::TooLarge { limit: MAX_MACHINE_BYTES }), "{error:?}");
    assert_eq!(error.to_string(), "machine.json is larger than 65536 bytes, the most allowed");
    // Not even JSON: the size is checked first.
    assert!(matches!(Machine::parse(&vec![b'['; 10 << 20]), Err(MachineError::TooLarge { .. })));

    // From a reader, no more than the limit and one byte is taken.
    Machine::read_from(at_limit.as_bytes()).unwrap();
    let mut endless = std::io::repeat(b' ');
    assert!(matches!(Machine::read_from(&mut endless), Err(MachineError::TooLarge { .. })));
}

#[test]
fn read_errors_are_reported() {
    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let error = Machine::read_from(Failing).unwrap_err();
    assert!(matches!(error, MachineError::Io(_)));
    assert_eq!(error.to_string(), "machine.json could not be read: disk on fire");
}

#[test]
fn load_reads_a_file_and_no_more_than_the_limit_of_an_endless_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine.json");
    std::fs::write(&path, Machine::generate().to_json()).unwrap();
    Machine::load(&path).unwrap();
    // Read whole, /dev/zero would never end.
    let error = Machine::load(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(error, MachineError::TooLarge { limit: MAX_MACHINE_BYTES }), "{error:?}");
    let error = Machine::load(&dir.path().join("missing.json")).unwrap_err();
    assert!(matches!(&error, MachineError::Io(e) if e.kind() == std::io::ErrorKind::NotFound), "{error:?}");
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    let depth = MAX_MACHINE_BYTES / 2 - 100;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(matches!(parse(&arrays), Err(MachineError::Json(_))));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(depth / 5), "}".repeat(depth / 5));
    assert!(matches!(parse(&objects), Err(MachineError::Json(_))));
    let inside = format!(r#"{{"version": 1, "flags": {}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    assert!(matches!(parse(&inside), Err(MachineError::Json(_))));
    let unclosed = format!(r#"{{"version": 1, "uuid": {}"#, "[".repeat(depth));
    assert!(matches!(parse(&unclosed), Err(MachineError::Json(_))));
    // Nesting within serde_json's limit gets the schema's error instead.
    let shallow = format!(r#"{{"version": 1, "flags": [{}{}]}}"#, "[".repeat(100), "]".repeat(100));
    assert!(matches!(parse(&shallow), Err(MachineError::FlagNotAllowed { .. })));
}

#[test]
fn mutated_documents_never_panic() {
    // A small deterministic fuzz: byte flips, insertions and cuts of valid
    // version 1 and version 0 documents.
    let seeds = [FULL.as_bytes().to_vec(), TEST_IMAGE_V0.as_bytes().to_vec(), SOUND_V0.as_bytes().to_vec()];
    let alphabet = b"{}[]\":,0123456789-.eE+ \\utrufalsn\x00\xff";
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    for round in 0..30_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % (bytes.len() + 1);
            let byte = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => bytes.truncate(at.max(1)),
            }
        }
        if let Ok(machine) = Machine::parse(&bytes) {
            accepted += 1;
            assert_eq!(Machine::parse(&machine.to_json()).unwrap(), machine);
        }
    }
    assert!(accepted > 0);
}

/// taskcluster-worker's test image machine.json, version 0.
const TEST_IMAGE_V0: &str = r#"{
  "uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b",
  "network": {
    "device": "e1000",
    "mac": "aa:54:1a:30:5c:de"
  },
  "keyboard": {
    "layout": "en-us"
  }
}
"#;

/// What taskcluster-worker's migration makes of a version 0 document with
/// only `uuid`, `network.mac` and `keyboard.layout`.
fn migrated_minimal(uuid: &str, mac: &str, layout: KeyboardLayout) -> Machine {
    Machine {
        version: FormatVersion,
        uuid: uuid.parse().unwrap(),
        chipset: Chipset::PcI440fx2_8,
        cpu: Cpu::Host,
        flags: vec![],
        threads: n(1),
        cores: None,
        sockets: None,
        memory: None,
        usb: UsbController::NecXhci,
        network: NetworkDevice::E1000,
        mac: mac.parse().unwrap(),
        storage: StorageDevice::VirtioBlkPci,
        graphics: Graphics::VmwareSvga,
        vga_memory: mib(16),
        graphics_ram: mib(64),
        graphics_vram: mib(32),
        sound: Sound::None,
        keyboard: Keyboard::UsbKbd,
        keyboard_layout: layout,
        mouse: Mouse::UsbMouse,
        tablet: Tablet::None,
    }
}

#[test]
fn version_0_migrates_as_taskcluster_worker_migrates_it() {
    let machine = parse(TEST_IMAGE_V0).unwrap();
    let expected = migrated_minimal("52bab607-10f1-4049-a0f8-ee4725cb715b", "aa:54:1a:30:5c:de", KeyboardLayout::EnUs);
    assert_eq!(machine, expected);
    // Written back as version 1, the whole migrated document.
    let written = String::from_utf8(machine.to_json()).unwrap();
    assert_eq!(
        written,
        r#"{
  "version": 1,
  "uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b",
  "chipset": "pc-i440fx-2.8",
  "cpu": "host",
  "flags": [],
  "threads": 1,
  "usb": "nec-usb-xhci",
  "network": "e1000",
  "mac": "aa:54:1a:30:5c:de",
  "storage": "virtio-blk-pci",
  "graphics": "vmware-svga",
  "vgaMemory": 16,
  "graphicsRam": 64,
  "graphicsVRam": 32,
  "sound": "none",
  "keyboard": "usb-kbd",
  "keyboardLayout": "en-us",
  "mouse": "usb-mouse",
  "tablet": "none"
}
"#
    );
    assert_eq!(Machine::parse(written.as_bytes()).unwrap(), machine);
    // An explicit version 0 is the same format.
    let explicit = TEST_IMAGE_V0.replacen('{', r#"{"version": 0,"#, 1);
    assert_eq!(parse(&explicit).unwrap(), expected);
}

const SOUND_V0: &str = r#"{
  "uuid": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
  "memory": 4096,
  "cpu": {"threads": 2, "cores": 3, "sockets": 1},
  "network": {"device": "rtl8139", "mac": "02:00:00:00:00:01"},
  "keyboard": {"layout": "de-ch"},
  "sound": {"device": "hda-duplex", "controller": "ich9-intel-hda"}
}"#;

#[test]
fn version_0_keeps_cpus_memory_and_sound_and_always_picks_e1000() {
    let machine = parse(SOUND_V0).unwrap();
    let expected = Machine {
        threads: n(2),
        cores: n(3),
        sockets: n(1),
        memory: Some(mib(4096)),
        sound: Sound::HdaDuplexIch9IntelHda,
        ..migrated_minimal("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "02:00:00:00:00:01", KeyboardLayout::DeCh)
    };
    assert_eq!(machine, expected);
    assert_eq!(machine.network, NetworkDevice::E1000, "the version 0 device is dropped, as taskcluster-worker does");
}

#[test]
fn version_0_sound_devices_on_pci_keep_their_bare_name() {
    let v0 = |sound: &str| {
        format!(
            r#"{{"uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b", "network": {{"mac": "aa:54:1a:30:5c:de"}}, "keyboard": {{"layout": "en-us"}}, "sound": {sound}}}"#
        )
    };
    assert_eq!(parse(&v0(r#"{"device": "AC97", "controller": "pci"}"#)).unwrap().sound, Sound::Ac97);
    assert_eq!(parse(&v0(r#"{"device": "ES1370", "controller": "pci"}"#)).unwrap().sound, Sound::Es1370);
    assert_eq!(
        parse(&v0(r#"{"device": "hda-micro", "controller": "intel-hda"}"#)).unwrap().sound,
        Sound::HdaMicroIntelHda
    );
    assert_eq!(parse(&v0("null")).unwrap().sound, Sound::None);
    // AC97 on another controller, and an empty sound object, are no
    // version 1 sound device.
    for bad in [r#"{"device": "AC97", "controller": "intel-hda"}"#, "{}"] {
        match parse(&v0(bad)).unwrap_err() {
            MachineError::Migrating { from: 0, source } => {
                assert!(matches!(*source, MachineError::NotAllowed { field: "sound", .. }), "{bad}: {source:?}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let message = parse(&v0("{}")).unwrap_err().to_string();
    assert!(message.starts_with(r#"machine.json: "sound" is "/"; it must be one of "none", "AC97""#), "{message}");
    assert!(message.ends_with("(while migrating machine.json from version 0 to 1)"), "{message}");
}

#[test]
fn version_0_zero_counts_are_absent_and_unknown_keys_ignored() {
    let doc = r#"{
      "uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b",
      "memory": 0,
      "cpu": {"threads": 0, "cores": 0, "sockets": null, "speed": "fast"},
      "network": {"mac": "aa:54:1a:30:5c:de", "bridge": "br0"},
      "keyboard": {"layout": "en-us"},
      "display": "vnc"
    }"#;
    let expected = migrated_minimal("52bab607-10f1-4049-a0f8-ee4725cb715b", "aa:54:1a:30:5c:de", KeyboardLayout::EnUs);
    assert_eq!(parse(doc).unwrap(), expected);
}

fn migration_error(doc: &str) -> MachineError {
    match parse(doc).unwrap_err() {
        MachineError::Migrating { from: 0, source } => *source,
        other => panic!("{doc}: not a migration error: {other:?}"),
    }
}

#[test]
fn version_0_errors_name_the_field_and_say_they_came_from_migrating() {
    // taskcluster-worker's "invalid" version 0 test: network is a string.
    let invalid =
        r#"{"uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b", "network": "e1000", "keyboard": {"layout": "en-us"}}"#;
    let error = migration_error(invalid);
    assert!(matches!(error, MachineError::WrongType { field: "network", expected: "an object", .. }), "{error:?}");
    assert_eq!(
        parse(invalid).unwrap_err().to_string(),
        r#"machine.json: "network" is "e1000"; it must be an object (while migrating machine.json from version 0 to 1)"#
    );

    let base = serde_json::json!({
        "uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b",
        "network": {"device": "e1000", "mac": "aa:54:1a:30:5c:de"},
        "keyboard": {"layout": "en-us"},
    });
    let with = |path: &[&str], value: serde_json::Value| {
        let mut doc = base.clone();
        let mut at = &mut doc;
        for key in &path[..path.len() - 1] {
            at = at.as_object_mut().unwrap().entry(key.to_string()).or_insert_with(|| serde_json::json!({}));
        }
        match value {
            serde_json::Value::Null => at.as_object_mut().unwrap().remove(path[path.len() - 1]),
            value => at.as_object_mut().unwrap().insert(path[path.len() - 1].to_owned(), value),
        };
        migration_error(&doc.to_string())
    };
    use serde_json::json;
    assert!(matches!(with(&["uuid"], json!(null)), MachineError::MissingField { field: "uuid" }));
    assert!(matches!(with(&["network", "mac"], json!(null)), MachineError::MissingField { field: "network.mac" }));
    assert!(matches!(with(&["keyboard"], json!(null)), MachineError::MissingField { field: "keyboard.layout" }));
    assert!(matches!(with(&["uuid"], json!(5)), MachineError::WrongType { field: "uuid", .. }));
    assert!(matches!(with(&["uuid"], json!("nope")), MachineError::BadUuid { .. }));
    assert!(matches!(with(&["network", "device"], json!(1)), MachineError::WrongType { field: "network.device", .. }));
    assert!(matches!(with(&["network", "mac"], json!("00:0d:4b:ec:d6:18")), MachineError::BadMac { .. }));
    assert!(matches!(
        with(&["keyboard", "layout"], json!("klingon")),
        MachineError::NotAllowed { field: "keyboardLayout", .. }
    ));
    assert!(matches!(with(&["cpu"], json!(4)), MachineError::WrongType { field: "cpu", .. }));
    assert!(matches!(with(&["cpu", "threads"], json!("2")), MachineError::WrongType { field: "cpu.threads", .. }));
    assert!(matches!(with(&["cpu", "cores"], json!(1.5)), MachineError::WrongType { field: "cpu.cores", .. }));
    assert!(matches!(with(&["cpu", "threads"], json!(300)), MachineError::OutOfRange { field: "threads", .. }));
    assert!(matches!(with(&["cpu", "sockets"], json!(-1)), MachineError::OutOfRange { field: "sockets", .. }));
    assert!(matches!(with(&["memory"], json!(2_000_000)), MachineError::OutOfRange { field: "memory", .. }));
    assert!(matches!(with(&["sound"], json!("AC97")), MachineError::WrongType { field: "sound", .. }));
    assert!(matches!(with(&["sound", "device"], json!(7)), MachineError::WrongType { field: "sound.device", .. }));

    let message = parse(&json!({"uuid": "52bab607-10f1-4049-a0f8-ee4725cb715b", "network": {"mac": "aa:54:1a:30:5c:de"}, "keyboard": {"layout": "en-us"}, "cpu": {"threads": 300}}).to_string()).unwrap_err().to_string();
    assert_eq!(
        message,
        r#"machine.json: "threads" is 300; it must be 1 to 255 (while migrating machine.json from version 0 to 1)"#
    );
}

#[test]
fn random_macs_are_locally_administered_unicast_and_vary() {
    let macs: Vec<MacAddress> = (0..1000).map(|_| random_mac()).collect();
    for mac in &macs {
        let first = mac.octets()[0];
        assert_eq!(first & 0b10, 0b10, "{mac} is not locally administered");
        assert_eq!(first & 0b01, 0, "{mac} is not unicast");
        let text = mac.to_string();
        assert_eq!(text.len(), 17);
        assert!(
            text.bytes().enumerate().all(|(i, c)| if i % 3 == 2 {
                c == b':'
            } else {
                c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
            }),
            "{text}"
        );
        assert_eq!(text.parse::<MacAddress>().unwrap(), *mac);
    }
    assert!(macs.iter().any(|mac| *mac != macs[0]), "1000 random MACs all equal");
    // The other 46 bits are random, the first octet's upper bits included.
    let firsts: std::collections::HashSet<u8> = macs.iter().map(|mac| mac.octets()[0]).collect();
    assert!(firsts.len() > 16, "{firsts:?}");
}

#[test]
fn mac_address_constructor_checks_the_two_bits() {
    assert_eq!(MacAddress::new([0x02, 0, 0, 0, 0, 0]).unwrap().to_string(), "02:00:00:00:00:00");
    assert_eq!(MacAddress::new([0x03, 0, 0, 0, 0, 0]), Err(MacError::Multicast));
    assert_eq!(MacAddress::new([0x00, 0x0d, 0x4b, 0, 0, 0]), Err(MacError::Global));
}

#[test]
fn a_new_machine_is_valid_with_a_fresh_uuid_and_mac() {
    let machine = Machine::generate();
    assert_eq!(machine.uuid.version(), 4);
    assert_eq!(machine.uuid.to_string().as_bytes()[14], b'4');
    assert!(b"89ab".contains(&machine.uuid.to_string().as_bytes()[19]));
    assert_eq!(Machine::parse(&machine.to_json()).unwrap(), machine);
    assert_eq!(
        Machine { uuid: MachineUuid::DEFAULT, mac: MacAddress::DEFAULT, ..machine.clone() },
        Machine::defaults()
    );

    let other = Machine::generate();
    assert_ne!(other.uuid, machine.uuid);
    assert_ne!(other.mac, machine.mac);

    let mut sized = Machine::generate();
    sized.memory = Mib::new(8192);
    sized.threads = n(2);
    let json = sized.to_json();
    assert!(json.ends_with(b"}\n"));
    assert_eq!(Machine::parse(&json).unwrap(), sized);
}

#[test]
fn typed_fields_hold_only_valid_values() {
    assert_eq!(Mib::new(0), None);
    assert_eq!(Mib::new(Mib::MAX + 1), None);
    assert_eq!(Mib::new(Mib::MAX).unwrap().bytes(), 1 << 40);
    assert!(MachineUuid::from_bytes([0; 16]).is_none(), "nil UUID has no version");
    let v4 = MachineUuid::random();
    assert_eq!(MachineUuid::from_bytes(*v4.as_bytes()), Some(v4));
    assert_eq!(v4.to_string().parse::<MachineUuid>(), Ok(v4));
    assert_eq!(MachineUuid::DEFAULT.to_string(), "52bab607-10f1-4049-a0f8-ee4725cb715b");
    assert_eq!(FormatVersion::NUMBER, CURRENT_VERSION);
}
