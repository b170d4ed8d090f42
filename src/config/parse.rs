//! One TOML file's text → its raw mirror, with every mistake serde finds,
//! not only the first: each error is reported at its key's path and line,
//! the line is set aside, and the file is read again (up to
//! [`MAX_ERRORS`] times). A misspelt key or value gets the closest accepted
//! name ("did you mean"); `[sink]` written for `[[sink]]` is explained in
//! words. Environment variables are substituted first ([`interpolate`]).
//!
//! [`interpolate`]: super::interpolate

use std::path::Path;

use super::check::ConfigError;
use super::interpolate::{interpolate, key_at};

/// Most errors reported for one file.
pub const MAX_ERRORS: usize = 20;

/// Parses one TOML file into its raw mirror, or every error found.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, Vec<ConfigError>> {
    let mut text = interpolate(file, text, |name| std::env::var(name).ok())?;
    // Each error with its line, to report them in file order (serde's
    // order is its own); setting a line aside keeps every line's number.
    let mut errors: Vec<(usize, ConfigError)> = Vec::new();
    let in_order = |mut errors: Vec<(usize, ConfigError)>| {
        errors.sort_by_key(|(line, _)| *line);
        errors.into_iter().map(|(_, e)| e).collect()
    };
    loop {
        let err = match toml::from_str::<T>(&text) {
            Ok(raw) if errors.is_empty() => return Ok(raw),
            Ok(_) => return Err(in_order(errors)),
            Err(err) => err,
        };
        let found = Found::of(&err, &text);
        let line = found
            .at
            .map_or(usize::MAX, |at| text[..at].matches('\n').count());
        errors.push((line, found.error(file, &text)));
        // Another pass only past a mistake confined to one `key = value`
        // line (set aside), or a misspelt `type` (read as the name meant:
        // without a type, the rest of its table cannot be checked).
        match (found.retyped, found.line) {
            _ if errors.len() >= MAX_ERRORS => return Err(in_order(errors)),
            (Some((range, name)), _) => text.replace_range(range, &format!("\"{name}\"")),
            (None, Some(line)) => set_aside(&mut text, line),
            (None, None) => return Err(in_order(errors)),
        }
    }
}

/// One serde error, placed in the text.
struct Found {
    message: String,
    /// Byte offset of the key (or of what the error points at).
    at: Option<usize>,
    /// The line to set aside for the next pass: the error's own `key =
    /// value` line, if the mistake is confined to it.
    line: Option<usize>,
    /// A misspelt `type = "…"`'s value and the name meant.
    retyped: Option<(std::ops::Range<usize>, String)>,
    fix: String,
}

impl Found {
    fn of(err: &toml::de::Error, text: &str) -> Self {
        let message = err.message().trim().to_string();
        let span = err.span();
        // An unknown key inside a `type = …` table: serde points at the
        // table; the key itself is found on a line of that table.
        let unknown = backticked(&message, "unknown field `");
        let at = match (&unknown, &span) {
            (Some(key), Some(span)) => find_key(text, span.start, key).or(Some(span.start)),
            (_, Some(span)) => Some(span.start),
            _ => None,
        };
        let header = at.is_some_and(|at| text[at..].starts_with('['));
        let line_of = |at: usize| text[..at].matches('\n').count();
        let assignment = |line: usize| text.lines().nth(line).unwrap_or("").to_string();
        // A value serde refused in a `type` key: its table is checked no
        // further unless the value is read as the name meant.
        let is_type = at.is_some_and(|at| {
            let line = assignment(line_of(at));
            line.trim_start().starts_with("type") && line.contains('=')
        });
        let line = at
            .filter(|_| !header && !is_type)
            .map(line_of)
            .filter(|&line| one_line_assignment(&assignment(line)));
        let retyped = backticked(&message, "unknown variant `")
            .filter(|_| is_type)
            .and_then(|value| closest(&value, &expected_names(&message)))
            .zip(span.clone())
            .map(|(name, span)| (span, name));
        let fix = fix_for(&message, unknown.as_deref(), at.map(|at| &text[at..]));
        Self {
            message,
            at,
            line,
            retyped,
            fix,
        }
    }

    fn error(&self, file: &Path, text: &str) -> ConfigError {
        let key = self.at.map(|at| key_at(text, at)).unwrap_or_default();
        let message = if self.message.contains("expected a sequence") && self.fix.contains("[[") {
            "a single table where a list of tables is expected".to_string()
        } else {
            self.message.clone()
        };
        ConfigError::new(file, key, message, self.fix.clone())
    }
}

