//! Real etcd processes on loopback: one member, a three-member cluster, and TLS with client
//! certificates generated for the test; and one member inside a network namespace, for the
//! multi-host lab.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use weft_agent::store::{EtcdOptions, EtcdStore, LeaseStore};

use crate::free_port;
use crate::procs::{run_bounded, Proc};

/// TLS material for a test etcd, made by `deploy/etcd-certs.sh` (the recipe docs/etcd.md
/// shows) for 127.0.0.1 and localhost, plus a second CA and client certificate from a
/// second run.
#[derive(Debug)]
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing etcd has (for the wrong-CA case).
    pub other_ca: PathBuf,
    /// A client certificate and key signed by `other_ca`, which etcd does not trust.
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

/// The certificate recipe of docs/etcd.md.
pub fn cert_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/etcd-certs.sh")
}

/// Run the certificate recipe into `dir` (which must not exist) for `names`.
pub fn run_cert_script(dir: &Path, names: &str) {
    let mut cmd = Command::new("sh");
    cmd.arg(cert_script()).arg(dir).arg(names);
    let (code, _out, err) = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(code, 0, "deploy/etcd-certs.sh {}: {err}", dir.display());
}

impl TlsFiles {
    /// Run the recipe twice under `dir`: `pki/` for the test etcd, `other/` for a CA and a
    /// client certificate it does not trust.
    pub fn generate(dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir).unwrap();
        let (pki, other) = (dir.join("pki"), dir.join("other"));
        run_cert_script(&pki, "IP:127.0.0.1,DNS:localhost");
        run_cert_script(&other, "IP:127.0.0.1,DNS:localhost");
        TlsFiles {
            dir: dir.to_path_buf(),
            ca: pki.join("ca.pem"),
            server_cert: pki.join("server.pem"),
            server_key: pki.join("server.key"),
            client_cert: pki.join("client.pem"),
            client_key: pki.join("client.key"),
            other_ca: other.join("ca.pem"),
            other_client_cert: other.join("client.pem"),
            other_client_key: other.join("client.key"),
        }
    }

    /// The CA's key (to sign more certificates in a test).
    pub fn ca_key(&self) -> PathBuf {
        self.ca.with_extension("key")
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    proc: Option<Proc>,
}

/// One or more etcd members on loopback, stopped when dropped.
#[derive(Debug)]
pub struct Etcd {
    members: Vec<Member>,
    token: String,
    tls: Option<TlsFiles>,
    _dir: TempDir,
}

impl Etcd {
    /// A single member.
    pub async fn start() -> Etcd {
        Self::start_cluster(1, false).await
    }

    /// A single member requiring TLS with client certificates.
    pub async fn start_tls() -> Etcd {
        Self::start_cluster(1, true).await
    }

