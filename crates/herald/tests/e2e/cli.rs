//! The CLI: publish and tail against a real gateway.

use crate::common::*;
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
    for cmd in ["serve", "publish", "tail", "bench"] {
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
