//! `{connection}` and `{params.NAME}` in a connections pipeline's poll
//! source (`url`, `query` values, `headers` values, `body` strings): filled
//! in per connection from its id and params. Other `{…}` (`{cursor}`) are
//! left for the poll source. A value put into a URL may not hold `/`, `?`,
//! `#`, `@`, `%`, `\`, whitespace or control characters, so a param can name
//! a shop or an account but never change where the request goes otherwise.

use std::collections::BTreeMap;

const CONNECTION: &str = "{connection}";
const PARAMS: &str = "{params.";

/// Whether `text` holds a connection placeholder.
pub fn holds_placeholders(text: &str) -> bool {
    text.contains(CONNECTION) || text.contains(PARAMS)
}

/// The param names `text` uses, in order of first use.
pub fn params(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(PARAMS) {
        rest = &rest[at + PARAMS.len()..];
        let Some(end) = rest.find('}') else { break };
        let name = rest[..end].to_string();
        if !names.contains(&name) {
            names.push(name);
        }
        rest = &rest[end..];
    }
    names
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks the placeholders of `text`; returns it with each filled by an
/// example value (for checking a URL's shape).
pub fn check(text: &str) -> Result<String, String> {
    let mut rest = text;
    while let Some(at) = rest.find(PARAMS) {
        rest = &rest[at + PARAMS.len()..];
        let end = rest
            .find('}')
            .ok_or_else(|| "a {params. placeholder is not closed with }".to_string())?;
        if !valid_name(&rest[..end]) {
            return Err(format!("{{params.{}}} is not a param name", &rest[..end]));
        }
    }
    let example: BTreeMap<String, String> = params(text)
        .into_iter()
        .map(|name| (name, "x0".to_string()))
        .collect();
    fill(text, "x0", &example, true)
}

/// `text` with `{connection}` as `id` and `{params.NAME}` as the connection's
/// param NAME; `in_url` refuses values that could change the URL's shape.
pub fn fill(
    text: &str,
    id: &str,
    params: &BTreeMap<String, String>,
    in_url: bool,
) -> Result<String, String> {
    let safe = |name: &str, value: &str| {
        if in_url
            && value.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '/' | '?' | '#' | '@' | '%' | '\\')
            })
        {
            Err(format!(
                "param {name} holds a character that cannot go into the URL (/ ? # @ % \\ or whitespace)"
            ))
        } else {
            Ok(())
        }
    };
    let mut out = text.replace(CONNECTION, id);
    for name in self::params(text) {
        let value = params
            .get(&name)
            .ok_or_else(|| format!("the connection has no param {name}"))?;
        safe(&name, value)?;
        out = out.replace(&format!("{{params.{name}}}"), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_from_the_connection_and_refuse_what_would_move_the_url() {
        let url = "https://{params.shop}.myshopify.com/admin/{connection}/c.json?a={params.shop}";
        assert!(holds_placeholders(url) && !holds_placeholders("https://a/{cursor}"));
        assert_eq!(params(url), vec!["shop"]);
        let params: BTreeMap<String, String> = [("shop".to_string(), "acme-1".to_string())].into();
        assert_eq!(
            fill(url, "c1", &params, true).unwrap(),
            "https://acme-1.myshopify.com/admin/c1/c.json?a=acme-1"
        );
        assert!(check(url).unwrap().starts_with("https://x0.myshopify.com/"));
        let evil: BTreeMap<String, String> =
            [("shop".to_string(), "evil.com/x?".to_string())].into();
        assert!(fill(url, "c1", &evil, true).is_err());
        assert!(
            fill(url, "c1", &evil, false).is_ok(),
            "a header may hold it"
        );
        let e = fill(url, "c1", &BTreeMap::new(), true).unwrap_err();
        assert!(e.contains("shop"), "{e}");
        assert!(check("https://{params.a b}.x").is_err());
        assert!(check("https://{params.shop.x").is_err());
    }
}
