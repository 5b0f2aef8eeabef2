//! Starting a gateway to measure: this executable's `serve` on a free port.

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) struct Gateway {
    child: Child,
    pub(crate) base_url: String,
    /// Removed when the gateway goes: its configuration's, and for
    /// [`Gateway::start`] its data's.
    _dirs: Vec<tempfile::TempDir>,
}

impl Gateway {
    /// Start a gateway on a new, temporary data directory.
    pub(crate) async fn start() -> anyhow::Result<Gateway> {
        let data = tempfile::tempdir().context("cannot create a data directory")?;
        let mut g = Gateway::start_on(data.path()).await?;
        g._dirs.push(data);
        Ok(g)
    }

    /// Start a gateway on the data directory `data` (left in place).
    pub(crate) async fn start_on(data: &std::path::Path) -> anyhow::Result<Gateway> {
        let exe = std::env::current_exe().context("cannot find the herald executable")?;
        let dir = tempfile::tempdir().context("cannot create a configuration directory")?;
        // The load comes from one address and pipelines freely: lift the
        // per-address, per-command and total connection limits.
        let config = dir.path().join("bench.toml");
        std::fs::write(
            &config,
            "[limits]\nmax_connections = 1000000\nmax_connections_per_ip = 0\ncommands_per_second = 0\nhttp_publishes_per_second = 0\n",
        )
        .context("cannot write the bench configuration")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(data)
            .env("HERALD_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the gateway")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next_line().await?.context("the gateway exited before listening")?;
        let base_url =
            first.strip_prefix("herald listening on ").context("unexpected first line from the gateway")?.to_string();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Gateway { child, base_url, _dirs: vec![dir] })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(15), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// Resident memory of a process, in bytes, from /proc.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
