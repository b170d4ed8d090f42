//! The shipped poll examples, pointed at a fake of their API.

use super::*;

/// The shipped example pipelines, pointed at a fake of their API: the
/// HubSpot search (POST body template, `paging.next.after`) and the Shopify
/// product list (`Link` header, `updated_at_min`, access-token header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_poll_examples_page_through_a_fake_of_their_api() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases = [
        (
            "hubspot_contacts",
            "hubspot_contact",
            Style::Cursor,
            Shape::HubSpot,
            Auth::Bearer("pat-1".into()),
            ("HUBSPOT_TOKEN", "pat-1"),
            vec!["tributary/hubspot_contacts/delta"],
        ),
        (
            "shopify_products",
            "shopify_product",
            Style::Link,
            Shape::Shopify,
            Auth::HeaderKey("x-shopify-access-token".into(), "shpat_1".into()),
            ("SHOPIFY_ACCESS_TOKEN", "shpat_1"),
            vec!["tributary/shopify_products/latest"],
        ),
    ];
    for (name, schema, style, shape, auth, env, app_ids) in cases {
        let project = Project::new();
        let api = FakeApi::start(1200, style).await;
        api.set_shape(shape);
        api.set_auth(auth);
        let shipped = std::fs::read_to_string(root.join(format!("pipelines/{name}.toml"))).unwrap();
        let pipeline: String = shipped
            .lines()
            .map(|line| {
                if line.starts_with("url = ") {
                    format!("url = \"{}\"\nallow_http = true", api.url())
                } else if line.starts_with("records = ") {
                    // The fake wraps every list in "results".
                    "records = \"/results\"".to_string()
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        project.write(&format!("pipelines/{name}.toml"), &pipeline);
        project.write(
            &format!("schemas/{schema}.json"),
            &std::fs::read_to_string(root.join(format!("schemas/{schema}.json"))).unwrap(),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["poll", name])
            .current_dir(project.path())
            .env(env.0, env.1)
            .output()
            .unwrap();
        assert_ok(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1200 records"),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let table = if name == "shopify_products" {
            project.path().join("lake/shopify_products_latest")
        } else {
            project.table_dir_of(name)
        };
        let view = read_delta(table.to_str().unwrap(), &app_ids, &["id"], &[]);
        assert_eq!(view.rows.len(), 1200, "{name}: one row per record");
        assert_eq!(view.duckdb.len(), 1200, "{name}");
        assert!(
            !project
                .path()
                .join(format!("lake/_dead_letters/{name}"))
                .exists(),
            "{name}: every record fit the shipped schema"
        );
        if name == "shopify_products" {
            assert_eq!(id_counts_of(&project.table_dir_of(name)), once_each(1200));
        }
        // The first request carried the start of the cursor.
        let first = &api.log()[0].path_and_query;
        assert!(
            name == "hubspot_contacts" || first.contains("updated_at_min=2023-12-31T23%3A58%3A00Z"),
            "{first}"
        );
    }
}
