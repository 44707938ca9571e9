//! Test harness for weft's integration tests and benchmarks: real etcd processes (single,
//! clustered, TLS), the real weftd/netctl binaries, small HTTP probes, and the multi-host lab
//! (hosts and pods as network namespaces), and rootful podman with its state in a temp dir.
//! Everything runs on loopback or inside namespaces made here; every process started here is
//! stopped by its pid when its handle drops.

pub mod bench;
pub mod etcd;
pub mod forward;
pub mod fuzz;
pub mod kube;
pub mod lab;
pub mod markdown;
pub mod netns;
pub mod podman;
pub mod procs;
pub mod shipped;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository's root directory (the workspace root, above `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The text of `rel`, a path from the repository's root.
pub fn repo_file(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Poll `f` until it returns `Some`, or fail after `timeout` with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on loopback")
}

/// Install a tracing subscriber for test output (once; later calls are no-ops).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}
