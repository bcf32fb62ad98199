//! `chorus status` and `chorus models` against a real cluster: what they print, in tables and as
//! JSON, and that they follow the cluster when a worker dies.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

fn models_json(admin: &str) -> Value {
    let (ok, out, err) = chorus(&["models", "--admin", admin, "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn replicas(models: &Value, name: &str) -> u64 {
    models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {models}"))["replicas"]
        .as_u64()
        .unwrap()
}

#[test]
fn status_and_models_show_the_cluster_and_follow_it() {
    let mut cluster = Cluster::start();
    let admin = admin_addr(&cluster.coordinator).to_string();

    let (ok, status, err) = chorus(&["status", "--admin", &admin]);
    assert!(ok, "{err}");
    assert!(status.starts_with("ready: yes"), "{status}");
    for expected in [
        // Static membership knows workers by address; their models name them here.
        "logreg@1,logreg_int8@1,svc@1",
        "mlp@1,mlp_int8@1,stacker@1",
        "digits_soft",
        "soft_vote",
        "3/3 live, 2 needed",
    ] {
        assert!(
            status.contains(expected),
            "{expected} missing from:\n{status}"
        );
    }
    let (ok, json, err) = chorus(&["status", "--admin", &format!("http://{admin}"), "--json"]);
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["workers"].as_array().unwrap().len(), 3);
    let soft = json["ensembles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "digits_soft")
        .unwrap();
    assert_eq!(soft["ready"], true);
    assert!(
        soft["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["weight"].is_number())
    );

    let (ok, models, err) = chorus(&["models", "--admin", &admin]);
    assert!(ok, "{err}");
    assert!(models.starts_with("MODEL"), "{models}");
    assert!(models.contains("logreg"), "{models}");
    assert_eq!(replicas(&models_json(&admin), "mlp"), 1);

    // The worker serving mlp dies: the models list shows it without replicas.
    let mlp = cluster
        .workers
        .iter_mut()
        .find(|w| w.name == "w-mlp")
        .unwrap();
    mlp.child.kill().unwrap();
    let _ = mlp.child.wait();
    wait_until("mlp to have no replica", Duration::from_secs(15), || {
        (replicas(&models_json(&admin), "mlp") == 0).then_some(())
    });
    let (_, status, _) = chorus(&["status", "--admin", &admin]);
    assert!(status.contains("mlp×"), "{status}");
    assert!(status.contains("(0 replicas)"), "{status}");

    // A wrong address says what to check.
    let (ok, _, err) = chorus(&["status", "--admin", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("admin port"), "{err}");
}
