//! Kubernetes manifests as the manifest and chart tests read them: YAML streams parsed into
//! JSON values, and offline schema validation with kubernetes-validate (strict: an unknown
//! field is an error). Nothing here talks to a cluster or the network.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::procs::run_bounded;

/// How long one kubectl, helm or kubernetes-validate run may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Every non-empty document of a YAML stream, as JSON values.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("the tool printed valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kind/name` as kubernetes-validate names a resource.
pub fn resource_name(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?").to_lowercase(),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Validate a YAML stream with `validator` (kubernetes-validate) in strict mode against every
/// Kubernetes version in `versions` (`1.29.0`, …). Ok only if every document passed against
/// every version: a resource it has no schema for (it only warns and exits 0 then) is an
/// error too. The error is the validator's own output.
pub fn validate(validator: &Path, yaml: &str, versions: &[&str]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).expect("write rendered YAML");
    let mut cmd = Command::new(validator);
    cmd.arg("--strict");
    for v in versions {
        cmd.args(["--kubernetes-version", v]);
    }
    cmd.arg(&file);
    let (code, report, err) = run_bounded(cmd, TOOL_TIMEOUT);
    if code != 0 {
        return Err(format!("kubernetes-validate exited {code}:\n{report}{err}"));
    }
    // Its verdicts are on stdout, one line per resource and version.
    let complaints: Vec<&str> = report
        .lines()
        .filter(|l| !l.starts_with("INFO "))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if !complaints.is_empty() {
        return Err(format!(
            "kubernetes-validate did not pass everything:\n{}",
            complaints.join("\n")
        ));
    }
    let docs = documents(yaml);
    if docs.is_empty() {
        return Err("no documents to validate".into());
    }
    for doc in &docs {
        let name = resource_name(doc);
        for v in versions {
            let minor = v.rsplit_once('.').map_or(*v, |(mm, _)| mm);
            let passed = format!("passed for resource {name} against version {minor}");
            if !report.lines().any(|l| l.contains(&passed)) {
                return Err(format!(
                    "kubernetes-validate did not report {name} as valid for Kubernetes \
                     {minor}:\n{report}"
                ));
            }
        }
    }
    Ok(())
}
