//! The cluster manifests in `deploy/`: the kustomize base and the etcd-tls and
//! wireguard-userspace overlays render with `kubectl kustomize`, every rendered document validates against the Kubernetes OpenAPI
//! schemas offline (`kubernetes-validate`, strict: unknown fields are errors), and the
//! settings that decide what weftd may do on a node are the ones deploy/README.md promises.
//!
//! Nothing here talks to a cluster or the network. kubectl and kubernetes-validate must be
//! installed (`tests/install-deps.sh`); a missing tool fails the test, it is never skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};
use weft_agent::config::NetConfig;
use weft_tests::kube::{self, documents, resource_name, TOOL_TIMEOUT};
use weft_tests::procs::run_bounded;
use weft_tests::repo_root;

const INSTALL_HINT: &str = "run `sudo bash tests/install-deps.sh` (it installs kubectl from \
     Debian's kubernetes-client when missing, and kubernetes-validate from PyPI)";
/// The Kubernetes versions whose schemas every rendered document must satisfy: an older
/// release still common in production, and the newest the pinned kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

const NAMESPACE: &str = "kube-weft";
const SECRET_DIR: &str = "/etc/weft/etcd-tls";
/// Where the image ships wireguard-go (deploy/image/build.sh), which the wireguard-userspace
/// overlay has weftd start.
const WIREGUARD_GO: &str = "/usr/bin/wireguard-go";
/// The flags the wireguard-userspace overlay appends to the base's weftd args.
const WIREGUARD_USERSPACE_ARGS: [&str; 2] = [
    "--wireguard-implementation=userspace",
    "--wireguard-userspace=/usr/bin/wireguard-go",
];
/// Where wireguard-go and weftd keep the UAPI socket, pid and log in the container.
const WIREGUARD_SOCKET_DIR: &str = "/var/run/wireguard";

fn require_program(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH: {INSTALL_HINT}"))
}

/// `kubectl kustomize deploy/<dir>`; panics with kubectl's message when it fails.
fn render_uncached(dir: &str) -> String {
    let kubectl = require_program("kubectl");
    let mut cmd = Command::new(kubectl);
    cmd.arg("kustomize")
        .arg(repo_root().join("deploy").join(dir));
    let (code, out, err) = run_bounded(cmd, TOOL_TIMEOUT);
    assert_eq!(code, 0, "kubectl kustomize deploy/{dir} failed:\n{err}");
    assert!(!out.trim().is_empty(), "deploy/{dir} rendered nothing");
    out
}

fn rendered_base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| render_uncached("base"))
}

fn rendered_overlay() -> &'static str {
    static OVERLAY: OnceLock<String> = OnceLock::new();
    OVERLAY.get_or_init(|| render_uncached("overlays/etcd-tls"))
}

fn rendered_wireguard_userspace() -> &'static str {
    static OVERLAY: OnceLock<String> = OnceLock::new();
    OVERLAY.get_or_init(|| render_uncached("overlays/wireguard-userspace"))
}

/// Validate against every version in [`KUBERNETES_VERSIONS`].
fn validate(yaml: &str) -> Result<(), String> {
    kube::validate(
        &require_program("kubernetes-validate"),
        yaml,
        &KUBERNETES_VERSIONS,
    )
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the rendered documents"))
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(resource_name).collect()
}

fn pod_spec(docs: &[Value]) -> &Value {
    &find(docs, "DaemonSet", "weftd")["spec"]["template"]["spec"]
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod[list]
        .as_array()
        .unwrap_or_else(|| panic!("pod spec has no {list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} entry named {name}"))
}

fn env_var<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("container {} has no env {name}", c["name"]))
}

