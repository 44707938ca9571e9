//! etcd TLS and etcd failures as the operator sees them: the TLS files checked at start
//! (exit 2 naming the flag), handshake and connection failures against real etcd processes
//! rendered as one sentence (netctl's stderr, weftd's `/readyz`), the etcd contact metrics,
//! and the certificate recipe of docs/etcd.md, which every TLS test here runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_agent::store::{EtcdCause, EtcdOptions, EtcdStore, LeaseStore, StoreError, StoreMetrics};
use weft_tests::etcd::{cert_script, Etcd, TlsFiles};
use weft_tests::procs::{bin, metric, netctl, run_bounded, Weftd};
use weft_tests::wait_for;

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &[u8] = br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const READY: Duration = Duration::from_secs(30);

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    let (code, _, err) = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code, 0, "openssl {args:?}: {err}");
}

/// A certificate for a new key, signed by the test CA with `ext` (an openssl extension
/// file's text) and `days` (negative: already expired). Returns (cert, key).
fn sign_extra(tls: &TlsFiles, name: &str, ext: &str, days: i32) -> (PathBuf, PathBuf) {
    let dir = &tls.dir;
    let (key, csr, pem, extf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extf), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=weft",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    let days = days.to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &s(&tls.ca),
            "-CAkey",
            &s(&tls.ca_key()),
            "-CAcreateserial",
            "-days",
            &days,
            "-extfile",
            &extf,
            "-out",
            &pem,
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// weftd with `args` (and its usual flags) against `etcd`: (exit code, stderr).
fn weftd_once(dir: &Path, args: &[String]) -> (i32, String) {
    let mut cmd = Command::new(bin("weftd"));
    cmd.args([
        "--node-name",
        "tls-bad",
        "--public-ip",
        "192.0.2.98",
        "--iface",
        "lo",
    ])
    .args(["--healthz-port", "0", "--subnet-file"])
    .arg(dir.join("subnet.env"))
    .args(args);
    let (code, _, err) = run_bounded(cmd, Duration::from_secs(30));
    (code, err)
}

fn tls_args(endpoint: &str, ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Vec<String> {
    let mut v = vec![
        "--etcd-endpoints".to_string(),
        endpoint.to_string(),
        "--etcd-request-timeout".into(),
        "3s".into(),
    ];
    if let Some(ca) = ca {
        v.extend(["--etcd-cafile".into(), s(ca)]);
    }
    if let Some((c, k)) = identity {
        v.extend([
            "--etcd-certfile".into(),
            s(c),
            "--etcd-keyfile".into(),
            s(k),
        ]);
    }
    v
}

fn with(mut v: Vec<String>, more: &[&str]) -> Vec<String> {
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tls_files_stop_weftd_and_netctl_at_start_naming_the_flag() {
    let etcd = Etcd::start_tls().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let tls = etcd.tls().unwrap();
    let ep = etcd.endpoint(0);
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.txt");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let (expired, expired_key) = sign_extra(tls, "expired", "extendedKeyUsage=clientAuth\n", -1);
    let (server_only, server_only_key) =
        sign_extra(tls, "server-only", "extendedKeyUsage=serverAuth\n", 2);
    let (ca, cert, key) = (&tls.ca, &tls.client_cert, &tls.client_key);
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            with(
                tls_args(&ep, Some(ca), None),
                &["--etcd-certfile", &s(cert)],
            ),
            "--etcd-certfile and --etcd-keyfile must be given together".into(),
        ),
        (
            with(tls_args(&ep, Some(ca), None), &["--etcd-keyfile", &s(key)]),
            "--etcd-certfile and --etcd-keyfile must be given together".into(),
        ),
        (
            tls_args(&ep, Some(&not_pem), Some((cert, key))),
            format!(
                "--etcd-cafile {}: it is not a PEM file (no -----BEGIN ...----- block)",
                s(&not_pem)
            ),
        ),
        (
            tls_args(&ep, Some(ca), Some((key, key))),
            format!(
                "--etcd-certfile {}: it holds a private key, not a certificate; give weft's \
                 client certificate here and its private key in --etcd-keyfile",
                s(key)
            ),
        ),
        (
            tls_args(&ep, Some(key), Some((cert, key))),
            format!(
                "--etcd-cafile {}: it holds a private key, not a CA certificate",
                s(key)
            ),
        ),
        (
            tls_args(&ep, Some(ca), Some((cert, cert))),
            format!(
                "--etcd-keyfile {}: it holds a certificate, not a private key",
                s(cert)
            ),
        ),
        (
            tls_args(&ep, Some(ca), Some((cert, &tls.server_key))),
            format!(
                "--etcd-keyfile {}: it is not the key of the certificate in --etcd-certfile \
                 (their public keys differ); give the key the certificate was issued for",
                s(&tls.server_key)
            ),
        ),
        (
            tls_args(&ep, Some(ca), Some((&expired, &expired_key))),
            format!(
                "--etcd-certfile {}: the certificate for CN=weft expired on",
                s(&expired)
            ),
        ),
        (
            tls_args(&ep, Some(ca), Some((&server_only, &server_only_key))),
            format!(
                "--etcd-certfile {}: the certificate for CN=weft is not for TLS clients (its \
                 extendedKeyUsage lacks clientAuth), so etcd would reject it",
                s(&server_only)
            ),
        ),
    ];
    for (args, want) in &cases {
        let (code, err) = weftd_once(dir.path(), args);
        assert_eq!(code, 2, "weftd {args:?}: exit {code}\n{err}");
        assert!(
            err.contains(want.as_str()),
            "weftd {args:?}: stderr lacks {want:?}:\n{err}"
        );
        assert_eq!(
            err.matches(want.as_str()).count(),
            1,
            "the cause is printed once:\n{err}"
        );
        let (code, _, err) = netctl(&with(args.clone(), &["leases"]));
        assert_eq!(code, 2, "netctl {args:?}: exit {code}\n{err}");
        assert!(
            err.contains(want.as_str()),
            "netctl {args:?}: stderr lacks {want:?}:\n{err}"
        );
    }
    assert!(
        store.snapshot(false).await.unwrap().entries.is_empty(),
        "no lease was written"
    );
    assert!(
        !dir.path().join("subnet.env").exists(),
        "no subnet.env was written"
    );
}

/// netctl against `args`: exit 2 and stderr with `want` (once).
fn netctl_fails_with(args: Vec<String>, want: &str) {
    let (code, _, err) = netctl(&with(args.clone(), &["leases"]));
    assert_eq!(code, 2, "netctl {args:?}: {err}");
    assert!(
        err.contains(want),
        "netctl {args:?}: stderr lacks {want:?}:\n{err}"
    );
    assert_eq!(err.matches(want).count(), 1, "printed once:\n{err}");
    for dump in ["Error(", "Status {", "Some(", "Custom {", "kind:"] {
        assert!(!err.contains(dump), "no debug formatting ({dump}):\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_connection_failures_say_what_happened() {
    let etcd = Etcd::start_tls().await;
    let plain = Etcd::start().await;
    let tls = etcd.tls().unwrap();
    let ep = etcd.endpoint(0);
    let good = Some((tls.client_cert.as_path(), tls.client_key.as_path()));

    // The working setup works (so the failures below are the files' and URLs' doing).
    let (code, _, err) = netctl(&with(tls_args(&ep, Some(&tls.ca), good), &["leases"]));
    assert_eq!(code, 0, "{err}");

    netctl_fails_with(
        tls_args(&ep, Some(&tls.other_ca), good),
        &format!(
            "etcd at {ep}: etcd's certificate is not signed by --etcd-cafile; give the CA that \
             signed etcd's server certificate"
        ),
    );
    netctl_fails_with(
        tls_args(&ep, Some(&tls.ca), None),
        &format!(
            "etcd at {ep}: etcd rejected our client certificate: it requires one and none was \
             given; give one with --etcd-certfile and --etcd-keyfile"
        ),
    );
    netctl_fails_with(
        tls_args(
            &ep,
            Some(&tls.ca),
            Some((&tls.other_client_cert, &tls.other_client_key)),
        ),
        &format!(
            "etcd at {ep}: etcd rejected our client certificate; give one signed by a CA in \
             etcd's --trusted-ca-file"
        ),
    );
    let http_to_tls = ep.replace("https://", "http://");
    netctl_fails_with(
        tls_args(&http_to_tls, None, None),
        &format!("etcd at {http_to_tls}: this endpoint speaks TLS; use https://"),
    );
    let https_to_plain = plain.endpoint(0).replace("http://", "https://");
    netctl_fails_with(
        tls_args(&https_to_plain, Some(&tls.ca), good),
        &format!("etcd at {https_to_plain}: this endpoint does not speak TLS; use http://"),
    );
    let refused = format!("http://127.0.0.1:{}", weft_tests::free_port());
    netctl_fails_with(
        tls_args(&refused, None, None),
        &format!(
            "etcd at {refused}: unreachable: connection refused (nothing listens there); check \
             --etcd-endpoints and that etcd is running"
        ),
    );
    let refused_tls = format!("https://127.0.0.1:{}", weft_tests::free_port());
    netctl_fails_with(
        tls_args(&refused_tls, Some(&tls.ca), good),
        &format!("etcd at {refused_tls}: unreachable: connection refused"),
    );

    // weftd: the same sentence on /readyz, and the etcd metrics say why.
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let bad = Weftd::start(
        "node-wrong-ca",
        "192.0.2.15",
        &tls_args(&ep, Some(&tls.other_ca), good),
        &[],
    );
    let want = format!("etcd at {ep}: etcd's certificate is not signed by --etcd-cafile");
    let body = wait_for("weftd to report the wrong CA", READY, || async {
        match bad.readyz() {
            Some((503, b)) if b.contains(&want) => Some(b),
            _ => None,
        }
    })
    .await;
    assert_eq!(body.matches("--etcd-cafile").count(), 1, "{body}");
    let m = bad.metrics();
    assert_eq!(metric(&m, "weft_etcd_up"), Some(0.0), "{m}");
    assert_eq!(
        metric(&m, "weft_etcd_last_success_timestamp_seconds"),
        Some(0.0),
        "{m}"
    );
    let requests = metric(&m, "weft_etcd_requests_total").unwrap();
    let tls_errors = metric(&m, r#"weft_etcd_request_errors_total{reason="tls"}"#).unwrap();
    assert!(
        tls_errors >= 1.0 && tls_errors <= requests,
        "every request failed on TLS: {tls_errors} of {requests}\n{m}"
    );
    for other in ["unreachable", "timeout", "unavailable", "auth", "rejected"] {
        let name = format!(r#"weft_etcd_request_errors_total{{reason="{other}"}}"#);
        assert_eq!(metric(&m, &name), Some(0.0), "{name}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_shows_in_the_metrics_at_once_and_recovery_too() {
    let mut etcd = Etcd::start_tls().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let before_start = unix_now();
    let w = Weftd::start("node-outage", "192.0.2.16", &etcd.cli_args(), &[]);
    w.wait_ready(READY).await;
    let m = w.metrics();
    assert_eq!(metric(&m, "weft_etcd_up"), Some(1.0), "{m}");
    let last = metric(&m, "weft_etcd_last_success_timestamp_seconds").unwrap();
    assert!(
        (before_start..=unix_now()).contains(&last),
        "last contact {last} is during this test\n{m}"
    );
    for reason in [
        "unreachable",
        "timeout",
        "tls",
        "unavailable",
        "auth",
        "rejected",
    ] {
        let name = format!(r#"weft_etcd_request_errors_total{{reason="{reason}"}}"#);
        assert_eq!(metric(&m, &name), Some(0.0), "{name}\n{m}");
    }

    // etcd stops: the watch breaks, the re-list fails, and the gauge says so.
    etcd.stop_member(0);
    let stopped_at = unix_now();
    let unreachable = |m: &str| {
        metric(m, r#"weft_etcd_request_errors_total{reason="unreachable"}"#).unwrap_or(0.0)
    };
    let m = wait_for(
        "weft_etcd_up to drop to 0 with the failures counted as unreachable",
        READY,
        || async {
            let m = w.metrics();
            (metric(&m, "weft_etcd_up") == Some(0.0) && unreachable(&m) >= 1.0).then_some(m)
        },
    )
    .await;
    let last = metric(&m, "weft_etcd_last_success_timestamp_seconds").unwrap();
    assert!(
        last <= stopped_at,
        "no contact after the stop: {last} > {stopped_at}"
    );
    let requests = metric(&m, "weft_etcd_requests_total").unwrap();
    let unreachable = unreachable(&m);
    assert!(
        unreachable <= requests + 1.0,
        "at most one per request, plus the broken watch: {unreachable} of {requests}\n{m}"
    );
    assert_eq!(
        metric(&m, r#"weft_etcd_request_errors_total{reason="tls"}"#),
        Some(0.0),
        "{m}"
    );
    assert_eq!(w.readyz().map(|r| r.0), Some(200), "the node stays ready");

    // Back: contact again.
    etcd.restart_member(0).await;
    let back_at = unix_now();
    wait_for("weft_etcd_up to return to 1", READY, || async {
        let m = w.metrics();
        let up = metric(&m, "weft_etcd_up") == Some(1.0);
        let last = metric(&m, "weft_etcd_last_success_timestamp_seconds").unwrap_or(0.0);
        (up && last >= back_at - 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_metrics_count_each_failed_request_once_by_reason() {
    let etcd = Etcd::start().await;
    let refused = format!("http://127.0.0.1:{}", weft_tests::free_port());
    let mut o = EtcdOptions::new(vec![refused.clone(), etcd.endpoint(0)], PREFIX);
    o.request_timeout = Duration::from_secs(3);
    o.watch_progress_interval = Duration::from_millis(200);
    let m = StoreMetrics::default();
    let store = EtcdStore::connect(&o)
        .await
        .unwrap()
        .with_metrics(m.clone());
    let errors = |r: &'static str| m.errors.get_or_create(&[("reason", r)]).get();
    assert_eq!((m.up.get(), m.last_success_seconds.get()), (0, 0));

    // The first member refuses; the request moves on to the second and succeeds.
    let t0 = unix_now() as i64;
    store.get("x").await.unwrap();
    assert_eq!(m.requests.get(), 2);
    assert_eq!(errors("unreachable"), 1);
    assert_eq!(m.up.get(), 1, "the request succeeded");
    assert!(m.last_success_seconds.get() >= t0);

    // An idle watch still counts as contact: etcd answers its progress requests.
    let mut watch = store.watch(weft_agent::store::Revision(1)).await.unwrap();
    // Poll it as the agent does; it yields nothing (no events), but keeps asking.
    let poller = tokio::spawn(async move { futures::StreamExt::next(&mut watch).await.is_some() });
    let requests = m.requests.get();
    let since = m.last_success_seconds.get();
    wait_for(
        "an idle watch to refresh the last contact",
        READY,
        || async { (m.last_success_seconds.get() > since).then_some(()) },
    )
    .await;
    assert_eq!(
        m.requests.get(),
        requests,
        "progress requests are not counted as requests"
    );
    poller.abort();

    // Only a refusing member: the request fails, once per member tried, and etcd is down.
    let mut o = EtcdOptions::new(vec![refused.clone()], PREFIX);
    o.request_timeout = Duration::from_secs(3);
    let m = StoreMetrics::default();
    let store = EtcdStore::connect(&o)
        .await
        .unwrap()
        .with_metrics(m.clone());
    let err = store.get("x").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Etcd { cause: EtcdCause::Refused, endpoint, .. } if *endpoint == refused),
        "{err}"
    );
    assert_eq!(m.requests.get(), 1);
    assert_eq!(m.up.get(), 0);
    let errors = |r: &'static str| m.errors.get_or_create(&[("reason", r)]).get();
    assert_eq!(errors("unreachable"), 1);
    assert_eq!(errors("tls") + errors("timeout") + errors("rejected"), 0);
}

/// The fenced block in docs/etcd.md that shows the recipe.
fn documented_recipe() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/etcd.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find("```sh\n#!/bin/sh\n")
        .expect("docs/etcd.md shows the recipe as a sh block starting with #!/bin/sh");
    let body = &text[start + "```sh\n".len()..];
    body[..body.find("```\n").expect("the block ends")].to_string()
}

#[test]
fn docs_show_exactly_the_certificate_recipe_the_tests_run() {
    let script = std::fs::read_to_string(cert_script()).unwrap();
    assert_eq!(
        documented_recipe(),
        script,
        "docs/etcd.md must show deploy/etcd-certs.sh verbatim"
    );
    // The comparison can fail: a one-character drift is seen.
    assert_ne!(documented_recipe(), script.replacen("825", "826", 1));
}
