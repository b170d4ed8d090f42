//! `${NAME}` and `${NAME:-default}` in the configuration files, from the
//! environment, before the TOML is parsed; `$$` is a literal `$`, and a `$`
//! followed by anything else stays as it is (`$.data` paths, `$ref`).
//!
//! Substitution knows where it is in the TOML text:
//! * inside a `"…"` (or `"""…"""`) string the value is escaped as that
//!   string needs (`"`, `\` and control characters), so a value can never
//!   end the string or add a key;
//! * inside a `'…'` literal string, which has no escapes, a value holding
//!   `'` or a line break is refused (write the value in a `"…"` string);
//! * outside strings (`max_events = ${MAX_EVENTS}`) the value is inserted
//!   as it is, and must then be a TOML value itself;
//! * comments are left alone.
//!
//! An unset variable without a default is an error naming the file, the
//! key, its line and the variable. Secrets keep their `*_env` keys: the
//! value of a secret never enters a file's text.

use std::path::Path;

use super::check::ConfigError;

/// Where the scanner is in the TOML text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Bare,
    Basic,
    MultiBasic,
    Literal,
    MultiLiteral,
    Comment,
}

/// `text` with every `${…}` replaced from `env`; every problem found.
pub fn interpolate(
    file: &Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut at = At::Bare;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let c = rest.chars().next().expect("in bounds");
        match (at, c) {
            (At::Comment, '\n') => at = At::Bare,
            (At::Comment, _) => {}
            (At::Bare, '#') => at = At::Comment,
            (At::Bare, '"') if rest.starts_with("\"\"\"") => {
                out.push_str("\"\"\"");
                i += 3;
                at = At::MultiBasic;
                continue;
            }
            (At::Bare, '"') => at = At::Basic,
            (At::Bare, '\'') if rest.starts_with("'''") => {
                out.push_str("'''");
                i += 3;
                at = At::MultiLiteral;
                continue;
            }
            (At::Bare, '\'') => at = At::Literal,
            (At::Basic | At::MultiBasic, '\\') => {
                // An escape: the next character is part of it.
                let next = rest[1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&rest[..1 + next]);
                i += 1 + next;
                continue;
            }
            (At::Basic, '"') | (At::Literal, '\'') => at = At::Bare,
            (At::MultiBasic, '"') if rest.starts_with("\"\"\"") => {
                out.push_str("\"\"\"");
                i += 3;
                at = At::Bare;
                continue;
            }
            (At::MultiLiteral, '\'') if rest.starts_with("'''") => {
                out.push_str("'''");
                i += 3;
                at = At::Bare;
                continue;
            }
            (At::Basic | At::Literal, '\n') => at = At::Bare,
            (_, '$') if at != At::Comment && rest.starts_with("$$") => {
                out.push('$');
                i += 2;
                continue;
            }
            (_, '$') if at != At::Comment && rest.starts_with("${") => {
                let problem = |problem: String, fix: &str| {
                    ConfigError::new(file, key_at(text, i), problem, fix)
                };
                let line_end = rest.find('\n').unwrap_or(rest.len());
                let Some(close) = rest[..line_end].find('}') else {
                    errors.push(problem(
                        "\"${\" without a closing \"}\"".into(),
                        "write ${NAME} or ${NAME:-default}, or $$ for a literal $",
                    ));
                    out.push_str(&rest[..line_end]);
                    i += line_end;
                    continue;
                };
                let inner = &rest[2..close];
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (inner, None),
                };
                let value = if !valid_name(name) {
                    errors.push(problem(
                        format!("${{{inner}}} does not name an environment variable"),
                        "a name is letters, digits and _, not starting with a digit",
                    ));
                    None
                } else {
                    match (env(name), default) {
                        (Some(v), _) => Some(v),
                        (None, Some(d)) => Some(d.to_string()),
                        (None, None) => {
                            errors.push(problem(
                                format!("the environment variable {name} is not set"),
                                &format!("export {name}, or give a default: ${{{name}:-…}}"),
                            ));
                            None
                        }
                    }
                };
                if let Some(value) = value {
                    match at {
                        At::Basic | At::MultiBasic => escape_basic(&value, &mut out),
                        At::Literal | At::MultiLiteral
                            if value.contains('\'')
                                || (at == At::Literal && value.contains(['\n', '\r'])) =>
                        {
                            errors.push(problem(
                                format!("the value of {name} holds a quote or a line break, which a '…' string cannot"),
                                "write the value in a \"…\" string",
                            ));
                        }
                        _ => out.push_str(&value),
                    }
                }
                i += close + 1;
                continue;
            }
            _ => {}
        }
        out.push(c);
        i += c.len_utf8();
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `value` as the inside of a `"…"` string.
fn escape_basic(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
}