fn string_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// (mountPath, volume name, read-only) of every volume mount of container `c`.
fn mounts(c: &Value) -> Vec<(String, String, bool)> {
    c["volumeMounts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["mountPath"].as_str().unwrap_or_default().to_string(),
                        m["name"].as_str().unwrap_or_default().to_string(),
                        m["readOnly"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume named {name}"))
}

/// The hostPath behind the volume mounted at `path` in container `c`.
fn host_path_at(pod: &Value, c: &Value, path: &str) -> (String, bool) {
    let (_, vol, ro) = mounts(c)
        .into_iter()
        .find(|(p, _, _)| p == path)
        .unwrap_or_else(|| panic!("container {} mounts nothing at {path}", c["name"]));
    let host = volume(pod, &vol)["hostPath"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("volume {vol} (at {path}) is not a hostPath"))
        .to_string();
    (host, ro)
}

// ---------------------------------------------------------------------------------------------
// Rendering and schema validation

#[test]
fn base_renders_and_passes_schema_validation() {
    let yaml = rendered_base();
    assert_eq!(
        kinds(&documents(yaml)),
        [
            "clusterrole/weft",
            "clusterrolebinding/weft",
            "configmap/weft-config",
            "daemonset/weftd",
            "namespace/kube-weft",
            "serviceaccount/weft",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        "the base's resources"
    );
    if let Err(e) = validate(yaml) {
        panic!("deploy/base does not validate:\n{e}");
    }
}

#[test]
fn etcd_tls_overlay_renders_and_passes_schema_validation() {
    let yaml = rendered_overlay();
    assert_eq!(
        kinds(&documents(yaml)),
        kinds(&documents(rendered_base())),
        "the overlay adds or drops no resource (the Secret is the operator's)"
    );
    if let Err(e) = validate(yaml) {
        panic!("deploy/overlays/etcd-tls does not validate:\n{e}");
    }
}

#[test]
fn wireguard_userspace_overlay_renders_and_passes_schema_validation() {
    let yaml = rendered_wireguard_userspace();
    assert_eq!(
        kinds(&documents(yaml)),
        kinds(&documents(rendered_base())),
        "the overlay adds or drops no resource"
    );
    if let Err(e) = validate(yaml) {
        panic!("deploy/overlays/wireguard-userspace does not validate:\n{e}");
    }
}

const BROKEN_DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: broken
  namespace: kube-weft
spec:
  selector:
    matchLabels: {app: broken}
  template:
    metadata:
      labels: {app: broken}
    spec:
      hostNetwork: "yes"
      containers:
        - name: c
          image: localhost/weft:0.1.0
"#;

const UNKNOWN_FIELD: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: typo
  namespace: kube-weft
automountServiceAccountTokens: false
"#;

const UNKNOWN_KIND: &str = r#"
apiVersion: weft.example.invalid/v1
kind: Frobnicator
metadata:
  name: nothing-knows-me
"#;

/// The check above can fail: a wrong type, an unknown field (strict mode) and a kind with no
/// schema are each rejected, with the validator's message.
#[test]
fn validation_rejects_broken_documents() {
    let e = validate(BROKEN_DAEMONSET).expect_err("hostNetwork: \"yes\" must be rejected");
    assert!(
        e.contains("daemonset/broken") && e.contains("hostNetwork"),
        "the message names the resource and the field: {e}"
    );
    let e = validate(UNKNOWN_FIELD).expect_err("an unknown field must be rejected");
    assert!(
        e.contains("automountServiceAccountTokens"),
        "the message names the unknown field: {e}"
    );
    let e = validate(UNKNOWN_KIND).expect_err("a kind without a schema must not pass");
    assert!(e.contains("Frobnicator"), "the message names the kind: {e}");
    // A broken document among good ones fails the whole stream.
    let mixed = format!("{}---\n{BROKEN_DAEMONSET}", rendered_base());
    assert!(validate(&mixed).is_err());
}

// ---------------------------------------------------------------------------------------------
// What the base promises

#[test]
fn namespace_is_labelled_privileged_for_pod_security() {
    let docs = documents(rendered_base());
    let labels = &find(&docs, "Namespace", NAMESPACE)["metadata"]["labels"];
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            labels[format!("pod-security.kubernetes.io/{mode}")],
            "privileged",
            "pod-security {mode} label: {labels}"
        );
    }
    for d in &docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding") {
            assert_eq!(
                d["metadata"]["namespace"],
                NAMESPACE,
                "{} lives in {NAMESPACE}",
                resource_name(d)
            );
        }
    }
}