    /// `n` members forming one cluster.
    pub async fn start_cluster(n: usize, tls: bool) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("weft-etcd-")
            .tempdir()
            .expect("tempdir");
        let tls = tls.then(|| TlsFiles::generate(&dir.path().join("tls")));
        let tag = format!("{}-{}", std::process::id(), fastrand::u32(..));
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}-{tag}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}")),
                proc: None,
            })
            .collect();
        let mut etcd = Etcd {
            members,
            token: format!("weft-test-{tag}"),
            tls,
            _dir: dir,
        };
        for i in 0..n {
            etcd.spawn_member(i);
        }
        etcd.wait_healthy().await;
        etcd
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn spawn_member(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let scheme = self.scheme();
        let m = &self.members[i];
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn", "--logger", "zap"]);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key);
            cmd.arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let log = self._dir.path().join(format!("{}.log", m.name));
        let p = Proc::spawn(&m.name, cmd, &log);
        self.members[i].proc = Some(p);
    }

    /// Client URLs of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        self.endpoints()[i].clone()
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Store options for all members under `prefix` (TLS files included when TLS is on).
    pub fn options(&self, prefix: &str) -> EtcdOptions {
        let mut o = EtcdOptions::new(self.endpoints(), prefix);
        if let Some(t) = &self.tls {
            o.ca_file = Some(t.ca.clone());
            o.cert_file = Some(t.client_cert.clone());
            o.key_file = Some(t.client_key.clone());
        }
        o
    }

    pub async fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.options(prefix))
            .await
            .expect("connect to test etcd")
    }

    /// Flags that point a weftd/netctl at this etcd.
    pub fn cli_args(&self) -> Vec<String> {
        let mut v = vec!["--etcd-endpoints".to_string(), self.endpoints().join(",")];
        if let Some(t) = &self.tls {
            for (flag, p) in [
                ("--etcd-cafile", &t.ca),
                ("--etcd-certfile", &t.client_cert),
                ("--etcd-keyfile", &t.client_key),
            ] {
                v.push(flag.into());
                v.push(p.display().to_string());
            }
        }
        v
    }

    async fn wait_healthy(&self) {
        for i in 0..self.members.len() {
            if self.members[i].proc.is_none() {
                continue;
            }
            let mut o = self.options("/weft-health");
            o.endpoints = vec![self.endpoint(i)];
            o.request_timeout = Duration::from_secs(1);
            let log = self.members[i]
                .proc
                .as_ref()
                .map(|p| p.log.clone())
                .unwrap();
            let start = std::time::Instant::now();
            loop {
                let o = o.clone();
                let ok = match EtcdStore::connect(&o).await {
                    Ok(s) => s.get("probe").await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    panic!(
                        "etcd member {i} not serving after 30 s; log tail:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Stop member `i` (SIGTERM by pid).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// Start member `i` again with its data.
    pub async fn restart_member(&mut self, i: usize) {
        self.spawn_member(i);
        self.wait_healthy().await;
    }

    /// Index of the current leader, asked through etcdctl-free status calls.
    pub async fn leader(&self) -> usize {
        for (i, m) in self.members.iter().enumerate() {
            if m.proc.is_none() {
                continue;
            }
            let Ok(c) = etcd_client::Client::connect([self.endpoint(i)], None).await else {
                continue;
            };
            let mut c = c;
            if let Ok(st) = c.status().await {
                if st.leader() == st.header().map(|h| h.member_id()).unwrap_or(0) {
                    return i;
                }
            }
        }
        panic!("no etcd member reports itself leader");
    }

    /// Compact the history up to the current revision.
    pub async fn compact_now(&self) {
        let mut c = self.raw_client().await;
        let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
        c.compact(rev, None).await.unwrap();
    }

    /// A raw etcd client (for writing test fixtures the way other software would).
    pub async fn raw_client(&self) -> etcd_client::Client {
        assert!(
            self.tls.is_none(),
            "raw_client is for plain-text test clusters"
        );
        etcd_client::Client::connect(self.endpoints(), None)
            .await
            .expect("raw etcd client")
    }
}

/// One etcd member inside a network namespace, listening on `ip` (clients on port 2379,
/// peers on 2380), so other namespaces reach it over the links they share with it. It runs
/// through `ip netns exec`, which execs, so the handle's pid is etcd's own.
#[derive(Debug)]
pub struct NetnsEtcd {
    netns: String,
    endpoint: String,
    proc: Proc,
}

impl NetnsEtcd {
    /// Start etcd in `netns` with its data and log under `dir`, and wait (at most 30 s) until
    /// it answers. `detached`: let it outlive this process (see [`Proc::spawn_detached`]).
    pub fn start(netns: &str, ip: Ipv4Addr, dir: &Path, detached: bool) -> NetnsEtcd {
        let endpoint = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let name = format!("{netns}-etcd");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "etcd", "--name", &name])
            .arg("--data-dir")
            .arg(dir.join("etcd-data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .args(["--initial-cluster-token", &name])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn", "--logger", "zap"]);
        let log = dir.join("etcd.log");
        let proc = if detached {
            Proc::spawn_detached(&name, cmd, &log)
        } else {
            Proc::spawn(&name, cmd, &log)
        };
        let mut etcd = NetnsEtcd {
            netns: netns.to_string(),
            endpoint,
            proc,
        };
        etcd.wait_healthy(Duration::from_secs(30));
        etcd
    }

    /// The client URL (`http://<ip>:2379`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// `etcdctl <args>` (API v3) inside the namespace against this member, bounded to 15 s:
    /// (exit code, stdout, stderr).
    pub fn etcdctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "etcdctl"])
            .args(["--endpoints", &self.endpoint, "--command-timeout=5s"])
            .args(args)
            .env("ETCDCTL_API", "3");
        run_bounded(cmd, Duration::from_secs(15))
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.proc.try_exit() {
                panic!(
                    "etcd in {} exited ({st}) before serving; log:\n{}",
                    self.netns,
                    self.log_text()
                );
            }
            if self.etcdctl(&["endpoint", "health"]).0 == 0 {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "etcd in {} not healthy after {timeout:?}; log:\n{}",
                    self.netns,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop it (SIGTERM by pid, SIGKILL after 5 s).
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }

    /// Let it run on after the handle is gone; returns its pid.
    pub fn release(self) -> Option<u32> {
        self.proc.release()
    }
}
