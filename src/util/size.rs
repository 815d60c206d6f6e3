//! Sizes as people write them on command lines: `4096`, `4k`, `1G`.
//!
//! One syntax for every size argument of the daemon and of the benchmark, binary multiples as
//! QEMU and fio read them.

/// Parses a positive byte count with an optional binary suffix (K, M, G, T, any case).
pub fn parse(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown suffix '{c}'; use K, M, G or T")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size; write e.g. 1073741824 or 1G"))?;
    n.checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a usable size"))
}

/// The shortest way to write `bytes` that [`parse`] reads back: `4k`, `1M`, `1536`.
pub fn label(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}k", b >> 10),
        b => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary_multiples() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("4k"), Ok(4096));
        assert_eq!(parse(" 1G "), Ok(1 << 30));
        assert_eq!(parse("2t"), Ok(2 << 40));
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert!(parse("0").unwrap_err().contains("usable"));
        assert!(parse("4x").unwrap_err().contains("suffix"));
        assert!(parse("k").unwrap_err().contains("not a size"));
        assert!(parse("16777216T").unwrap_err().contains("usable"));
    }

    #[test]
    fn labels_read_back() {
        for bytes in [512, 1536, 4096, 65536, 1 << 20, 3 << 30] {
            assert_eq!(parse(&label(bytes)), Ok(bytes), "{}", label(bytes));
        }
        assert_eq!(label(4096), "4k");
        assert_eq!(label(1 << 20), "1M");
    }
}