/// The dotted key the byte `at` of `text` belongs to (`sink[1].uri`), with
/// its line, for a message: the last table header before it and the key
/// its line assigns.
pub(super) fn key_at(text: &str, at: usize) -> String {
    let before = &text[..at];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.contains(['[', '{']));
    // The table the line is in, counting arrays of tables.
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    // The line itself may be the header.
    let through = if line.trim_start().starts_with('[') {
        line_start + line.len()
    } else {
        line_start
    };
    for header in text[..through].lines().map(str::trim) {
        if let Some(name) = header.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let path = match (table.is_empty(), key) {
        (_, None) => table,
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
    };
    if path.is_empty() {
        format!("line {line_no}")
    } else {
        format!("{path} (line {line_no})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "BUCKET" => Some("my-bucket".into()),
            "MAX" => Some("500".into()),
            "QUOTE" => Some("a\"b\\c\nd".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, Vec<ConfigError>> {
        interpolate(Path::new("p.toml"), text, env)
    }

    #[test]
    fn set_defaulted_and_literal() {
        let text = "uri = \"s3://${BUCKET}/x\"\nmax_events = ${MAX}\nregion = \"${REGION:-us-east-1}\"\nprice = \"$$5 and $.data\"\n";
        assert_eq!(
            run(text).unwrap(),
            "uri = \"s3://my-bucket/x\"\nmax_events = 500\nregion = \"us-east-1\"\nprice = \"$5 and $.data\"\n"
        );
        let parsed: toml::Table = toml::from_str(&run(text).unwrap()).unwrap();
        assert_eq!(parsed["max_events"].as_integer(), Some(500));
    }

    #[test]
    fn a_value_cannot_end_its_string() {
        let out = run("a = \"${QUOTE}\"\n").unwrap();
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["a"].as_str(), Some("a\"b\\c\nd"));
        assert_eq!(out.lines().count(), 1, "line numbers stay");
        // A literal string has no escapes: refused, with the fix.
        let errors = run("a = '${QUOTE}'\n").unwrap_err();
        assert!(errors[0].problem.contains("QUOTE"), "{:?}", errors);
    }

    #[test]
    fn comments_are_left_alone() {
        assert_eq!(run("# ${UNSET}\na = 1\n").unwrap(), "# ${UNSET}\na = 1\n");
    }

    #[test]
    fn each_unset_variable_is_named_with_its_key_and_line() {
        let text = "name = \"x\"\n[source]\nurl = \"${API_URL}\"\n[[sink]]\ntype = \"parquet\"\n[[sink]]\nuri = \"${LAKE}/t\"\n";
        let errors = run(text).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].key, "source.url (line 3)");
        assert!(errors[0].problem.contains("API_URL"));
        assert!(errors[0].fix.contains("${API_URL:-"));
        assert_eq!(errors[1].key, "sink[1].uri (line 7)");
        let bad = run("a = \"${1X}\"\nb = \"${OPEN\"\n").unwrap_err();
        assert_eq!(bad.len(), 2, "{bad:?}");
    }
}
