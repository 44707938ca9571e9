//! The network config on stdin: each key read with the type it must have (a wrong type is
//! error 7 naming the key), the values validated, and every key weft does not read reported
//! as a warning — a misspelled key would otherwise fall back to its default in silence.

use std::fmt;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{code, CniError};
use crate::request::{is_safe_name, is_valid_ifname};
use crate::version;

/// Largest stdin accepted (a config with a big prevResult is a few KiB).
pub const MAX_STDIN: usize = 1024 * 1024;
pub const DEFAULT_SUBNET_FILE: &str = "/run/weft/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/weft";
pub const DEFAULT_BRIDGE: &str = "cni0";

/// The keys of weft's own that a conflist entry sets (the rest of what weft reads comes from
/// the protocol). Listed in warnings about unknown keys, and the candidates for "did you mean".
pub const PLUGIN_KEYS: [&str; 8] = [
    "subnetFile",
    "dataDir",
    "bridge",
    "hairpinMode",
    "isDefaultGateway",
    "mtu",
    "range",
    "logFile",
];

/// Keys weft reads that the protocol defines or the runtime adds.
const PROTOCOL_KEYS_READ: [&str; 4] = ["cniVersion", "name", "type", "prevResult"];

/// Keys the protocol defines or the runtime adds (besides any `cni.dev/…` key) that weft
/// accepts without reading: `capabilities` is the conflist's, `runtimeConfig` and `args` are
/// what the runtime derives from it and from the pod.
const PROTOCOL_KEYS_UNREAD: [&str; 3] = ["capabilities", "runtimeConfig", "args"];

/// An attachment named in `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network config weft reads from stdin.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    pub bridge: String,
    pub hairpin_mode: bool,
    pub is_default_gateway: bool,
    pub mtu: Option<u32>,
    pub log_file: Option<PathBuf>,
    /// An explicit pod range that replaces the host subnet from subnet.env.
    pub range: Option<Ipv4Network>,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
    /// What the config has that weft does not use; the call goes on, the operator is told.
    pub warnings: Vec<ConfWarning>,
}

/// A key in the config that changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfWarning {
    /// A key weft does not know, with the weft key it most likely means.
    UnknownKey {
        key: String,
        suggestion: Option<&'static str>,
    },
    /// A well-known CNI key whose feature weft does not implement.
    NoEffect {
        key: &'static str,
        why: &'static str,
    },
}

impl fmt::Display for ConfWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfWarning::UnknownKey {
                key,
                suggestion: Some(s),
            } => write!(
                f,
                "config key {:?} is not one weft knows and is ignored; did you mean {s:?}?",
                shorten(key, 64)
            ),
            ConfWarning::UnknownKey {
                key,
                suggestion: None,
            } => write!(
                f,
                "config key {:?} is not one weft knows and is ignored (weft's keys are {})",
                shorten(key, 64),
                PLUGIN_KEYS.join(", ")
            ),
            ConfWarning::NoEffect { key, why } => {
                write!(f, "config key {key:?} has no effect: {why}")
            }
        }
    }
}

/// At most `max` characters of `s`.
fn shorten(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn invalid(details: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, "invalid network config", details)
}

/// How a JSON value reads in an error message.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {:?}", shorten(s, 32)),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => b.to_string(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
        Value::Null => "null".into(),
    }
}

/// `key` holds `got` where `expected` was needed; a quoted number or boolean is named as such.
fn wrong_type(key: &str, expected: &str, got: &Value) -> CniError {
    let quoted = match got {
        Value::String(s) => matches!(
            serde_json::from_str::<Value>(s),
            Ok(Value::Number(_) | Value::Bool(_))
        ),
        _ => false,
    };
    let hint = if quoted {
        "; write it without quotes"
    } else {
        ""
    };
    invalid(format!(
        "{key} must be {expected}, not {}{hint}",
        describe(got)
    ))
}

/// The config object's keys, taken one at a time with the type each must have; what is left
/// at the end is what weft does not read.
struct Fields(Map<String, Value>);

