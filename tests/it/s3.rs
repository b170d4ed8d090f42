//! The Parquet sink on `s3://` against a real S3 server (moto) on loopback:
//! every acknowledged event lands exactly once, read back through the S3 API.

use std::collections::HashSet;

use crate::support::*;

/// Moto's keys, as the server's environment.
const AWS_KEYS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

/// The Shopify pipeline with its Parquet sink in `s3://lake/shopify/customers` on `moto`.
fn s3_project(moto: &Moto) -> Project {
    let project = Project::new();
    project.shopify_pipeline("max_age = \"100ms\"", "");
    let pipeline =
        std::fs::read_to_string(project.path().join("pipelines/shopify_customers.toml")).unwrap();
    project.write(
        "pipelines/shopify_customers.toml",
        &format!(
            "{pipeline}uri = \"s3://lake/shopify/customers\"\nstorage = {{ endpoint = \"{}\", allow_http = true, region = \"us-east-1\" }}\n",
            moto.endpoint
        ),
    );
    project
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_files_land_in_an_s3_bucket() {
    let moto = Moto::start().await;
    moto.bucket("lake").await;
    let project = s3_project(&moto);
    let server = project.start_with_env(&AWS_KEYS).await;
    let acked = post_customers(&project, 0, 10, 10).await;
    assert!(server.terminate().success(), "log:\n{}", project.log());

    let rows = moto.parquet_ids("shopify/customers").await;
    assert!(!rows.is_empty(), "no objects; log:\n{}", project.log());
    let mut seen = Vec::new();
    for (location, id) in rows {
        assert!(location.contains("/_received_date="), "{location}");
        seen.push(id);
    }
    assert_eq!(seen.len(), acked.len(), "every event once");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), acked);

    // `tributary sql` lists the hive-partitioned files on S3 as one table.
    let out = project.command_with_env(
        &[
            "sql",
            "SELECT _event_id FROM shopify_customers",
            "--format",
            "ndjson",
        ],
        &AWS_KEYS,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["_event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_when_the_s3_server_goes_away() {
    let moto = Moto::start().await;
    moto.bucket("lake").await;
    let project = s3_project(&moto);
    let server = project.start_with_env(&AWS_KEYS).await;
    let readyz = || async {
        let r = reqwest::get(project.url("/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(readyz().await.0, 200, "{}", readyz().await.1);
    // No event is in flight: only the probe can see that S3 is gone.
    drop(moto);
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("sink parquet") && body.contains("storage") && body.contains("s3://lake"),
        "{body}"
    );
    server.kill9();
}
