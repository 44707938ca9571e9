//! The Helm chart in `deploy/chart/weft`: it lints clean, every value set renders documents
//! that pass the Kubernetes schemas offline (kubernetes-validate, strict), each value does
//! what it says, bad values are refused naming the value, its default render is the kustomize
//! base (so the two cannot drift), its README documents every value, and the net-conf.json it
//! renders is one weftd's own parser accepts.
//!
//! PodMonitor and PrometheusRule are Prometheus Operator CRDs, which kubernetes-validate has
//! no schemas for: they are checked here field by field instead.
//!
//! Nothing here talks to a cluster or the network. helm and kubectl are the versions
//! `tests/install-deps.sh` installs under /opt/weft-test-tools; a missing tool fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};
use weft_agent::config::NetConfig;
use weft_backends::BackendKind;
use weft_tests::kube::{self, documents, resource_name, TOOL_TIMEOUT};
use weft_tests::markdown;
use weft_tests::procs::run_bounded;
use weft_tests::repo_root;

/// Where tests/install-deps.sh puts the pinned helm and kubectl.
const TOOLS_DIR: &str = "/opt/weft-test-tools";
const HELM: &str = "helm-4.1.4/helm";
const KUBECTL: &str = "kubectl-1.35.2/kubectl";
const INSTALL_HINT: &str = "run `sudo bash tests/install-deps.sh`";
/// An older Kubernetes still common in production, and the one of the pinned kubectl.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.35.0"];
const RELEASE: &str = "weft";
const NAMESPACE: &str = "kube-weft";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn tool(rel: &str) -> PathBuf {
    let path = PathBuf::from(TOOLS_DIR).join(rel);
    assert!(
        path.is_file(),
        "{} not found: {INSTALL_HINT}",
        path.display()
    );
    path
}

fn chart_dir() -> PathBuf {
    repo_root().join("deploy/chart/weft")
}

/// The text of `rel`, a file of the chart.
fn chart_file(rel: &str) -> String {
    weft_tests::repo_file(&format!("deploy/chart/weft/{rel}"))
}

/// Chart.yaml, parsed.
fn chart_yaml() -> Value {
    documents(&chart_file("Chart.yaml"))
        .pop()
        .expect("Chart.yaml")
}

/// `helm template` of the chart with `values` (a YAML/JSON document) on top of the defaults.
fn try_render(values: &Value) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("values.json");
    std::fs::write(&file, values.to_string()).expect("write values");
    let mut cmd = Command::new(tool(HELM));
    cmd.args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE, "--values"])
        .arg(&file);
    let (code, out, err) = run_bounded(cmd, TOOL_TIMEOUT);
    if code == 0 {
        Ok(out)
    } else {
        Err(err)
    }
}

fn render(values: &Value) -> String {
    try_render(values).unwrap_or_else(|e| panic!("helm template with {values} failed:\n{e}"))
}

fn rendered_base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut cmd = Command::new(tool(KUBECTL));
        cmd.arg("kustomize").arg(repo_root().join("deploy/base"));
        let (code, out, err) = run_bounded(cmd, TOOL_TIMEOUT);
        assert_eq!(code, 0, "kubectl kustomize deploy/base failed:\n{err}");
        out
    })
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the rendered documents"))
}

fn daemonset(docs: &[Value]) -> &Value {
    find(docs, "DaemonSet", "weftd")
}

fn weftd(docs: &[Value]) -> &Value {
    daemonset(docs)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "weftd"))
        .expect("a weftd container")
}