#[test]
fn rbac_grants_only_reading_nodes_and_no_token_is_mounted() {
    let docs = documents(rendered_base());
    let role = find(&docs, "ClusterRole", "weft");
    assert_eq!(
        role["rules"],
        json!([{ "apiGroups": [""], "resources": ["nodes"], "verbs": ["get"] }]),
        "the ClusterRole is exactly `get` on nodes"
    );
    for rule in role["rules"].as_array().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !string_list(&rule[field]).contains(&"*"),
                "no wildcard in {field}"
            );
        }
        assert!(!string_list(&rule["resources"]).contains(&"secrets"));
        for verb in string_list(&rule["verbs"]) {
            assert!(
                matches!(verb, "get" | "list" | "watch"),
                "write verb {verb} granted"
            );
        }
        assert!(rule.get("nonResourceURLs").is_none());
    }
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "Role" || d["kind"] == "RoleBinding"),
        "no namespaced roles"
    );
    let binding = find(&docs, "ClusterRoleBinding", "weft");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weft"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{ "kind": "ServiceAccount", "name": "weft", "namespace": NAMESPACE }])
    );
    let sa = find(&docs, "ServiceAccount", "weft");
    assert_eq!(sa["automountServiceAccountToken"], false);
    let pod = pod_spec(&docs);
    assert_eq!(pod["serviceAccountName"], "weft");
    assert_eq!(pod["automountServiceAccountToken"], false);
}

#[test]
fn daemonset_runs_on_every_node_in_the_host_network() {
    let docs = documents(rendered_base());
    let ds = find(&docs, "DaemonSet", "weftd");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let selector = &ds["spec"]["selector"]["matchLabels"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert_eq!(selector["app.kubernetes.io/name"], "weft");
    for (k, v) in selector.as_object().expect("matchLabels") {
        assert_eq!(&labels[k], v, "pod template carries selector label {k}");
    }
    let pod = pod_spec(&docs);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "Default");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(
        pod["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t == &json!({"operator": "Exists"})),
        "a toleration with operator Exists and no key or effect: {}",
        pod["tolerations"]
    );
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!(grace <= 30, "terminationGracePeriodSeconds {grace}");
    assert!(pod.get("hostPID").is_none() && pod.get("hostIPC").is_none());
}

#[test]
fn containers_are_root_with_net_admin_only_never_privileged() {
    let docs = documents(rendered_base());
    let pod = pod_spec(&docs);
    let weftd = container(pod, "containers", "weftd");
    let init = container(pod, "initContainers", "install-cni");
    for (c, added) in [(weftd, vec!["NET_ADMIN"]), (init, vec![])] {
        let sc = &c["securityContext"];
        let name = &c["name"];
        assert!(
            sc["privileged"] == false || sc.get("privileged").is_none(),
            "{name} is not privileged: {sc}"
        );
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}: {sc}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}: {sc}");
        assert_eq!(sc["runAsUser"], 0, "{name} runs as root: {sc}");
        assert_eq!(string_list(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
        let mut add = string_list(&sc["capabilities"]["add"]);
        add.sort_unstable();
        assert_eq!(add, added, "{name} adds exactly these capabilities");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{name}");
        assert_eq!(c["image"], "localhost/weft:0.1.0", "{name}");
    }
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
}

#[test]
fn weftd_command_env_probes_and_resources() {
    let docs = documents(rendered_base());
    let pod = pod_spec(&docs);
    let weftd = container(pod, "containers", "weftd");
    let mut cmd = string_list(&weftd["command"]);
    cmd.extend(string_list(&weftd["args"]));
    assert_eq!(
        cmd,
        [
            "/usr/local/bin/weftd",
            "--ip-masq",
            "--install-cni",
            "--cni-conf-source=/etc/weft/cni-conf.json",
        ]
    );
    let init = container(pod, "initContainers", "install-cni");
    let mut init_cmd = string_list(&init["command"]);
    init_cmd.extend(string_list(&init["args"]));
    assert_eq!(
        init_cmd,
        [
            "/usr/local/bin/weftd",
            "install-cni",
            "--cni-conf-source=/etc/weft/cni-conf.json",
        ]
    );

    assert_eq!(
        env_var(weftd, "NODE_NAME")["valueFrom"],
        json!({"fieldRef": {"fieldPath": "spec.nodeName"}})
    );
    assert_eq!(
        env_var(weftd, "WEFTD_ETCD_ENDPOINTS")["valueFrom"],
        json!({"configMapKeyRef": {"name": "weft-config", "key": "etcd-endpoints"}})
    );
    // weftd and netctl (kubectl exec) both read the mounted config file.
    assert_eq!(
        env_var(weftd, "WEFTD_NET_CONFIG")["value"],
        "/etc/weft/net-conf.json"
    );

    let live = &weftd["livenessProbe"]["httpGet"];
    assert_eq!(
        (&live["path"], &live["port"]),
        (&json!("/healthz"), &json!(8471))
    );
    let ready = &weftd["readinessProbe"]["httpGet"];
    assert_eq!(
        (&ready["path"], &ready["port"]),
        (&json!("/readyz"), &json!(8471))
    );

    let res = &weftd["resources"];
    assert_eq!(res["requests"], json!({"cpu": "50m", "memory": "32Mi"}));
    assert_eq!(res["limits"]["memory"], "64Mi");
    assert!(
        res["limits"].get("cpu").is_none(),
        "no CPU limit: throttling the agent delays the data plane"
    );
    assert!(init["resources"]["limits"]["memory"].is_string());
}

#[test]
fn host_directories_are_mounted_where_weft_expects_them() {
    let docs = documents(rendered_base());
    let pod = pod_spec(&docs);
    let weftd = container(pod, "containers", "weftd");
    let init = container(pod, "initContainers", "install-cni");
    // (container path, host path, read-only) for weftd.
    for (path, host, ro) in [
        ("/run/weft", "/run/weft", false),
        ("/etc/cni/net.d", "/etc/cni/net.d", false),
        ("/opt/cni/bin", "/opt/cni/bin", false),
        ("/var/lib/cni", "/var/lib/cni", true),
        // The wireguard backend's key file: it must outlive the pod.
        ("/var/lib/weft", "/var/lib/weft", false),
    ] {
        assert_eq!(
            host_path_at(pod, weftd, path),
            (host.to_string(), ro),
            "{path}"
        );
    }
    for path in ["/etc/cni/net.d", "/opt/cni/bin"] {
        assert_eq!(host_path_at(pod, init, path), (path.to_string(), false));
    }
    assert!(
        !mounts(init).iter().any(|(p, _, _)| p == "/run/weft"),
        "install-cni has no business with subnet.env"
    );
    for v in pod["volumes"].as_array().expect("volumes") {
        if let Some(hp) = v.get("hostPath") {
            assert_eq!(hp["type"], "DirectoryOrCreate", "{v}");
        }
    }
    assert!(
        !mounts(init).iter().any(|(p, _, _)| p == "/var/lib/weft"),
        "install-cni has no business with the WireGuard key"
    );
    // Every hostPath volume is one of the five above: nothing else of the host is reachable.
    let host_paths: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        BTreeSet::from([
            "/etc/cni/net.d",
            "/opt/cni/bin",
            "/run/weft",
            "/var/lib/cni",
            "/var/lib/weft"
        ])
    );
    // The ConfigMap is at /etc/weft, read-only, in both containers.
    for c in [weftd, init] {
        let (_, vol, ro) = mounts(c)
            .into_iter()
            .find(|(p, _, _)| p == "/etc/weft")
            .expect("/etc/weft mounted");
        assert!(ro);
        assert_eq!(volume(pod, &vol)["configMap"]["name"], "weft-config");
    }
}

