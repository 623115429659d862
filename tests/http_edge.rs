//! The HTTP edge of controls and nodes: a request the server refused without reading its
//! body (413, 401 before the body) must not break the next request a keep-alive client
//! sends on the same connection (issue 10: CI failed on exactly this).

mod common;

use common::chat::ChatCluster;
use serde_json::json;

/// Rounds of (refused oversized request, normal request) per server.
const ROUNDS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_a_refused_body_succeeds_on_the_same_connection() {
    let cluster = ChatCluster::start(1).await;
    let control = cluster.url();
    let node = format!("http://{}", cluster.node(0).node.addr);
    // One client, so one pool: the second request of a round goes on the connection the
    // first one used, if the client believes it reusable.
    let http = reqwest::Client::new();
    let oversized = format!("{{\"username\": \"{}\", \"password\": \"x\"}}", "a".repeat(200_000));
    let mut transport_errors = Vec::new();
    for round in 0..ROUNDS {
        let refused = http
            .post(format!("{control}/api/users"))
            .header("content-type", "application/json")
            .body(oversized.clone())
            .send()
            .await;
        match refused {
            Ok(response) => assert_eq!(response.status().as_u16(), 413, "round {round}"),
            Err(e) => transport_errors.push(format!("control, refused request, round {round}: {e:?}")),
        }
        let normal = http
            .post(format!("{control}/api/sessions"))
            .json(&json!({"username": "nobody", "password": "not this one"}))
            .send()
            .await;
        match normal {
            Ok(response) => assert_eq!(response.status().as_u16(), 401, "round {round}"),
            Err(e) => transport_errors.push(format!("control, next request, round {round}: {e:?}")),
        }

        // The node refuses a backup request without the secret before reading its body.
        let refused = http.post(format!("{node}/api/admin/backup")).body(vec![b'x'; 300_000]).send().await;
        match refused {
            Ok(response) => assert_eq!(response.status().as_u16(), 401, "round {round}"),
            Err(e) => transport_errors.push(format!("node, refused request, round {round}: {e:?}")),
        }
        match http.get(format!("{node}/healthz")).send().await {
            Ok(response) => assert_eq!(response.status().as_u16(), 200, "round {round}"),
            Err(e) => transport_errors.push(format!("node, next request, round {round}: {e:?}")),
        }
    }
    assert!(
        transport_errors.is_empty(),
        "{} transport errors in {ROUNDS} rounds:\n{}",
        transport_errors.len(),
        transport_errors.join("\n")
    );
}