fn args(docs: &[Value]) -> Vec<String> {
    weftd(docs)["args"]
        .as_array()
        .expect("weftd args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v["name"] == name)
}

fn config_data(docs: &[Value]) -> &serde_json::Map<String, Value> {
    find(docs, "ConfigMap", "weft-config")["data"]
        .as_object()
        .expect("ConfigMap data")
}

fn net_conf_text(docs: &[Value]) -> &str {
    config_data(docs)["net-conf.json"]
        .as_str()
        .expect("net-conf.json is a string")
}

fn net_conf(docs: &[Value]) -> Value {
    serde_json::from_str(net_conf_text(docs)).expect("net-conf.json is JSON")
}

/// The value sets every render test runs, by name: each changes what its test asserts.
fn value_sets() -> Vec<(&'static str, Value)> {
    vec![
        ("defaults", json!({})),
        (
            "etcd-tls",
            json!({"etcd": {"endpoints": ["https://10.0.0.5:2379", "https://10.0.0.6:2379"],
                            "prefix": "/weft/network",
                            "tls": {"enabled": true, "secretName": "etcd-client"}}}),
        ),
        (
            "host-gw",
            json!({"network": {"backend": {"type": "host-gw"}}, "ipMasq": false,
                   "iface": {"names": ["eth1"], "publicIP": "192.0.2.10"}}),
        ),
        (
            "dual-stack",
            json!({"network": {"ipv6Network": "fd00:10:244::/56", "ipv6SubnetLen": 64,
                               "subnetMin": "10.244.4.0", "subnetMax": "10.244.200.0"}}),
        ),
        (
            "wireguard",
            json!({"network": {"backend": {"type": "wireguard", "wireguard": {
                "listenPort": 51900, "persistentKeepaliveInterval": 25, "mode": "auto",
                "psk": "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowMTIzNDU=",
                "userspace": {"enabled": true}}}}}),
        ),
        (
            "monitoring",
            json!({"monitoring": {"podMonitor": {"enabled": true, "interval": "15s",
                                                 "labels": {"release": "prom"}},
                                  "rules": {"enabled": true, "labels": {"release": "prom"}}}}),
        ),
        (
            "custom",
            json!({"image": {"repository": "registry.example/weft", "digest": DIGEST,
                             "pullPolicy": "Always", "pullSecrets": ["regcred"]},
                   "extraArgs": ["--etcd-request-timeout=10s"],
                   "extraEnv": [{"name": "WEFTD_EXTRA", "value": "1"}],
                   "extraVolumes": [{"name": "extra", "emptyDir": {}}],
                   "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
                   "log": {"format": "json", "level": "debug"},
                   "cni": {"binDir": "/usr/libexec/cni", "confDir": "/etc/cni/conf.d"}}),
        ),
    ]
}

fn rendered(name: &str) -> Vec<Value> {
    let values = value_sets()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .expect("a value set of that name");
    documents(&render(&values))
}

/// The operator's custom resources, which kubernetes-validate cannot check.
fn is_crd_kind(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn helm_lint_strict_is_clean() {
    let mut cmd = Command::new(tool(HELM));
    cmd.args(["lint", "--strict"]).arg(chart_dir());
    let (code, out, err) = run_bounded(cmd, TOOL_TIMEOUT);
    assert_eq!(code, 0, "helm lint --strict failed:\n{out}{err}");
    assert!(
        !out.contains("[WARNING]") && !out.contains("[ERROR]"),
        "helm lint reported problems:\n{out}"
    );
}

#[test]
fn every_value_set_passes_schema_validation() {
    let validator = tool("kubernetes-validate/bin/kubernetes-validate");
    for (name, values) in value_sets() {
        let docs = documents(&render(&values));
        let core: Vec<String> = docs
            .iter()
            .filter(|d| !is_crd_kind(d))
            .map(|d| serde_json::to_string(d).unwrap())
            .collect();
        // JSON is YAML: one document per line, separated.
        let stream = core.join("\n---\n");
        kube::validate(&validator, &stream, &KUBERNETES_VERSIONS)
            .unwrap_or_else(|e| panic!("value set {name}: {e}"));
    }
}

/// The default render (with the Namespace, which the base has) is the base, object for
/// object: the chart only adds release labels, a config checksum, and the pod template's
/// labels in the selector.
#[test]
fn default_render_is_the_kustomize_base() {
    let chart = documents(&render(&json!({"namespace": {"create": true}})));
    let base = documents(rendered_base());
    let names = |docs: &[Value]| docs.iter().map(resource_name).collect::<BTreeSet<_>>();
    assert_eq!(names(&chart), names(&base), "same kinds and names");

    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        let b = base.iter().find(|d| d["kind"] == kind).unwrap();
        let c = chart.iter().find(|d| d["kind"] == kind).unwrap();
        for field in [
            "rules",
            "roleRef",
            "subjects",
            "automountServiceAccountToken",
        ] {
            assert_eq!(c[field], b[field], "{kind} {field}");
        }
        assert_eq!(c["metadata"]["namespace"], b["metadata"]["namespace"]);
        for (k, v) in b["metadata"]["labels"].as_object().unwrap() {
            assert_eq!(&c["metadata"]["labels"][k], v, "{kind} label {k}");
        }
    }

    let (b, c) = (daemonset(&base), daemonset(&chart));
    assert_eq!(
        c["spec"]["template"]["spec"], b["spec"]["template"]["spec"],
        "the pod spec: security, args, env, volumes, probes, resources"
    );
    assert_eq!(c["spec"]["updateStrategy"], b["spec"]["updateStrategy"]);
    for (k, v) in b["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &c["spec"]["template"]["metadata"]["labels"][k], v,
            "pod label {k}"
        );
    }

    let (b, c) = (config_data(&base), config_data(&chart));
    assert_eq!(
        b.keys().collect::<Vec<_>>(),
        c.keys().collect::<Vec<_>>(),
        "ConfigMap keys"
    );
    for key in ["net-conf.json", "cni-conf.json"] {
        let parse = |v: &Value| -> Value { serde_json::from_str(v.as_str().unwrap()).unwrap() };
        assert_eq!(parse(&c[key]), parse(&b[key]), "ConfigMap {key}");
    }
    assert_eq!(c["etcd-endpoints"], b["etcd-endpoints"]);

    // Without namespace.create there is no Namespace, and nothing else changes.
    let plain = documents(&render(&json!({})));
    assert!(!plain.iter().any(|d| d["kind"] == "Namespace"));
    assert_eq!(plain.len() + 1, chart.len());
}