impl Fields {
    /// The value of `key`, removed; `null` counts as absent.
    fn take(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, CniError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(key, "a string", &other)),
        }
    }

    fn path(&mut self, key: &str) -> Result<Option<PathBuf>, CniError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(PathBuf::from(s))),
            Some(other) => Err(wrong_type(key, "a path (a string)", &other)),
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, CniError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(wrong_type(key, "true or false", &other)),
        }
    }

    /// A whole number in `range`.
    fn number(
        &mut self,
        key: &str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Option<u32>, CniError> {
        let bounds = format!("between {} and {}", range.start(), range.end());
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v <= u64::from(*range.end()) && v >= u64::from(*range.start()) => {
                    Ok(Some(v as u32))
                }
                Some(v) => Err(invalid(format!("{key} {v} is not {bounds}"))),
                None => Err(wrong_type(
                    key,
                    &format!("a whole number {bounds}"),
                    &Value::Number(n),
                )),
            },
            Some(other) => Err(wrong_type(key, &format!("a whole number {bounds}"), &other)),
        }
    }

    fn object(&mut self, key: &str, expected: &str) -> Result<Option<Value>, CniError> {
        match self.take(key) {
            None => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(v)),
            Some(other) => Err(wrong_type(key, expected, &other)),
        }
    }

    /// A structured value, decoded with serde; its error says where inside the value.
    fn decoded<T: DeserializeOwned>(
        &mut self,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, CniError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| invalid(format!("{key} must be {expected} ({e})"))),
        }
    }

    /// A warning for every key left: unknown ones (with the weft key they most likely mean)
    /// and well-known ones that change nothing here. Keys of the protocol pass silently.
    fn into_warnings(self) -> Vec<ConfWarning> {
        self.0
            .into_iter()
            .filter_map(|(key, value)| {
                if PROTOCOL_KEYS_UNREAD.contains(&key.as_str()) || key.starts_with("cni.dev/") {
                    return None;
                }
                if let Some(w) = no_effect(&key, &value) {
                    return w;
                }
                let suggestion = suggest(&key);
                Some(ConfWarning::UnknownKey { key, suggestion })
            })
            .collect()
    }
}

/// For a well-known CNI key: `Some(None)` when it asks for nothing weft would do differently
/// (`ipMasq: false`), `Some(Some(warning))` when it asks for something weft does not do.
fn no_effect(key: &str, value: &Value) -> Option<Option<ConfWarning>> {
    let (key, why) = match key {
        "ipam" => (
            "ipam",
            "weft assigns pod addresses itself, from subnet.env or the range key",
        ),
        "dns" => ("dns", "weft puts no DNS settings in its result"),
        "ipMasq" => {
            if value.as_bool() != Some(true) {
                return Some(None);
            }
            (
                "ipMasq",
                "weftd masquerades pod traffic when it runs with --ip-masq",
            )
        }
        _ => return None,
    };
    Some(Some(ConfWarning::NoEffect { key, why }))
}

