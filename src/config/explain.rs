//! `tributary check --explain`: the effective configuration, every default
//! filled in, as TOML a person can read next to their files. It is the specs'
//! own `Serialize` form ([`GlobalSpec`](super::GlobalSpec),
//! [`PipelineSpec`], each kind's spec), so a new key cannot be forgotten
//! here. Secrets appear only as the names of their env vars (the spec holds
//! nothing else).

use super::spec::{Config, PipelineSpec};

/// The effective configuration as TOML: `tributary.toml` first, then each
/// pipeline file under a comment naming it.
pub fn explain(config: &Config) -> String {
    let mut out = String::from("# tributary.toml (effective)\n");
    out.push_str(&as_toml(&config.global));
    for p in &config.pipelines {
        out.push_str(&format!("\n# {} (effective)\n", p.file.display()));
        out.push_str(&as_toml::<PipelineSpec>(p));
    }
    out
}

/// TOML text of a spec, by way of a `toml::Value` (which orders plain
/// keys before tables, as TOML needs).
pub fn as_toml<T: serde::Serialize>(spec: &T) -> String {
    toml::Value::try_from(spec)
        .and_then(|v| toml::to_string(&v))
        .unwrap_or_else(|e| format!("# cannot show: {e}\n"))
}
