//! Disk sizes as people write them: `20G`, `512M`, `1TiB`, `4096`, and as
//! they read them: `1.5 GiB`.
//!
//! Read: a whole number of bytes, optionally followed by K, M, G, T or P, which
//! may be followed by `iB` or `B`, in any case. The units are binary, as in
//! qemu-img: `1K`, `1KB` and `1KiB` all mean 1024 bytes. A bare `B` means
//! bytes. Fractions, signs and inner spaces are refused, and so is anything
//! that does not fit in 64 bits.

use crate::error::{Error, Result};

/// The unit letters, each 1024 times the one before, starting at 1024.
const UNITS: &str = "kmgtp";

const MALFORMED: &str = "expected a whole number of bytes, optionally followed by K, M, G, T or P (1K = 1024)";
const BAD_UNIT: &str = "unknown unit: use K, M, G, T or P (1K = 1024), optionally followed by iB or B";
const TOO_LARGE: &str = "larger than 2^64 - 1 bytes";

/// Parses a size such as `20G` into bytes.
pub fn parse_size(input: &str) -> Result<u64> {
    let invalid = |problem| Error::InvalidSize { input: input.to_owned(), problem };
    let text = input.trim();
    let (digits, suffix) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    if digits.is_empty() || !suffix.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(invalid(MALFORMED));
    }
    let multiplier = unit_multiplier(suffix).ok_or_else(|| invalid(BAD_UNIT))?;
    let count: u64 = digits.parse().map_err(|_| invalid(TOO_LARGE))?;
    count.checked_mul(multiplier).ok_or_else(|| invalid(TOO_LARGE))
}

/// `bytes` for people: binary units, three significant digits, as
/// qemu-img prints them (`3.26 MiB`, `1.5 GiB`, `200 MiB`).
pub fn format_size(bytes: u64) -> String {
    const NAMES: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < NAMES.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = match value {
        v if unit == 0 || v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    let number = format!("{value:.decimals$}");
    let number = if number.contains('.') { number.trim_end_matches('0').trim_end_matches('.') } else { &number };
    format!("{number} {}", NAMES[unit])
}

/// The bytes one `suffix` stands for: 1 for none or `B`, 1024 for `K`,
/// `KB` or `KiB`, and so on; None for anything else.
fn unit_multiplier(suffix: &str) -> Option<u64> {
    let suffix = suffix.to_ascii_lowercase();
    if suffix.is_empty() || suffix == "b" {
        return Some(1);
    }
    let mut chars = suffix.chars();
    let power = UNITS.find(chars.next()?)? as u32 + 1;
    matches!(chars.as_str(), "" | "b" | "ib").then(|| 1u64 << (10 * power))
}

#[cfg(test)]
mod tests {
    use super::{format_size, parse_size};

    const GIB: u64 = 1 << 30;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512B").unwrap(), 512);
        assert_eq!(parse_size(" 007 ").unwrap(), 7);
        assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
    }

    #[test]
    fn suffixes_are_binary_and_case_insensitive() {
        for text in ["20G", "20g", "20GB", "20gb", "20GiB", "20gib", "20Gib"] {
            assert_eq!(parse_size(text).unwrap(), 20 * GIB, "{text}");
        }
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("3M").unwrap(), 3 << 20);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert_eq!(parse_size("1PiB").unwrap(), 1 << 50);
        assert_eq!(parse_size("16383P").unwrap(), 16383 << 50);
    }

    #[test]
    fn formats_binary_units_with_three_significant_digits() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
        assert_eq!(format_size(3_416_064), "3.26 MiB");
        assert_eq!(format_size(200 << 20), "200 MiB");
    }

    #[test]
    fn overflow_is_refused() {
        for text in ["16384P", "18446744073709551616", "99999999999999999999999K", "17179869184G"] {
            let err = parse_size(text).unwrap_err().to_string();
            assert!(err.contains("larger than 2^64 - 1 bytes") && err.contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn malformed_sizes_name_the_input_and_the_problem() {
        for text in ["", " ", "G", "-1", "+5", "1.5G", "0x10", "20 G", "5é", "iB"] {
            let err = parse_size(text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid size {text:?}: expected a whole number")), "{text}: {err}");
        }
        for text in ["20X", "20E", "20iB", "20KK", "20Kibi", "20Bi"] {
            let err = parse_size(text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid size {text:?}: unknown unit")), "{text}: {err}");
        }
    }
}
