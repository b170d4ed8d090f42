//! The environment variables a valid configuration names (secrets and
//! credentials are never written in the files): `tributary check` reports
//! each one that is not set as an error, with the file and key that name it
//! and what `run` does without it. Validation stays pure; this is the one
//! place the configuration asks about the environment, through a lookup
//! the caller passes.

use std::path::Path;

use super::log::LogSpec;
use super::{Config, ConfigError};

/// What `run` does without a webhook's, sink's or the server's variable.
const RUN_REFUSES: &str = "`tributary run` does not start without it";
/// What the connections' key is for.
const SEALS: &str = "connections' credentials are sealed with it (`tributary connections keygen` prints one); `tributary run` does not start without it";
/// What `run` does without a poll source's credential.
const POLL_FAILS: &str =
    "until it is, the pipeline's poll runs fail (`tributary run` starts the other pipelines)";

/// Every variable `config` names for which `is_set` is false, as an error
/// naming file, key and variable.
pub fn unset(config: &Config, is_set: impl Fn(&str) -> bool) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut need = |file: &Path, key: String, var: &str, without: &str| {
        if !is_set(var) {
            errors.push(ConfigError::new(
                file,
                key,
                format!("env var {var} is not set"),
                format!("export it; secrets are read only from the environment, and {without}"),
            ));
        }
    };
    let global = &config.global;
    if let Some(var) = &global.server.admin_token_env {
        need(&global.file, "admin.token_env".into(), var, RUN_REFUSES);
    }
    if let LogSpec::JetStream(js) = &global.log {
        for (key, var) in [
            ("log.user_env", &js.user_env),
            ("log.password_env", &js.password_env),
            ("log.token_env", &js.token_env),
        ] {
            if let Some(var) = var {
                need(&global.file, key.into(), var, RUN_REFUSES);
            }
        }
    }
    for p in &config.pipelines {
        if let Some(connections) = &p.connections {
            let var = crate::connections::seal::KEY_ENV;
            need(&p.file, "connections".into(), var, SEALS);
            if let Some(notify) = &connections.notify {
                let key = "connections.notify.secret_env".into();
                need(&p.file, key, &notify.secret_env, RUN_REFUSES);
            }
        }
        // A webhook without its secret does not start; a poll source
        // starts and fails each run.
        let fails = if p.source.kind().needs_leader() {
            POLL_FAILS
        } else {
            RUN_REFUSES
        };
        for (key, var) in p.source.kind().secret_envs() {
            need(&p.file, format!("source.{key}"), var, fails);
        }
        for (i, sink) in p.sinks.iter().enumerate() {
            for (key, var) in sink.kind().secret_envs() {
                need(&p.file, format!("sink[{i}].{key}"), var, RUN_REFUSES);
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, Paths};

    #[test]
    fn every_variable_the_shipped_files_name_is_reported_when_unset() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = load(&Paths {
            config: Some(root.join("tributary.toml")),
            pipelines: None,
            files: Vec::new(),
        })
        .expect("the shipped files are valid");
        let errors: Vec<String> = unset(&config, |_| false)
            .iter()
            .map(ToString::to_string)
            .collect();
        for expected in [
            "hubspot_contacts.toml: source.auth: env var HUBSPOT_TOKEN is not set; export it",
            "shopify_products.toml: source.auth: env var SHOPIFY_ACCESS_TOKEN is not set",
            "netsuite_customers.toml: source.auth: env var NETSUITE_TOKEN_SECRET is not set",
            "magento_products.toml: source.auth: env var MAGENTO_CONSUMER_KEY is not set",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{expected:?} missing from {errors:#?}"
            );
        }
        assert!(errors
            .iter()
            .all(|e| e.contains("the pipeline's poll runs fail")));
        // Set, nothing is reported.
        assert!(unset(&config, |_| true).is_empty());
        // Only what is unset is named.
        let one: Vec<String> = unset(&config, |var| var != "HUBSPOT_TOKEN")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(one.len(), 1, "{one:#?}");
    }

    #[test]
    fn webhook_secrets_sink_credentials_and_the_admin_token_are_named_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        std::fs::create_dir(dir.path().join("pipelines")).unwrap();
        write("tributary.toml", "[admin]\ntoken_env = \"ADMIN_TOKEN\"\n");
        write(
            "pipelines/hooks.toml",
            r#"name = "hooks"
schema = "infer"

[source]
type = "webhook"
path = "/hooks/a"
verify = { scheme = "slack", secret_env = ["SLACK_NEW", "SLACK_OLD"] }

[[sink]]
type = "parquet"
uri = "s3://lake/hooks"
storage = { region = "us-east-1", access_key_id_env = "LAKE_KEY_ID", secret_access_key_env = "LAKE_SECRET" }

[[sink]]
type = "https"
url = "https://example.com/hook"
signing = { scheme = "standard-webhooks", secret_env = "SIGNING_SECRET" }
"#,
        );
        let config = load(&Paths {
            config: Some(dir.path().join("tributary.toml")),
            pipelines: None,
            files: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("{e:#?}"));
        let errors: Vec<String> = unset(&config, |var| var == "SLACK_NEW")
            .iter()
            .map(ToString::to_string)
            .collect();
        let file = |name: &str| dir.path().join(name).display().to_string();
        assert_eq!(
            errors,
            [
                format!("{}: admin.token_env: env var ADMIN_TOKEN is not set; export it; secrets are read only from the environment, and `tributary run` does not start without it", file("tributary.toml")),
                format!("{}: source.verify.secret_env: env var SLACK_OLD is not set; export it; secrets are read only from the environment, and `tributary run` does not start without it", file("pipelines/hooks.toml")),
                format!("{}: sink[0].storage.access_key_id_env: env var LAKE_KEY_ID is not set; export it; secrets are read only from the environment, and `tributary run` does not start without it", file("pipelines/hooks.toml")),
                format!("{}: sink[0].storage.secret_access_key_env: env var LAKE_SECRET is not set; export it; secrets are read only from the environment, and `tributary run` does not start without it", file("pipelines/hooks.toml")),
                format!("{}: sink[1].signing: env var SIGNING_SECRET is not set; export it; secrets are read only from the environment, and `tributary run` does not start without it", file("pipelines/hooks.toml")),
            ]
        );
    }
}
