//! Shopify: Admin GraphQL webhook subscriptions, one per topic.

use std::fmt::Write as _;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{list, sort_out, Api, Body, RegisterError, Request, SHOPIFY_API_VERSION};

/// A subscription's delivery URL.
fn callback_url(subscription: &Value) -> Option<&str> {
    subscription["endpoint"]["callbackUrl"].as_str()
}

/// Shopify's GraphQL enum for a topic: `orders/create` → `ORDERS_CREATE`.
pub(super) fn shopify_topic(topic: &str) -> String {
    topic
        .trim()
        .replace(['/', '.', '-'], "_")
        .to_ascii_uppercase()
}

pub(super) async fn shopify(
    api: &mut Api,
    path: &str,
    url: Option<&str>,
    req: &Request,
) -> Result<(), RegisterError> {
    let graphql = format!("/admin/api/{SHOPIFY_API_VERSION}/graphql.json");
    let query = json!({"query": "query { webhookSubscriptions(first: 250) { edges { node { id topic endpoint { __typename ... on WebhookHttpEndpoint { callbackUrl } } } } } }"});
    let existing = api
        .send(Method::POST, &graphql, Some(Body::Json(query)))
        .await?
        .unwrap_or_default();
    let nodes: Vec<Value> = existing["data"]["webhookSubscriptions"]["edges"]
        .as_array()
        .map(|edges| edges.iter().map(|e| e["node"].clone()).collect())
        .unwrap_or_default();
    let sorted = sort_out(&nodes, callback_url, path, url);
    let mine = sorted.mine;
    let Some(url) = url else {
        list(
            api,
            mine.iter().map(|n| {
                format!(
                    "Shopify subscription {}: {} → {}",
                    n["id"].as_str().unwrap_or(""),
                    n["topic"].as_str().unwrap_or(""),
                    callback_url(n).unwrap_or("")
                )
            }),
        );
        return Ok(());
    };
    if req.events.is_empty() {
        return Err(RegisterError::Usage(
            "Shopify subscribes topic by topic: add --events orders/create,orders/update (the topics this pipeline takes)".into(),
        ));
    }
    for topic in &req.events {
        let topic = shopify_topic(topic);
        let found = mine.iter().find(|n| n["topic"] == topic.as_str());
        let (mutation, variables, verb) = match found {
            Some(n) if n["endpoint"]["callbackUrl"] == url => {
                let _ = writeln!(api.out, "unchanged: Shopify subscription {} ({topic}) already delivers to {url}", n["id"].as_str().unwrap_or(""));
                continue;
            }
            Some(n) => (
                "mutation update($id: ID!, $webhookSubscription: WebhookSubscriptionInput!) { webhookSubscriptionUpdate(id: $id, webhookSubscription: $webhookSubscription) { webhookSubscription { id } userErrors { field message } } }",
                json!({"id": n["id"], "webhookSubscription": {"callbackUrl": url}}),
                "webhookSubscriptionUpdate",
            ),
            None => (
                "mutation create($topic: WebhookSubscriptionTopic!, $webhookSubscription: WebhookSubscriptionInput!) { webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) { webhookSubscription { id } userErrors { field message } } }",
                json!({"topic": topic, "webhookSubscription": {"callbackUrl": url, "format": "JSON"}}),
                "webhookSubscriptionCreate",
            ),
        };
        let body = json!({"query": mutation, "variables": variables});
        let Some(answer) = api
            .send(Method::POST, &graphql, Some(Body::Json(body)))
            .await?
        else {
            continue;
        };
        let result = &answer["data"][verb];
        if let Some(errors) = result["userErrors"].as_array().filter(|e| !e.is_empty()) {
            return Err(RegisterError::Refused {
                provider: "Shopify",
                method: Method::POST,
                path: graphql.clone(),
                status: StatusCode::OK,
                body: format!("{verb} for {topic}: {}", Value::Array(errors.clone())),
            });
        }
        let id = result["webhookSubscription"]["id"].as_str().unwrap_or("");
        match found {
            Some(n) => {
                let _ = writeln!(
                    api.out,
                    "updated: Shopify subscription {id} ({topic}): {} → {url}",
                    callback_url(n).unwrap_or("")
                );
            }
            None => {
                let _ = writeln!(
                    api.out,
                    "created: Shopify subscription {id} ({topic}) → {url}"
                );
            }
        }
    }
    for other in &sorted.others {
        let _ = writeln!(api.out, "note: Shopify subscription {} ({}) delivers to {}, whose path also ends with {path}; it is left as it is (if it is this pipeline's old address, delete it)", other["id"].as_str().unwrap_or(""), other["topic"].as_str().unwrap_or(""), callback_url(other).unwrap_or(""));
    }
    let _ = writeln!(api.out, "note: Shopify signs deliveries with the app's client secret: source.verify.secret_env must hold it");
    Ok(())
}
