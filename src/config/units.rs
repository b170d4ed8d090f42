//! Sizes (`"64MiB"`) and durations (`"30s"`) as written in TOML.

use std::time::Duration;

/// A size or duration that does not parse; the message says what to write.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// No number in front.
    #[error("\"{0}\" is not a size; write a number and a unit such as \"64MiB\"")]
    NotSize(String),
    /// A unit no one knows.
    #[error("unknown size unit \"{0}\"; use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB")]
    SizeUnit(String),
    /// More bytes than a `u64` holds.
    #[error("\"{0}\" is out of range")]
    SizeRange(String),
    /// Not a duration.
    #[error("\"{text}\" is not a duration ({source}); write e.g. \"30s\", \"5m\" or \"250ms\"")]
    NotDuration {
        /// The text as written.
        text: String,
        /// What humantime said.
        source: humantime::DurationError,
    },
}

/// Parses a byte size: a number with an optional unit (`B`, `KB`, `KiB`, `MB`,
/// `MiB`, `GB`, `GiB`, `TB`, `TiB`; case-insensitive, space allowed).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| UnitError::NotSize(text.to_string()))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(UnitError::SizeUnit(other.to_string())),
    };
    let bytes = number * multiplier as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(UnitError::SizeRange(text.to_string()));
    }
    Ok(bytes as u64)
}

/// Parses a duration such as `"30s"`, `"5m"`, `"1h 30m"` or `"250ms"`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(text.trim()).map_err(|source| UnitError::NotDuration {
        text: text.to_string(),
        source,
    })
}

/// Formats a byte count the way a person would write it in TOML.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("10 KB").unwrap(), 10_000);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .to_string()
            .contains("unknown size unit"));
        assert!(parse_size("MiB").is_err());
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }
}
