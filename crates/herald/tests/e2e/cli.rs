//! The CLI: publish and tail against a real gateway.

use crate::common::*;
use serde_json::json;
use std::process::Command;

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald")).args(args).output().expect("run herald")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_tail_round_trip() {
    let g = Gateway::start();
    let out = herald(&["publish", "--url", &g.base, "cli", "a.b", r#"{"hello":"world"}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let out = herald(&["publish", "--url", &g.base, "cli", "a.c", "not json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not JSON"));
    herald(&["publish", "--url", &g.base, "cli", "x.y", "2"]);
    let out = herald(&["tail", "--url", &g.base, "--bind", "cli=a.*", "--since", "0", "--count", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(line["id"], 1);
    assert_eq!(line["payload"]["hello"], "world");
    let out = herald(&["tail", "--url", &g.base, "--bind", "cli=#", "--last", "2", "--count", "2"]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(lines.iter().map(|l| l["id"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn every_command_has_help() {
    for cmd in ["serve", "publish", "tail", "bench", "config"] {
        let out = herald(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{cmd}");
    }
    let out = herald(&["serve", "--config", "/nonexistent/herald.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn invalid_configuration_lists_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = \"nowhere\"\n[limits]\nmax_bindings = 0\n").expect("write");
    let out = herald(&["serve", "--config", path.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen") && err.contains("max_bindings"), "{err}");
    std::fs::write(&path, "listne = \"127.0.0.1:1\"\n").expect("write");
    let out = herald(&["serve", "--config", path.to_str().expect("utf8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_the_environment() {
    // The file says 5, the environment 2: the environment wins, and the
    // gateway advertises what it enforces.
    let g = Gateway::start_with_env(
        "[limits]\nmax_subscriptions = 5\nmax_bindings = 3\n",
        &[("HERALD_LIMITS__MAX_SUBSCRIPTIONS", "2"), ("HERALD_SESSION__TTL", "45s")],
    );
    let (mut c, welcome) = g.hello().await;
    assert_eq!(welcome["limits"]["max_subscriptions"], 2, "{welcome}");
    assert_eq!(welcome["limits"]["max_bindings"], 3, "the file's setting stays: {welcome}");
    for sub in ["a", "b"] {
        let r = c.subscribe(sub, binding("env", "#"), json!({})).await;
        assert_eq!(r["type"], "subscribed", "{r}");
    }
    let r = c.subscribe("c", binding("env", "#"), json!({})).await;
    assert_eq!(r["code"], "limit_exceeded", "the third subscription is refused: {r}");
}

#[test]
fn config_check_prints_the_effective_configuration_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, "[limits]\nmax_bindings = 3\n[metrics]\ntoken = \"metrics-token-abcdefgh\"\n")
        .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:9999"])
        .env("HERALD_JWT_SECRET", "0123456789abcdef0123")
        .env("HERALD_CLUSTER__NATS_URLS", "nats://a:4222,nats://b:4222")
        .env("HERALD_CLUSTER__NODE", "n1")
        .output()
        .expect("run herald");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective: toml::Table = toml::from_str(&stdout).expect("the effective configuration is TOML");
    assert_eq!(effective["listen"].as_str(), Some("127.0.0.1:9999"));
    assert_eq!(effective["limits"]["max_bindings"].as_integer(), Some(3));
    assert_eq!(effective["cluster"]["nats_urls"].as_array().map(Vec::len), Some(2));
    assert_eq!(effective["auth"]["jwt_secret"].as_str(), Some("********"));
    assert!(!stdout.contains("0123456789abcdef") && !stdout.contains("metrics-token"), "{stdout}");

    // Problems from the file and the environment, all at once, and a failure.
    std::fs::write(&path, "[limits]\nmax_bindings = 0\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("HERALD_LIMITS__MAX_SUBSCRIPTIONS", "many")
        .env("HERALD_SESSION__NO_SUCH", "1")
        .output()
        .expect("run herald");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in
        ["HERALD_LIMITS__MAX_SUBSCRIPTIONS", "HERALD_SESSION__NO_SUCH", "limits.max_bindings must be at least 1"]
    {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_configuration_runs_a_gateway() {
    let out = herald(&["config", "default"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("# (environment: HERALD_LIMITS__MAX_SUBSCRIPTIONS)"), "{text}");
    let g = Gateway::start_with(&text);
    let ids = g.publish(json!([{"exchange": "d", "routing_key": "k", "payload": 1}])).await;
    assert_eq!(ids, vec![1]);
    let schema = herald(&["config", "schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).expect("the schema is JSON");
    assert!(schema["properties"]["limits"].is_object(), "{schema}");
}
