//! GitHub: repository or organisation hooks (REST).

use std::fmt::Write as _;

use reqwest::Method;
use serde_json::{json, Value};

use super::{list, same_set, sort_out, Api, Body, RegisterError, Request};
use crate::config::spec::PipelineSpec;

/// A hook's delivery URL.
pub(super) fn hook_url(hook: &Value) -> Option<&str> {
    hook["config"]["url"].as_str()
}

pub(super) async fn github(
    api: &mut Api,
    pipeline: &PipelineSpec,
    path: &str,
    url: Option<&str>,
    req: &Request,
    secret_env: &str,
) -> Result<(), RegisterError> {
    let hooks = match (&req.repo, &req.org) {
        (Some(repo), None) if repo.split('/').count() == 2 => format!("/repos/{repo}/hooks"),
        (None, Some(org)) => format!("/orgs/{org}/hooks"),
        _ => return Err(RegisterError::Usage(
            "GitHub: add --repo OWNER/NAME (repository hooks) or --org ORG (organisation hooks)"
                .into(),
        )),
    };
    let existing = api
        .send(Method::GET, &format!("{hooks}?per_page=100"), None)
        .await?
        .unwrap_or_default();
    let hooks_list = existing.as_array().cloned().unwrap_or_default();
    let sorted = sort_out(&hooks_list, hook_url, path, url);
    let mine = sorted.mine;
    let Some(url) = url else {
        list(
            api,
            mine.iter().map(|h| {
                format!(
                    "GitHub hook {}: {} events={} active={}",
                    h["id"],
                    hook_url(h).unwrap_or(""),
                    h["events"],
                    h["active"]
                )
            }),
        );
        return Ok(());
    };
    let events: Vec<String> = if req.events.is_empty() {
        vec!["*".into()]
    } else {
        req.events.clone()
    };
    if req.connection.is_some() && req.secret.is_none() && secret_env.is_empty() {
        return Err(RegisterError::Usage("the connection has no \"secret\": PATCH its credentials with one of your choosing (GitHub signs with it, tributary verifies with it)".into()));
    }
    let secret = req.secret.clone().or_else(|| std::env::var(secret_env).ok()).filter(|s| !s.is_empty()).ok_or(RegisterError::Env {
        var: secret_env.to_string(),
        what: "the webhook secret (source.verify.secret_env): GitHub signs with it, tributary verifies with it",
    })?;
    let config = json!({"url": url, "content_type": "json", "insecure_ssl": "0", "secret": secret});
    match mine.first() {
        None => {
            let body = json!({"name": "web", "active": true, "events": events, "config": config});
            if let Some(created) = api
                .send(Method::POST, &hooks, Some(Body::Json(body)))
                .await?
            {
                let _ = writeln!(
                    api.out,
                    "created: GitHub hook {} for pipeline {} → {url} (events {})",
                    created["id"],
                    pipeline.name,
                    events.join(",")
                );
            }
            for other in &sorted.others {
                let _ = writeln!(api.out, "note: GitHub hook {} delivers to {}, whose path also ends with {path}; it is left as it is (if it is this pipeline's old address, delete it)", other["id"], hook_url(other).unwrap_or(""));
            }
        }
        Some(hook) => {
            let same_events = hook["events"].as_array().is_some_and(|e| {
                let have: Vec<&str> = e.iter().filter_map(Value::as_str).collect();
                same_set(&have, &events)
            });
            let unchanged = hook["config"]["url"] == url
                && hook["config"]["content_type"] == "json"
                && hook["active"] == true
                && same_events;
            if unchanged {
                let _ = writeln!(
                    api.out,
                    "unchanged: GitHub hook {} already delivers to {url}",
                    hook["id"]
                );
            } else {
                let body = json!({"active": true, "events": events, "config": config});
                let id = hook["id"].clone();
                let old = hook_url(hook).unwrap_or("").to_string();
                if api
                    .send(
                        Method::PATCH,
                        &format!("{hooks}/{id}"),
                        Some(Body::Json(body)),
                    )
                    .await?
                    .is_some()
                {
                    let moved = if old == url {
                        String::new()
                    } else {
                        format!("{old} → ")
                    };
                    let _ = writeln!(
                        api.out,
                        "updated: GitHub hook {id}: {moved}{url} (events {})",
                        events.join(",")
                    );
                }
            }
            for extra in &mine[1..] {
                let _ = writeln!(api.out, "note: GitHub hook {} also delivers to this pipeline ({}); delete it if it is stale", extra["id"], hook_url(extra).unwrap_or(""));
            }
        }
    }
    Ok(())
}
