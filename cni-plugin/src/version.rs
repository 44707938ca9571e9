//! The CNI spec versions weft speaks.

/// Every version a result can be rendered for, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version.
pub const LATEST: &str = "1.1.0";

pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

/// The VERSION verb's answer.
pub fn version_json() -> String {
    serde_json::json!({ "cniVersion": LATEST, "supportedVersions": SUPPORTED }).to_string()
}

/// True for versions that have the CHECK verb (0.4.0 and later).
pub fn has_check(v: &str) -> bool {
    v != "0.3.1"
}

/// True for versions that have GC and STATUS (1.1.0).
pub fn has_gc_and_status(v: &str) -> bool {
    v == "1.1.0"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_answer_lists_every_supported_version() {
        let v: serde_json::Value = serde_json::from_str(&version_json()).unwrap();
        assert_eq!(v["cniVersion"], LATEST);
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED.len()
        );
        assert!(is_supported("0.4.0") && !is_supported("0.2.0") && !is_supported("2.0.0"));
        assert!(has_check("1.0.0") && !has_check("0.3.1"));
        assert!(has_gc_and_status("1.1.0") && !has_gc_and_status("1.0.0"));
    }
}