/// The fix a serde message calls for, with the closest accepted name.
fn fix_for(message: &str, unknown: Option<&str>, at: Option<&str>) -> String {
    let expected = expected_names(message);
    if let Some(key) = unknown {
        return match closest(key, &expected) {
            Some(name) => format!("did you mean `{name}`? (or remove the key)"),
            None => "remove the key or correct its spelling".into(),
        };
    }
    if let Some(value) = backticked(message, "unknown variant `") {
        return match closest(&value, &expected) {
            Some(name) => format!("did you mean \"{name}\"?"),
            None => "use one of the values listed".into(),
        };
    }
    if message.contains("expected a sequence") {
        if let Some(header) = at.filter(|t| t.starts_with('[') && !t.starts_with("[[")) {
            let name = header[1..].split(']').next().unwrap_or("").trim();
            return format!(
                "write [[{name}]] (two brackets) for each {name}: a pipeline may have several"
            );
        }
    }
    "see docs/configuration.md for the keys and their forms".into()
}

/// The text between `prefix` and the next backtick.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

/// The names after "expected one of" (or "expected `x`").
fn expected_names(message: &str) -> Vec<String> {
    let Some(i) = message.find("expected") else {
        return Vec::new();
    };
    message[i..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The accepted name closest to `given`, if it is close enough to be a typo.
fn closest(given: &str, names: &[String]) -> Option<String> {
    names
        .iter()
        .map(|n| (strsim::damerau_levenshtein(given, n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.clone())
}

/// Where `key = …` starts on a line of the table that starts at `start`
/// (serde's span of a table may cover its header only). In an array of
/// tables it is the first such line: a key misspelt in two `[[sink]]`s is
/// reported once per pass, each pass setting one aside.
fn find_key(text: &str, start: usize, key: &str) -> Option<usize> {
    let mut offset = start;
    // An array of tables' span starts at its first `[[name]]`: the key may
    // be in any of them.
    let first = text[start..].lines().next().unwrap_or("").trim();
    for (i, line) in text[start..].split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if i > 0
            && trimmed.starts_with('[')
            && !(first.starts_with("[[") && trimmed.trim_end() == first)
        {
            return None;
        }
        let bare = trimmed.trim_start_matches('"');
        if bare.starts_with(key) {
            let after = bare[key.len()..].trim_start_matches('"').trim_start();
            if after.starts_with('=') {
                return Some(offset + (line.len() - trimmed.len()));
            }
        }
        offset += line.len();
    }
    None
}

/// Whether `line` is a whole `key = value` (its brackets and braces closed,
/// no multi-line string begun), so setting it aside leaves valid TOML.
fn one_line_assignment(line: &str) -> bool {
    let code = line.split(" #").next().unwrap_or(line);
    code.contains('=')
        && !code.trim_start().starts_with('[')
        && !code.contains("\"\"\"")
        && !code.contains("'''")
        && code.matches('[').count() == code.matches(']').count()
        && code.matches('{').count() == code.matches('}').count()
}

/// Replaces line `n` (0-based) by a comment, keeping every line's number.
fn set_aside(text: &mut String, n: usize) {
    let start = text
        .split_inclusive('\n')
        .take(n)
        .map(str::len)
        .sum::<usize>();
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    text.replace_range(start..end, "# (set aside by check)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Batch {
        max_events: Option<u64>,
        max_bytes: Option<String>,
        max_age: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Raw {
        name: Option<String>,
        batch: Option<Batch>,
        sink: Option<Vec<toml::Table>>,
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        parse_toml::<Raw>(Path::new("p.toml"), text).unwrap_err()
    }

    #[test]
    fn every_misspelt_key_is_reported_with_its_line_and_the_name_meant() {
        let e =
            errors("nmae = \"x\"\n[batch]\nmax_evnets = 10\nmax_byts = \"1MiB\"\nmax_age = 5\n");
        assert_eq!(e.len(), 4, "{e:#?}");
        assert_eq!(e[0].key, "nmae (line 1)");
        assert!(e[0].fix.contains("did you mean `name`"), "{e:#?}");
        assert_eq!(e[1].key, "batch.max_evnets (line 3)");
        assert!(e[1].fix.contains("`max_events`"));
        assert_eq!(e[2].key, "batch.max_byts (line 4)");
        assert!(e[2].fix.contains("`max_bytes`"));
        assert_eq!(e[3].key, "batch.max_age (line 5)");
        assert!(e[3].problem.contains("invalid type"), "{e:#?}");
    }

    #[test]
    fn a_single_table_for_a_list_is_explained() {
        let e = errors("name = \"x\"\n[sink]\ntype = \"parquet\"\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].fix.contains("[[sink]]"), "{e:#?}");
        assert!(e[0].key.contains("line 2"), "{e:#?}");
    }

    #[test]
    fn a_clean_file_parses() {
        let raw: Raw = parse_toml(
            Path::new("p.toml"),
            "name = \"x\"\n[[sink]]\ntype = \"parquet\"\n",
        )
        .unwrap();
        assert_eq!(raw.name.as_deref(), Some("x"));
    }
}