/// The key weft reads that `key` most likely means: the same but for case (Go's JSON decoder,
/// which most plugins use, ignores case), or at most two edits away.
fn suggest(key: &str) -> Option<&'static str> {
    let known = || PLUGIN_KEYS.into_iter().chain(PROTOCOL_KEYS_READ);
    if let Some(k) = known().find(|k| k.eq_ignore_ascii_case(key)) {
        return Some(k);
    }
    let lower = key.to_ascii_lowercase();
    known()
        .map(|k| (strsim::osa_distance(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= 2 && 2 * d <= k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Parse and validate the config on stdin.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    if stdin.len() > MAX_STDIN {
        return Err(CniError::new(
            code::DECODE,
            "network config too large",
            format!("{} bytes on stdin, at most {MAX_STDIN}", stdin.len()),
        ));
    }
    let decoded: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "cannot decode the network config on stdin",
            e.to_string(),
        )
    })?;
    let Value::Object(map) = decoded else {
        return Err(CniError::new(
            code::DECODE,
            "cannot decode the network config on stdin",
            format!("it must be a JSON object, not {}", describe(&decoded)),
        ));
    };
    let mut f = Fields(map);
    let cni_version = f
        .string("cniVersion")?
        .ok_or_else(|| invalid("cniVersion is missing".into()))?;
    if !version::is_supported(&cni_version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "cniVersion {:?} is not one of {}",
                shorten(&cni_version, 32),
                version::SUPPORTED.join(", ")
            ),
        ));
    }
    let name = f
        .string("name")?
        .ok_or_else(|| invalid("name is missing".into()))?;
    if !is_safe_name(&name, 128) {
        return Err(invalid(format!("name {:?} must be letters, digits, '_', '.', '-' (at most 128), starting with a letter or digit", shorten(&name, 64))));
    }
    if f.string("type")?.is_none() {
        return Err(invalid("type is missing".into()));
    }
    let bridge = f
        .string("bridge")?
        .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
    if !is_valid_ifname(&bridge) {
        return Err(invalid(format!(
            "bridge {:?} is not a valid interface name",
            shorten(&bridge, 32)
        )));
    }
    let hairpin_mode = f.bool("hairpinMode")?.unwrap_or(true);
    let is_default_gateway = f.bool("isDefaultGateway")?.unwrap_or(true);
    let mtu = f.number("mtu", 576..=65535)?;
    let data_dir = f
        .path("dataDir")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let subnet_file = f
        .path("subnetFile")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE));
    let log_file = f.path("logFile")?;
    for (key, p) in [("dataDir", &data_dir), ("subnetFile", &subnet_file)] {
        if !p.is_absolute() {
            return Err(invalid(format!(
                "{key} {} must be an absolute path",
                p.display()
            )));
        }
    }
    let range = match f.string("range")? {
        None => None,
        Some(r) => {
            let net: Ipv4Network = r.parse().map_err(|_| {
                invalid(format!(
                    "range {:?} is not an IPv4 CIDR such as 10.244.3.0/24",
                    shorten(&r, 64)
                ))
            })?;
            if net.prefix() > 29 || net.ip() != net.network() {
                return Err(invalid(format!(
                    "range {r} must be a network address with a prefix of /29 or shorter (it holds the gateway .1 and the pods)"
                )));
            }
            Some(net)
        }
    };
    let prev_result = f.object("prevResult", "an object (the result of the ADD)")?;
    let valid_attachments = f.decoded(
        "cni.dev/valid-attachments",
        "a list of {\"containerID\": …, \"ifname\": …} objects",
    )?;
    Ok(NetConf {
        cni_version,
        name,
        subnet_file,
        data_dir,
        bridge,
        hairpin_mode,
        is_default_gateway,
        mtu,
        log_file,
        range,
        prev_result,
        valid_attachments,
        warnings: f.into_warnings(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf_with(extra: &str) -> String {
        format!(r#"{{"cniVersion":"1.1.0","name":"weft","type":"weft"{extra}}}"#)
    }

    #[test]
    fn a_wrong_type_names_the_key_and_what_it_must_be() {
        let cases = [
            (
                r#","mtu":"1400""#,
                r#"mtu must be a whole number between 576 and 65535, not the string "1400"; write it without quotes"#,
            ),
            (
                r#","mtu":1400.5"#,
                "mtu must be a whole number between 576 and 65535, not the number 1400.5",
            ),
            (
                r#","mtu":-1"#,
                "mtu must be a whole number between 576 and 65535, not the number -1",
            ),
            (r#","mtu":70000"#, "mtu 70000 is not between 576 and 65535"),
            (r#","mtu":10"#, "mtu 10 is not between 576 and 65535"),
            (
                r#","hairpinMode":"yes""#,
                r#"hairpinMode must be true or false, not the string "yes""#,
            ),
            (
                r#","isDefaultGateway":"false""#,
                r#"isDefaultGateway must be true or false, not the string "false"; write it without quotes"#,
            ),
            (
                r#","bridge":7"#,
                "bridge must be a string, not the number 7",
            ),
            (
                r#","subnetFile":["/a"]"#,
                "subnetFile must be a path (a string), not a list",
            ),
            (
                r#","dataDir":{}"#,
                "dataDir must be a path (a string), not an object",
            ),
            (
                r#","logFile":true"#,
                "logFile must be a path (a string), not true",
            ),
            (
                r#","range":24"#,
                "range must be a string, not the number 24",
            ),
            (
                r#","prevResult":"x""#,
                r#"prevResult must be an object (the result of the ADD), not the string "x""#,
            ),
        ];
        for (extra, want) in cases {
            let err = parse(conf_with(extra).as_bytes()).expect_err(extra);
            assert_eq!(err.code, code::INVALID_CONFIG, "{extra}: {err}");
            assert_eq!(err.details, want, "{extra}");
        }
        let err =
            parse(r#"{"cniVersion":1.1,"name":"weft","type":"weft"}"#.as_bytes()).unwrap_err();
        assert_eq!(
            (err.code, err.details.as_str()),
            (
                code::INVALID_CONFIG,
                "cniVersion must be a string, not the number 1.1"
            )
        );
        let err =
            parse(conf_with(r#","cni.dev/valid-attachments":[{"containerID":"a"}]"#).as_bytes())
                .unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(
            err.details
                .starts_with("cni.dev/valid-attachments must be a list of")
                && err.details.contains("ifname"),
            "{}",
            err.details
        );
    }

    #[test]
    fn null_is_absent() {
        let c = parse(conf_with(r#","mtu":null,"bridge":null,"ipMasq":null"#).as_bytes()).unwrap();
        assert_eq!((c.mtu, c.bridge.as_str()), (None, DEFAULT_BRIDGE));
        assert_eq!(c.warnings, vec![]);
    }

    #[test]
    fn not_an_object_is_a_decode_error() {
        for stdin in ["[]", "\"weft\"", "7", "null"] {
            let err = parse(stdin.as_bytes()).expect_err(stdin);
            assert_eq!(err.code, code::DECODE, "{stdin}");
            assert!(err.details.starts_with("it must be a JSON object"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_warnings_with_the_likely_key() {
        let c = parse(
            conf_with(
                r#","subnetfile":"/x","subnetFil":"/y","hairpin_mode":true,"MTU":1400,"nmae":"x","frobnicate":1"#,
            )
            .as_bytes(),
        )
        .unwrap();
        let unknown = |key: &str, suggestion| ConfWarning::UnknownKey {
            key: key.into(),
            suggestion,
        };
        // In key order (the map is sorted).
        assert_eq!(
            c.warnings,
            vec![
                unknown("MTU", Some("mtu")),
                unknown("frobnicate", None),
                unknown("hairpin_mode", Some("hairpinMode")),
                unknown("nmae", Some("name")),
                unknown("subnetFil", Some("subnetFile")),
                unknown("subnetfile", Some("subnetFile")),
            ]
        );
        // The misspelled key did not take effect.
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(
            c.warnings[4].to_string(),
            r#"config key "subnetFil" is not one weft knows and is ignored; did you mean "subnetFile"?"#
        );
        assert_eq!(
            c.warnings[1].to_string(),
            r#"config key "frobnicate" is not one weft knows and is ignored (weft's keys are subnetFile, dataDir, bridge, hairpinMode, isDefaultGateway, mtu, range, logFile)"#
        );
    }

    #[test]
    fn protocol_keys_pass_and_well_known_ones_say_they_do_nothing() {
        let c = parse(
            conf_with(
                r#","capabilities":{"portMappings":true},"runtimeConfig":{"portMappings":[]},"args":{"cni":{}},"cni.dev/attachments":[],"cni.dev/valid-attachments":[],"prevResult":{"cniVersion":"1.1.0"},"ipMasq":false"#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.warnings, vec![]);
        assert_eq!(c.valid_attachments, Some(vec![]));
        let c = parse(
            conf_with(r#","ipam":{"type":"host-local"},"dns":{"nameservers":["10.0.0.10"]},"ipMasq":true"#)
                .as_bytes(),
        )
        .unwrap();
        let keys: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            keys,
            vec![
                r#"config key "dns" has no effect: weft puts no DNS settings in its result"#,
                r#"config key "ipMasq" has no effect: weftd masquerades pod traffic when it runs with --ip-masq"#,
                r#"config key "ipam" has no effect: weft assigns pod addresses itself, from subnet.env or the range key"#,
            ]
        );
    }

    #[test]
    fn suggestions_stay_close() {
        assert_eq!(suggest("SubnetFile"), Some("subnetFile"));
        assert_eq!(suggest("datadir"), Some("dataDir"));
        assert_eq!(suggest("brige"), Some("bridge"));
        assert_eq!(suggest("logfile"), Some("logFile"));
        assert_eq!(suggest("mt"), Some("mtu"));
        // Too far from every key, or too short to guess from.
        assert_eq!(suggest("hairpin"), None);
        assert_eq!(suggest("ab"), None);
        assert_eq!(suggest("x"), None);
        assert_eq!(suggest("portMappings"), None);
    }
}