#[test]
fn etcd_tls_mounts_the_secret_and_passes_the_files() {
    let docs = rendered("etcd-tls");
    let a = args(&docs);
    for flag in [
        "--etcd-cafile=/etc/weft/etcd-tls/ca.crt",
        "--etcd-certfile=/etc/weft/etcd-tls/tls.crt",
        "--etcd-keyfile=/etc/weft/etcd-tls/tls.key",
        "--etcd-prefix=/weft/network",
    ] {
        assert!(a.iter().any(|x| x == flag), "{flag} in {a:?}");
    }
    let pod = &daemonset(&docs)["spec"]["template"]["spec"];
    let vol = named(&pod["volumes"], "etcd-tls").expect("etcd-tls volume");
    assert_eq!(vol["secret"]["secretName"], "etcd-client");
    assert_eq!(vol["secret"]["defaultMode"], 256);
    let mount = named(&weftd(&docs)["volumeMounts"], "etcd-tls").expect("etcd-tls mount");
    assert_eq!(mount["mountPath"], "/etc/weft/etcd-tls");
    assert_eq!(mount["readOnly"], true);
    assert_eq!(
        config_data(&docs)["etcd-endpoints"],
        "https://10.0.0.5:2379,https://10.0.0.6:2379"
    );
    let defaults = rendered("defaults");
    assert!(!args(&defaults).iter().any(|x| x.starts_with("--etcd-")));
    assert!(named(
        &daemonset(&defaults)["spec"]["template"]["spec"]["volumes"],
        "etcd-tls"
    )
    .is_none());
}

