//! Memory sizes on the command line (`wasmsched memory --to 6G`).

/// Largest memory size accepted, in MiB (1 EiB, the engine's limit for a memory amount).
const MAX_MEMORY_MB: u64 = 1 << 40;

/// Parses a memory size for the CLI: a whole number of MiB, optionally with a binary
/// suffix (`M`/`MiB`/`MB` = MiB, `G`/`GiB`/`GB` = 1024 MiB, `T`/`TiB`/`TB` = 1024 GiB;
/// case-insensitive). `4096`, `4096M` and `4G` are the same size.
pub fn parse_size_mb(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let bad = |why: &str| {
        format!(
            "memory size {text:?}: {why} (expected a whole number of MiB, optionally with a \
             suffix M, G or T: 4096, 4096M, 4G)"
        )
    };
    if digits.is_empty() {
        return Err(bad("no number"));
    }
    let number: u64 = digits.parse().map_err(|_| bad("number too large"))?;
    let scale: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => return Err(bad(&format!("unknown suffix {suffix:?}"))),
    };
    let mb = number
        .checked_mul(scale)
        .filter(|&mb| mb <= MAX_MEMORY_MB)
        .ok_or_else(|| bad(&format!("larger than {MAX_MEMORY_MB} MiB")))?;
    Ok(mb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes_and_bad_ones_name_the_value() {
        let ok = [
            ("4096", 4096),
            ("4096M", 4096),
            ("4096MiB", 4096),
            ("4G", 4096),
            ("4gib", 4096),
            ("1T", 1 << 20),
            (" 512 ", 512),
        ];
        for (text, mb) in ok {
            assert_eq!(parse_size_mb(text).unwrap(), mb, "{text}");
        }
        for (text, why) in [
            ("1.5G", "unknown suffix \".5G\""),
            ("", "no number"),
            ("G", "no number"),
            ("4K", "unknown suffix \"K\""),
            ("99999999999T", "larger than"),
        ] {
            let err = parse_size_mb(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
    }
}
