//! Stripe: webhook endpoints; the signing secret is shown once, at creation.

use std::fmt::Write as _;

use reqwest::Method;
use serde_json::Value;

use super::{list, same_set, sort_out, Api, Body, RegisterError, Request};
use crate::config::spec::PipelineSpec;

/// An endpoint's delivery URL.
fn endpoint_url(endpoint: &Value) -> Option<&str> {
    endpoint["url"].as_str()
}

pub(super) async fn stripe(
    api: &mut Api,
    pipeline: &PipelineSpec,
    path: &str,
    url: Option<&str>,
    req: &Request,
    secret_env: &str,
) -> Result<(), RegisterError> {
    let existing = api
        .send(Method::GET, "/v1/webhook_endpoints?limit=100", None)
        .await?
        .unwrap_or_default();
    let endpoints = existing["data"].as_array().cloned().unwrap_or_default();
    // An endpoint tagged with the pipeline's name is its own, wherever it
    // delivers (so a new host updates it); an untagged one only at `url`.
    let (tagged, untagged): (Vec<Value>, Vec<Value>) = endpoints
        .into_iter()
        .partition(|e| e["metadata"]["tributary_pipeline"] == pipeline.name.as_str());
    let sorted = sort_out(&untagged, endpoint_url, path, url);
    let mine: Vec<&Value> = tagged.iter().chain(sorted.mine).collect();
    let Some(url) = url else {
        list(
            api,
            mine.iter().map(|e| {
                format!(
                    "Stripe endpoint {}: {} events={} status={}",
                    e["id"].as_str().unwrap_or(""),
                    e["url"].as_str().unwrap_or(""),
                    e["enabled_events"],
                    e["status"].as_str().unwrap_or("")
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
    let mut form = vec![("url".to_string(), url.to_string())];
    form.extend(
        events
            .iter()
            .map(|e| ("enabled_events[]".to_string(), e.clone())),
    );
    form.push(("metadata[tributary_pipeline]".into(), pipeline.name.clone()));
    match mine.first() {
        None => {
            form.push((
                "description".into(),
                format!("tributary pipeline {}", pipeline.name),
            ));
            if let Some(created) = api
                .send(
                    Method::POST,
                    "/v1/webhook_endpoints",
                    Some(Body::Form(form)),
                )
                .await?
            {
                let _ = writeln!(
                    api.out,
                    "created: Stripe endpoint {} for pipeline {} → {url} (events {})",
                    created["id"].as_str().unwrap_or(""),
                    pipeline.name,
                    events.join(",")
                );
                if let (Some(secret), true) = (created["secret"].as_str(), api.for_connection) {
                    api.signing_secret = Some(secret.to_string());
                    let _ = writeln!(
                        api.out,
                        "Stripe's signing secret for it is kept, sealed, in the connection (its \"secret\"); it verifies the connection's deliveries from now on."
                    );
                } else if let Some(secret) = created["secret"].as_str() {
                    let _ = writeln!(
                        api.out,
                        "Stripe's signing secret for it, shown only now (tributary does not store it):\n  {secret_env}={secret}\nSet {secret_env} to it where tributary runs (source.verify.secret_env), then restart tributary."
                    );
                }
            }
            for other in &sorted.others {
                let _ = writeln!(api.out, "note: Stripe endpoint {} delivers to {}, whose path also ends with {path}; it is left as it is", other["id"].as_str().unwrap_or(""), endpoint_url(other).unwrap_or(""));
            }
        }
        Some(endpoint) => {
            let have: Vec<&str> = endpoint["enabled_events"]
                .as_array()
                .map(|e| e.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let id = endpoint["id"].as_str().unwrap_or("").to_string();
            if endpoint["url"] == url
                && same_set(&have, &events)
                && endpoint["metadata"]["tributary_pipeline"] == pipeline.name.as_str()
            {
                let _ = writeln!(
                    api.out,
                    "unchanged: Stripe endpoint {id} already delivers to {url}"
                );
            } else {
                let old = endpoint["url"].as_str().unwrap_or("").to_string();
                if api
                    .send(
                        Method::POST,
                        &format!("/v1/webhook_endpoints/{id}"),
                        Some(Body::Form(form)),
                    )
                    .await?
                    .is_some()
                {
                    let _ = writeln!(api.out, "updated: Stripe endpoint {id}: {old} → {url} (events {}); its signing secret is unchanged", events.join(","));
                }
            }
        }
    }
    Ok(())
}