#[test]
fn host_gw_sets_the_backend_interface_and_no_masquerade() {
    let docs = rendered("host-gw");
    assert_eq!(net_conf(&docs)["Backend"], json!({"Type": "host-gw"}));
    let a = args(&docs);
    assert!(!a.iter().any(|x| x == "--ip-masq"), "{a:?}");
    assert!(a.iter().any(|x| x == "--iface=eth1"), "{a:?}");
    assert!(a.iter().any(|x| x == "--public-ip=192.0.2.10"), "{a:?}");
}

#[test]
fn dual_stack_enables_ipv6() {
    let conf = net_conf(&rendered("dual-stack"));
    assert_eq!(conf["EnableIPv6"], true);
    assert_eq!(conf["IPv6Network"], "fd00:10:244::/56");
    assert_eq!(conf["IPv6SubnetLen"], 64);
    assert_eq!(conf["SubnetMin"], "10.244.4.0");
    assert_eq!(conf["SubnetMax"], "10.244.200.0");
    assert_eq!(conf["Network"], "10.244.0.0/16");
}

#[test]
fn wireguard_sets_its_options_and_the_userspace_implementation() {
    let docs = rendered("wireguard");
    let backend = &net_conf(&docs)["Backend"];
    assert_eq!(backend["Type"], "wireguard");
    assert_eq!(backend["ListenPort"], 51900);
    assert_eq!(backend["ListenPortV6"], 51821);
    assert_eq!(backend["PersistentKeepaliveInterval"], 25);
    assert_eq!(backend["Mode"], "auto");
    assert!(backend.get("VNI").is_none(), "no vxlan keys: {backend}");
    let a = args(&docs);
    assert!(a
        .iter()
        .any(|x| x == "--wireguard-implementation=userspace"));
    assert!(a
        .iter()
        .any(|x| x == "--wireguard-userspace=/usr/bin/wireguard-go"));
    let pod = &daemonset(&docs)["spec"]["template"]["spec"];
    assert_eq!(
        named(&pod["volumes"], "dev-net-tun").unwrap()["hostPath"],
        json!({"path": "/dev/net/tun", "type": "CharDevice"})
    );
    let mounts = &weftd(&docs)["volumeMounts"];
    assert_eq!(
        named(mounts, "run-wireguard").unwrap()["mountPath"],
        "/var/run/wireguard"
    );
    // userspace.enabled means nothing to the other backends.
    let vx = documents(&render(
        &json!({"network": {"backend": {"wireguard": {"userspace": {"enabled": true}}}}}),
    ));
    assert!(!args(&vx).iter().any(|x| x.starts_with("--wireguard")));
}

