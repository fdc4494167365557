//! Parses arbitrary bytes as `machine.json`. Any error is fine; a panic,
//! an abort, a hang or a huge allocation is a bug. A definition that
//! parses must write out (`to_json`) as a file that parses back to the
//! same definition and writes out byte for byte the same again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmimg_bundle::machine::Machine;

fuzz_target!(|data: &[u8]| {
    let Ok(machine) = Machine::parse(data) else { return };
    let json = machine.to_json();
    let again = match Machine::parse(&json) {
        Ok(again) => again,
        Err(e) => panic!("to_json wrote a file parse refuses: {e}\n{}", String::from_utf8_lossy(&json)),
    };
    assert_eq!(again, machine, "the written file parses to another definition");
    assert_eq!(again.to_json(), json, "writing is not stable");
});
