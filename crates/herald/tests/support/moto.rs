//! moto's SQS-compatible server for tests (pip install 'moto[server]').
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use herald_connectors::sqs::{client, Credentials};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// moto's server, killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (pip install 'moto[server]'): {e}"));
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, endpoint }
    }

    pub fn sdk(&self) -> aws_sdk_sqs::Client {
        client(Some(&self.endpoint), "us-east-1", creds())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn creds() -> Credentials {
    Credentials { access_key_id: "testing".into(), secret_access_key: "testing".into() }
}