/// The ConfigMap holds exactly deploy/base's files (one source of truth), the network config
/// is one weftd accepts, and the conflist points the plugin at the paths the DaemonSet mounts.
#[test]
fn config_map_carries_the_deploy_files() {
    let docs = documents(rendered_base());
    let cm = find(&docs, "ConfigMap", "weft-config");
    let data = cm["data"].as_object().expect("ConfigMap data");
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["cni-conf.json", "etcd-endpoints", "net-conf.json"])
    );
    let base = repo_root().join("deploy/base");
    for (key, file) in [
        ("net-conf.json", "net-conf.json"),
        ("cni-conf.json", "10-weft.conflist"),
    ] {
        let text = std::fs::read_to_string(base.join(file)).unwrap();
        assert_eq!(data[key], text, "ConfigMap key {key} is deploy/base/{file}");
    }
    NetConfig::parse(data["net-conf.json"].as_str().unwrap().as_bytes())
        .unwrap_or_else(|e| panic!("weftd rejects deploy/base/net-conf.json: {e}"));
    let conflist: Value = serde_json::from_str(data["cni-conf.json"].as_str().unwrap())
        .expect("cni-conf.json is JSON");
    let weft = &conflist["plugins"][0];
    assert_eq!(weft["type"], "weft");
    assert_eq!(weft["subnetFile"], "/run/weft/subnet.env");
    assert!(
        weft["dataDir"]
            .as_str()
            .is_some_and(|d| d.starts_with("/var/lib/cni/")),
        "the plugin's dataDir is under the mounted /var/lib/cni: {weft}"
    );
    assert_eq!(data["etcd-endpoints"], "http://etcd.example.invalid:2379");
    // Every /etc/weft/<file> the containers are given exists in the ConfigMap.
    let pod = pod_spec(&docs);
    for c in [
        container(pod, "containers", "weftd"),
        container(pod, "initContainers", "install-cni"),
    ] {
        for arg in string_list(&c["command"])
            .into_iter()
            .chain(string_list(&c["args"]))
        {
            if let Some(file) = arg.split_once("=/etc/weft/").map(|(_, f)| f) {
                assert!(
                    data.contains_key(file),
                    "{arg}: no key {file} in weft-config"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the etcd-tls overlay promises

#[test]
fn etcd_tls_overlay_mounts_the_secret_and_points_weftd_at_it() {
    let docs = documents(rendered_overlay());
    let pod = pod_spec(&docs);
    let weftd = container(pod, "containers", "weftd");
    for (var, file) in [
        ("WEFTD_ETCD_CAFILE", "ca.crt"),
        ("WEFTD_ETCD_CERTFILE", "tls.crt"),
        ("WEFTD_ETCD_KEYFILE", "tls.key"),
    ] {
        assert_eq!(
            env_var(weftd, var)["value"],
            format!("{SECRET_DIR}/{file}"),
            "{var}"
        );
    }
    let (_, vol, ro) = mounts(weftd)
        .into_iter()
        .find(|(p, _, _)| p == SECRET_DIR)
        .unwrap_or_else(|| panic!("nothing mounted at {SECRET_DIR}"));
    assert!(ro, "the secret is mounted read-only");
    let secret = &volume(pod, &vol)["secret"];
    assert_eq!(secret["secretName"], "weft-etcd-tls");
    assert_eq!(secret["defaultMode"], 0o400, "defaultMode 0400: {secret}");
    assert!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "no key material is shipped"
    );
    let cm = find(&docs, "ConfigMap", "weft-config");
    let endpoints = cm["data"]["etcd-endpoints"].as_str().unwrap();
    assert!(
        endpoints.split(',').all(|e| e.starts_with("https://")),
        "TLS needs https endpoints: {endpoints}"
    );
    // The init container does not need the key.
    let init = container(pod, "initContainers", "install-cni");
    assert!(!mounts(init).iter().any(|(p, _, _)| p == SECRET_DIR));
}

/// Apart from the TLS settings, the overlay renders the base unchanged (a base edit cannot
/// be silently dropped by the overlay's patch).
#[test]
fn etcd_tls_overlay_changes_nothing_else() {
    let strip = |mut docs: Vec<Value>| -> Vec<Value> {
        for d in &mut docs {
            if let Some(meta) = d["metadata"].as_object_mut() {
                // kustomize v2.0.3 writes empty maps into a merged ConfigMap; newer ones not.
                meta.retain(|k, v| {
                    !(matches!(k.as_str(), "annotations" | "labels")
                        && v.as_object().is_some_and(|m| m.is_empty()))
                });
            }
            if d["kind"] == "ConfigMap" {
                d["data"]["etcd-endpoints"] = Value::Null;
            }
            if d["kind"] == "DaemonSet" {
                let pod = &mut d["spec"]["template"]["spec"];
                if let Some(vols) = pod["volumes"].as_array_mut() {
                    vols.retain(|v| v["name"] != "etcd-tls");
                }
                for c in pod["containers"].as_array_mut().unwrap() {
                    if let Some(env) = c["env"].as_array_mut() {
                        env.retain(|e| {
                            !e["name"].as_str().is_some_and(|n| {
                                n.starts_with("WEFTD_ETCD_") && n != "WEFTD_ETCD_ENDPOINTS"
                            })
                        });
                    }
                    if let Some(m) = c["volumeMounts"].as_array_mut() {
                        m.retain(|m| m["name"] != "etcd-tls");
                    }
                }
            }
        }
        docs
    };
    assert_eq!(
        strip(documents(rendered_overlay())),
        strip(documents(rendered_base()))
    );
}

// ---------------------------------------------------------------------------------------------
// What the wireguard-userspace overlay promises

/// The volume behind the mount at `path` in container `c`: its hostPath (path, type) and
/// whether the mount is read-only.
fn host_path_type_at(pod: &Value, c: &Value, path: &str) -> (String, String, bool) {
    let (_, vol, ro) = mounts(c)
        .into_iter()
        .find(|(p, _, _)| p == path)
        .unwrap_or_else(|| panic!("container {} mounts nothing at {path}", c["name"]));
    let hp = &volume(pod, &vol)["hostPath"];
    (
        hp["path"].as_str().unwrap_or_default().to_string(),
        hp["type"].as_str().unwrap_or_default().to_string(),
        ro,
    )
}

#[test]
fn wireguard_userspace_overlay_starts_wireguard_go_with_the_tun_device_and_socket_directory() {
    let docs = documents(rendered_wireguard_userspace());
    let pod = pod_spec(&docs);
    let weftd = container(pod, "containers", "weftd");
    // The base's args, then the two flags.
    let base_docs = documents(rendered_base());
    let base_weftd = container(pod_spec(&base_docs), "containers", "weftd");
    let mut want = string_list(&base_weftd["args"]);
    want.extend(WIREGUARD_USERSPACE_ARGS);
    assert_eq!(string_list(&weftd["args"]), want);
    // weftd itself reads them as the userspace implementation with the image's wireguard-go.
    let mut argv = string_list(&weftd["command"]);
    argv.extend(string_list(&weftd["args"]));
    let cli = <weft_agent::cli::WeftdCli as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("weftd rejects the overlay's command line {argv:?}: {e}"));
    assert_eq!(
        cli.wireguard_implementation,
        weft_agent::cli::WireguardChoice::Userspace
    );
    assert_eq!(
        cli.wireguard_userspace.as_deref(),
        Some(Path::new(WIREGUARD_GO))
    );

    // The host's TUN device node and socket directory, read-write.
    assert_eq!(
        host_path_type_at(pod, weftd, "/dev/net/tun"),
        ("/dev/net/tun".to_string(), "CharDevice".to_string(), false)
    );
    assert_eq!(
        host_path_type_at(pod, weftd, WIREGUARD_SOCKET_DIR),
        (
            "/run/wireguard".to_string(),
            "DirectoryOrCreate".to_string(),
            false
        )
    );
    let init = container(pod, "initContainers", "install-cni");
    for path in ["/dev/net/tun", WIREGUARD_SOCKET_DIR] {
        assert!(
            !mounts(init).iter().any(|(p, _, _)| p == path),
            "install-cni has no business with {path}"
        );
    }

    // And no more privilege than the base: not privileged, NET_ADMIN alone.
    let sc = &weftd["securityContext"];
    assert_eq!(
        sc, &base_weftd["securityContext"],
        "weftd's securityContext"
    );
    assert!(
        sc["privileged"] == false || sc.get("privileged").is_none(),
        "{sc}"
    );
    assert_eq!(string_list(&sc["capabilities"]["add"]), ["NET_ADMIN"]);
    assert_eq!(string_list(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(
        pod["securityContext"],
        pod_spec(&base_docs)["securityContext"]
    );
    assert!(pod.get("hostPID").is_none() && pod.get("hostIPC").is_none());
}

/// Apart from the two flags and the two mounts, the overlay renders the base unchanged.
#[test]
fn wireguard_userspace_overlay_changes_nothing_else() {
    let strip = |mut docs: Vec<Value>| -> Vec<Value> {
        for d in &mut docs {
            if d["kind"] == "DaemonSet" {
                let pod = &mut d["spec"]["template"]["spec"];
                if let Some(vols) = pod["volumes"].as_array_mut() {
                    vols.retain(|v| {
                        !matches!(v["name"].as_str(), Some("dev-net-tun" | "run-wireguard"))
                    });
                }
                for c in pod["containers"].as_array_mut().unwrap() {
                    if let Some(args) = c["args"].as_array_mut() {
                        args.retain(|a| {
                            !a.as_str()
                                .is_some_and(|a| WIREGUARD_USERSPACE_ARGS.contains(&a))
                        });
                    }
                    if let Some(m) = c["volumeMounts"].as_array_mut() {
                        m.retain(|m| {
                            !matches!(m["name"].as_str(), Some("dev-net-tun" | "run-wireguard"))
                        });
                    }
                }
            }
        }
        docs
    };
    assert_eq!(
        strip(documents(rendered_wireguard_userspace())),
        strip(documents(rendered_base()))
    );
}