#[test]
fn monitoring_renders_a_pod_monitor_and_the_rules_file() {
    let docs = rendered("monitoring");
    let pm = find(&docs, "PodMonitor", "weft");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], NAMESPACE);
    assert_eq!(pm["metadata"]["labels"]["release"], "prom");
    // job = the value of the pods' app.kubernetes.io/name label, which is weft.
    assert_eq!(pm["spec"]["jobLabel"], "app.kubernetes.io/name");
    let pod_labels = &daemonset(&docs)["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["app.kubernetes.io/name"], "weft");
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[k], v,
            "the PodMonitor selects weftd's pods ({k})"
        );
    }
    assert_eq!(
        pm["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    let endpoints = pm["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    assert_eq!(ep["port"], "healthz");
    assert!(named(&weftd(&docs)["ports"], "healthz").is_some());
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["interval"], "15s");
    let targets: Vec<&str> = ep["relabelings"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(ep["metricRelabelings"].as_array().into_iter().flatten())
        .filter_map(|r| r["targetLabel"].as_str())
        .collect();
    assert!(
        !targets.contains(&"node"),
        "no `node` target label: {targets:?}"
    );
    let allowed: BTreeSet<&str> = [
        "jobLabel",
        "selector",
        "namespaceSelector",
        "podMetricsEndpoints",
    ]
    .into();
    for key in pm["spec"].as_object().unwrap().keys() {
        assert!(
            allowed.contains(key.as_str()),
            "unexpected PodMonitor spec key {key}"
        );
    }

    let rule = find(&docs, "PrometheusRule", "weft");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let from_file = documents(&chart_file("files/prometheus-rules.yaml"))
        .pop()
        .expect("a rules document");
    assert_eq!(
        rule["spec"], from_file,
        "the spec is files/prometheus-rules.yaml"
    );
    let groups = rule["spec"]["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    for g in groups {
        assert!(g["name"].is_string());
        for r in g["rules"].as_array().expect("rules") {
            assert!(r["expr"].is_string(), "every rule has an expr: {r}");
            assert!(r["alert"].is_string() || r["record"].is_string(), "{r}");
        }
    }

    let off = rendered("defaults");
    assert!(!off.iter().any(is_crd_kind), "monitoring is off by default");
}

#[test]
fn custom_image_args_env_volumes_and_cni_dirs() {
    let docs = rendered("custom");
    let pod = &daemonset(&docs)["spec"]["template"]["spec"];
    let image = format!("registry.example/weft@{DIGEST}");
    for list in ["containers", "initContainers"] {
        for c in pod[list].as_array().unwrap() {
            assert_eq!(c["image"], image.as_str(), "{list} {}", c["name"]);
            assert_eq!(c["imagePullPolicy"], "Always");
        }
    }
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    let a = args(&docs);
    assert_eq!(
        a.last().unwrap(),
        "--etcd-request-timeout=10s",
        "extra args come last"
    );
    assert!(a.iter().any(|x| x == "--log-format=json"));
    let c = weftd(&docs);
    assert_eq!(named(&c["env"], "WEFTD_EXTRA").unwrap()["value"], "1");
    assert_eq!(named(&c["env"], "WEFT_LOG").unwrap()["value"], "debug");
    assert_eq!(
        named(&c["volumeMounts"], "extra").unwrap()["mountPath"],
        "/extra"
    );
    assert!(named(&pod["volumes"], "extra").is_some());
    assert_eq!(
        named(&pod["volumes"], "cni-bin").unwrap()["hostPath"]["path"],
        "/usr/libexec/cni"
    );
    assert_eq!(
        named(&pod["volumes"], "cni-conf").unwrap()["hostPath"]["path"],
        "/etc/cni/conf.d"
    );

    let tagged = documents(&render(&json!({"image": {"tag": "9.9.9"}})));
    assert_eq!(weftd(&tagged)["image"], "localhost/weft:9.9.9");
    let default = rendered("defaults");
    let app_version = chart_yaml()["appVersion"]
        .as_str()
        .expect("appVersion")
        .to_string();
    assert_eq!(
        weftd(&default)["image"],
        format!("localhost/weft:{app_version}").as_str()
    );
}

#[test]
fn skipping_cni_install_drops_the_init_container_and_flags() {
    let docs = documents(&render(&json!({"cni": {"install": false}})));
    let pod = &daemonset(&docs)["spec"]["template"]["spec"];
    assert!(pod.get("initContainers").is_none());
    assert!(!args(&docs).iter().any(|x| x.contains("cni")));
}

#[test]
fn chart_versions_match_the_workspace() {
    // This crate's version is the workspace's.
    let version = env!("CARGO_PKG_VERSION");
    let chart = chart_yaml();
    assert_eq!(chart["appVersion"], version, "appVersion");
    assert_eq!(chart["version"], version, "version");
}

#[test]
fn bad_values_are_refused_naming_the_value() {
    for (values, named) in [
        (json!({"ipMasq": "notabool"}), "ipMasq"),
        (json!({"noSuchKey": 1}), "noSuchKey"),
        (json!({"network": {"vni": 1}}), "vni"),
        (
            json!({"network": {"network": "10.244.0.0/33"}}),
            "/network/network",
        ),
        (
            json!({"network": {"network": "10.300.0.0/16"}}),
            "/network/network",
        ),
        (
            json!({"network": {"ipv6Network": "10.0.0.0/8"}}),
            "/network/ipv6Network",
        ),
        (
            json!({"network": {"backend": {"type": "udp"}}}),
            "/network/backend/type",
        ),
        (json!({"log": {"format": "xml"}}), "/log/format"),
        (
            json!({"image": {"pullPolicy": "Sometimes"}}),
            "/image/pullPolicy",
        ),
        (json!({"image": {"digest": "latest"}}), "/image/digest"),
    ] {
        let err = try_render(&values).expect_err(&format!("{values} is refused"));
        assert!(
            err.contains(named),
            "the error for {values} names {named}:\n{err}"
        );
    }
}

/// Every leaf of values.yaml, as `a.b.c` → its default rendered as JSON.
fn leaves(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() && !is_free_form(prefix) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// Maps documented as one value (their keys are the operator's, not the chart's).
fn is_free_form(key: &str) -> bool {
    key == "nodeSelector" || key == "updateStrategy" || key.starts_with("resources.")
}

#[test]
fn readme_documents_every_value_with_its_default() {
    let values = documents(&chart_file("values.yaml"))
        .pop()
        .expect("values.yaml");
    let mut expected = BTreeMap::new();
    leaves("", &values, &mut expected);

    let readme = chart_file("README.md");
    let mut documented = BTreeMap::new();
    for cells in markdown::table_rows(&readme) {
        // | `key` | type | `default` | description |
        let key = cells[0].trim_matches('`').to_string();
        let default = cells[2].trim_matches('`');
        let default: Value = serde_json::from_str(default)
            .unwrap_or_else(|e| panic!("README default of {key} is not JSON ({default}): {e}"));
        documented.insert(key, default);
    }
    for (key, default) in &expected {
        let doc = documented
            .get(key)
            .unwrap_or_else(|| panic!("README.md's values table lacks {key}"));
        assert_eq!(doc, default, "README.md's default of {key}");
    }
    for key in documented.keys() {
        assert!(
            expected.contains_key(key),
            "README.md documents {key}, which values.yaml lacks"
        );
    }
}

#[test]
fn rendered_net_conf_is_what_weftd_parses() {
    let parse_docs = |name: &str, docs: &[Value]| {
        NetConfig::parse(net_conf_text(docs).as_bytes())
            .unwrap_or_else(|e| panic!("weftd rejects the {name} net-conf.json: {e}"))
    };
    let parse = |name: &str| parse_docs(name, &rendered(name));
    let d = parse("defaults");
    let v4 = d.ipv4.expect("IPv4 pool");
    assert_eq!(v4.network.to_string(), "10.244.0.0/16");
    assert_eq!(v4.subnet_len, 24);
    assert!(d.ipv6.is_none());
    assert_eq!(d.backend.kind, BackendKind::Vxlan);
    assert_eq!((d.backend.vni, d.backend.port), (1, 8472));
    assert!(d.notices.is_empty(), "no notices: {:?}", d.notices.len());

    let ds = parse("dual-stack");
    let v6 = ds.ipv6.expect("IPv6 pool");
    assert_eq!(v6.network.to_string(), "fd00:10:244::/56");
    assert_eq!(v6.subnet_len, 64);
    let v4 = ds.ipv4.unwrap();
    assert_eq!(v4.min.to_string(), "10.244.4.0");
    assert_eq!(v4.max.to_string(), "10.244.200.0");

    let wg = parse("wireguard");
    assert_eq!(wg.backend.kind, BackendKind::Wireguard);
    assert_eq!(wg.backend.wireguard.listen_port, 51900);
    assert_eq!(wg.backend.wireguard.keepalive, 25);
    assert!(wg.backend.wireguard.psk.is_some());

    assert_eq!(parse("host-gw").backend.kind, BackendKind::HostGw);

    let v6only = documents(&render(
        &json!({"network": {"network": "", "ipv6Network": "fd00::/48"}}),
    ));
    let c = parse_docs("IPv6-only", &v6only);
    assert!(c.ipv4.is_none() && c.ipv6.is_some());
}
