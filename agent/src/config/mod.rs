//! The cluster network configuration (flannel's `net-conf.json`), parsed and validated.
//!
//! The format is flannel's, not ours, and it is read the way flannel reads it (Go's
//! `encoding/json`): a key matches its setting exactly or, failing that, case-insensitively
//! (`"backend"` is `Backend`), at every level; the backend's name matches case-insensitively too
//! (flannel lowercases it). Keys weft does not know are tolerated rather than rejected, so a
//! cluster moving from flannel keeps its config as it is. Everything worth telling the operator
//! about the config as written (a spelling other than the documented one, an unknown key, a
//! flannel setting weft does not implement) comes back as [`ConfigNotice`]s in the
//! [`NetConfig`], to be reported once where the config is loaded.
//!
//! One deliberate difference: a setting given more than once in one object (`"Network"` twice,
//! or `"network"` next to `"Network"`) is refused as ambiguous, where flannel would silently
//! take the last one.

pub mod pool;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use weft_backends::backend::wireguard::{self, Key, Mode, PresharedKey};
use weft_backends::{BackendKind, IpFamily, UnknownBackend};

use crate::config::pool::SubnetPool;

/// Default VXLAN network identifier (flannel's).
pub const DEFAULT_VNI: u32 = 1;
/// Default VXLAN UDP port (flannel's, the Linux default).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// Why a network config was rejected. Every variant names the offending key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("network config must be a JSON object")]
    NotAnObject,
    #[error("network config: missing required key {0:?}")]
    Missing(&'static str),
    #[error("network config: key {key:?}: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error(
        "network config: key {key:?} is given {} times (as {}), so which value applies is ambiguous; keep one",
        spellings.len(),
        Shown::list(spellings)
    )]
    Duplicate {
        key: &'static str,
        /// Each spelling as written, in order.
        spellings: Vec<String>,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Where a key sits in the config: `Backend.Port` is `["Backend", "Port"]`. The parents are
/// named as documented, the last segment as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPath(Vec<String>);

impl KeyPath {
    fn new(parent: Option<&str>, key: &str) -> KeyPath {
        KeyPath(
            parent
                .into_iter()
                .chain([key])
                .map(str::to_string)
                .collect(),
        )
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            Shown(s).write_bare(f)?;
        }
        Ok(())
    }
}

/// Something about the config as written that the operator should hear of; not fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigNotice {
    /// The key the notice is about.
    pub path: KeyPath,
    pub kind: NoticeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// The key matched a setting case-insensitively, as flannel matches it, and was read as it.
    NonCanonicalKey {
        /// The setting's documented path, e.g. `Backend.Type`.
        canonical: &'static str,
    },
    /// The value names something (a backend) in another case, and was read as `canonical`.
    NonCanonicalValue {
        written: String,
        canonical: &'static str,
    },
    /// A key weft does not know; ignored.
    UnknownKey {
        /// The documented path of the setting it is most likely a misspelling of.
        suggestion: Option<&'static str>,
    },
    /// A flannel setting weft does not implement; ignored.
    Unsupported {
        /// What weft does instead.
        instead: &'static str,
    },
}

impl NoticeKind {
    /// A stable name for the kind (a log field).
    pub fn as_str(&self) -> &'static str {
        match self {
            NoticeKind::NonCanonicalKey { .. } => "non-canonical-key",
            NoticeKind::NonCanonicalValue { .. } => "non-canonical-value",
            NoticeKind::UnknownKey { .. } => "unknown-key",
            NoticeKind::Unsupported { .. } => "unsupported-key",
        }
    }
}

impl fmt::Display for ConfigNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = &self.path;
        match &self.kind {
            NoticeKind::NonCanonicalKey { canonical } => write!(
                f,
                "network config key \"{path}\" is read as \"{canonical}\" (keys match \
                 case-insensitively, as in flannel); spell it \"{canonical}\""
            ),
            NoticeKind::NonCanonicalValue { written, canonical } => write!(
                f,
                "network config key \"{path}\" has the value {}, read as \"{canonical}\" (backend \
                 names match case-insensitively, as in flannel); write \"{canonical}\"",
                Shown(written)
            ),
            NoticeKind::UnknownKey { suggestion: None } => write!(
                f,
                "network config key \"{path}\" is not one weft knows, so it is ignored"
            ),
            NoticeKind::UnknownKey {
                suggestion: Some(s),
            } => write!(
                f,
                "network config key \"{path}\" is not one weft knows, so it is ignored; did you \
                 mean \"{s}\"?"
            ),
            NoticeKind::Unsupported { instead } => write!(
                f,
                "network config key \"{path}\" is a flannel setting weft does not implement, so \
                 it is ignored ({instead})"
            ),
        }
    }
}

/// Text from the config as it is shown back: quoted, with anything but printable ASCII
/// escaped (a key may hold control characters, or a letter that only looks like another), and
/// cut short when long.
struct Shown<'a>(&'a str);

impl Shown<'_> {
    const MAX_CHARS: usize = 64;

    fn write_bare(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.chars().enumerate() {
            if i == Self::MAX_CHARS {
                return f.write_str("…");
            }
            match c {
                '"' | '\\' => write!(f, "\\{c}")?,
                ' '..='~' => write!(f, "{c}")?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
        }
        Ok(())
    }

    /// `"a", "b"`.
    fn list(items: &[String]) -> String {
        items
            .iter()
            .map(|s| Shown(s).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        self.write_bare(f)?;
        f.write_str("\"")
    }
}

/// Backend settings from the `Backend` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub kind: BackendKind,
    pub vni: u32,
    pub port: u16,
    pub direct_routing: bool,
    /// An explicit MTU for pod traffic; `None` derives it from the underlay.
    pub mtu: Option<u32>,
    /// The wireguard backend's keys (read for every backend, used by wireguard).
    pub wireguard: WireguardConfig,
}

/// The wireguard backend's settings: `ListenPort`, `ListenPortV6`, `PSK`,
/// `PersistentKeepaliveInterval` and `Mode`, with flannel's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireguardConfig {
    pub listen_port: u16,
    pub listen_port_v6: u16,
    pub psk: Option<PresharedKey>,
    /// Seconds; 0 sends no keepalives.
    pub keepalive: u16,
    pub mode: Mode,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            listen_port: wireguard::DEFAULT_LISTEN_PORT,
            listen_port_v6: wireguard::DEFAULT_LISTEN_PORT_V6,
            psk: None,
            keepalive: 0,
            mode: Mode::Separate,
        }
    }
}

impl WireguardConfig {
    /// The listen port of the device that serves `family`: `ListenPortV6` for the IPv6
    /// device in `separate` mode, else `ListenPort`.
    pub fn port_of(&self, family: IpFamily) -> u16 {
        match (self.mode, family) {
            (Mode::Separate, IpFamily::V6) => self.listen_port_v6,
            _ => self.listen_port,
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            kind: BackendKind::Vxlan,
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            direct_routing: false,
            mtu: None,
            wireguard: WireguardConfig::default(),
        }
    }
}

/// A validated network config. At least one of `ipv4` and `ipv6` is present: IPv4-only
/// (flannel's default), dual-stack (`EnableIPv6`), or IPv6-only (`EnableIPv4: false`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// `Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`, when `EnableIPv4` (the default).
    pub ipv4: Option<SubnetPool>,
    /// `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin`, `IPv6SubnetMax`, when `EnableIPv6`.
    pub ipv6: Option<SubnetPool>,
    pub backend: BackendConfig,
    /// What is worth telling the operator about the text as written, in the order the keys
    /// appear. Not written back by [`NetConfig::to_json`].
    pub notices: Vec<ConfigNotice>,
}

/// A setting of one level: its name and its documented path.
struct Setting {
    name: &'static str,
    path: &'static str,
}

/// The keys of one object of the config.
struct Level {
    /// The parent's documented name (`None` at the top).
    parent: Option<&'static str>,
    settings: &'static [Setting],
    /// Keys flannel reads here that weft does not implement, with what weft does instead.
    flannel_only: &'static [(&'static str, &'static str)],
}

const fn setting(name: &'static str, path: &'static str) -> Setting {
    Setting { name, path }
}

const TOP: Level = Level {
    parent: None,
    settings: &[
        setting("Network", "Network"),
        setting("SubnetLen", "SubnetLen"),
        setting("SubnetMin", "SubnetMin"),
        setting("SubnetMax", "SubnetMax"),
        setting("EnableIPv4", "EnableIPv4"),
        setting("EnableIPv6", "EnableIPv6"),
        setting("IPv6Network", "IPv6Network"),
        setting("IPv6SubnetLen", "IPv6SubnetLen"),
        setting("IPv6SubnetMin", "IPv6SubnetMin"),
        setting("IPv6SubnetMax", "IPv6SubnetMax"),
        setting("Backend", "Backend"),
    ],
    flannel_only: &[
        ("Networks", "weft leases subnets of Network only"),
        ("IPv6Networks", "weft leases subnets of IPv6Network only"),
        ("EnableNFTables", "weft always masquerades with nftables"),
    ],
};

const BACKEND: Level = Level {
    parent: Some("Backend"),
    settings: &[
        setting("Type", "Backend.Type"),
        setting("VNI", "Backend.VNI"),
        setting("Port", "Backend.Port"),
        setting("DirectRouting", "Backend.DirectRouting"),
        setting("MTU", "Backend.MTU"),
        setting("ListenPort", "Backend.ListenPort"),
        setting("ListenPortV6", "Backend.ListenPortV6"),
        setting("PSK", "Backend.PSK"),
        setting(
            "PersistentKeepaliveInterval",
            "Backend.PersistentKeepaliveInterval",
        ),
        setting("Mode", "Backend.Mode"),
    ],
    flannel_only: &[
        (
            "GBP",
            "weft's VXLAN devices do not carry Group Based Policy",
        ),
        ("Learning", "weft programs the forwarding database itself"),
    ],
};

/// Go's `encoding/json` key matching: equal under Unicode simple case folding. Every setting
/// name is ASCII, and the only other characters that fold to ASCII letters are the Kelvin sign
/// (k) and the long s (s).
fn fold_char(c: char) -> char {
    match c {
        '\u{212A}' => 'k',
        '\u{17F}' => 's',
        c => c.to_ascii_lowercase(),
    }
}

fn fold_eq(written: &str, name: &str) -> bool {
    written
        .chars()
        .map(fold_char)
        .eq(name.chars().map(fold_char))
}

/// Edit distance with adjacent transpositions (`Prot` is one edit from `Port`), on folded text.
fn edit_distance(a: &str, b: &str) -> usize {
    let fold = |s: &str| s.chars().map(fold_char).collect::<String>();
    strsim::osa_distance(&fold(a), &fold(b))
}

/// The setting an unknown key most likely means: the same name one level up or down (`VNI`
/// at the top), else the closest name of its own level within a few edits.
fn suggestion(key: &str, level: &Level, other: &Level) -> Option<&'static str> {
    if let Some(s) = other.settings.iter().find(|s| fold_eq(key, s.name)) {
        return Some(s.path);
    }
    if key.chars().count() > 64 {
        return None;
    }
    level
        .settings
        .iter()
        .map(|s| {
            let allowed = match s.name.len() {
                0..=4 => 1,
                5..=8 => 2,
                _ => 3,
            };
            (edit_distance(key, s.name), allowed, s.path)
        })
        .filter(|(d, allowed, _)| d <= allowed)
        .min_by_key(|(d, _, _)| *d)
        .map(|(_, _, path)| path)
}

/// A JSON value whose objects keep every member, in order, duplicates included (serde_json's
/// `Value` keeps only the last of equal keys, and a duplicate must be seen to be refused).
#[derive(Debug)]
enum Raw {
    Object(Vec<(String, Raw)>),
    Other(Value),
}

impl Raw {
    fn is_null(&self) -> bool {
        matches!(self, Raw::Other(Value::Null))
    }

    /// As a plain JSON value (the last of duplicate keys kept), for messages.
    fn to_value(&self) -> Value {
        match self {
            Raw::Other(v) => v.clone(),
            Raw::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Other(v) => write!(f, "{v}"),
            Raw::Object(_) => write!(f, "{}", self.to_value()),
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Other(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Other(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Other(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Other(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Other(Value::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Other(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Other(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Other(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        Ok(Raw::Other(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut members = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Raw>()? {
            members.push((k, v));
        }
        Ok(Raw::Object(members))
    }
}

/// The members of one object matched to its level's settings.
struct Fields<'a> {
    level: &'static Level,
    values: Vec<Option<&'a Raw>>,
}

impl<'a> Fields<'a> {
    /// Match `members` to `level`'s settings, as Go does: an exact name, else a
    /// case-insensitive one. Every other key becomes a notice; a setting given twice is an
    /// error.
    fn resolve(
        members: &'a [(String, Raw)],
        level: &'static Level,
        other: &'static Level,
        notices: &mut Vec<ConfigNotice>,
    ) -> Result<Fields<'a>, ConfigError> {
        let mut values = vec![None; level.settings.len()];
        let mut spellings: Vec<Vec<String>> = vec![Vec::new(); level.settings.len()];
        let mut notice = |n: ConfigNotice| {
            if !notices.contains(&n) {
                notices.push(n);
            }
        };
        for (key, value) in members {
            let path = || KeyPath::new(level.parent, key);
            let matched = level
                .settings
                .iter()
                .position(|s| s.name == key)
                .or_else(|| level.settings.iter().position(|s| fold_eq(key, s.name)));
            if let Some(i) = matched {
                let s = &level.settings[i];
                if s.name != key {
                    notice(ConfigNotice {
                        path: path(),
                        kind: NoticeKind::NonCanonicalKey { canonical: s.path },
                    });
                }
                values[i] = Some(value);
                spellings[i].push(key.clone());
            } else if let Some((_, instead)) = level
                .flannel_only
                .iter()
                .find(|(name, _)| fold_eq(key, name))
            {
                notice(ConfigNotice {
                    path: path(),
                    kind: NoticeKind::Unsupported { instead },
                });
            } else {
                notice(ConfigNotice {
                    path: path(),
                    kind: NoticeKind::UnknownKey {
                        suggestion: suggestion(key, level, other),
                    },
                });
            }
        }
        if let Some((i, written)) = spellings.into_iter().enumerate().find(|(_, w)| w.len() > 1) {
            return Err(ConfigError::Duplicate {
                key: level.settings[i].path,
                spellings: written,
            });
        }
        Ok(Fields { level, values })
    }

    /// The value of setting `name`; `None` when absent or null.
    fn get(&self, name: &str) -> Option<&'a Raw> {
        let i = self
            .level
            .settings
            .iter()
            .position(|s| s.name == name)
            .expect("a setting of this level");
        self.values[i].filter(|v| !v.is_null())
    }
}

impl NetConfig {
    /// Parse and validate the JSON text of a network config.
    pub fn parse(text: &[u8]) -> Result<NetConfig, ConfigError> {
        let raw: Raw =
            serde_json::from_slice(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let Raw::Object(members) = raw else {
            return Err(ConfigError::NotAnObject);
        };
        let mut notices = Vec::new();
        let top = Fields::resolve(&members, &TOP, &BACKEND, &mut notices)?;

        let enable_v4 = opt_bool(top.get("EnableIPv4"), "EnableIPv4")?.unwrap_or(true);
        let enable_v6 = opt_bool(top.get("EnableIPv6"), "EnableIPv6")?.unwrap_or(false);
        if !enable_v4 && !enable_v6 {
            return Err(invalid(
                "EnableIPv4",
                "false with EnableIPv6 false too: at least one address family must be enabled",
            ));
        }
        let ipv4 = if enable_v4 {
            Some(parse_v4_pool(&top)?)
        } else {
            None
        };
        let ipv6 = if enable_v6 {
            Some(parse_v6_pool(&top)?)
        } else {
            None
        };

        let backend = match top.get("Backend") {
            None => BackendConfig::default(),
            Some(Raw::Object(members)) => {
                let b = Fields::resolve(members, &BACKEND, &TOP, &mut notices)?;
                parse_backend(&b, &mut notices)?
            }
            Some(other) => {
                return Err(invalid(
                    "Backend",
                    format!("expected an object like {{\"Type\":\"vxlan\"}}, got {other}"),
                ))
            }
        };

        check_wireguard_mode(&backend, ipv4.is_some(), ipv6.is_some())?;
        Ok(NetConfig {
            ipv4,
            ipv6,
            backend,
            notices,
        })
    }

    /// The IPv4 cluster network, when IPv4 is enabled.
    pub fn v4_network(&self) -> Option<Ipv4Network> {
        self.ipv4.as_ref().and_then(SubnetPool::v4_network)
    }

    /// The IPv6 cluster network, when IPv6 is enabled.
    pub fn v6_network(&self) -> Option<Ipv6Network> {
        self.ipv6.as_ref().and_then(SubnetPool::v6_network)
    }

    /// Serialize back to flannel-style JSON (used by tests and `netctl config -o json`), every
    /// key spelled as documented.
    pub fn to_json(&self) -> Value {
        let mut backend = Map::new();
        backend.insert("Type".into(), Value::from(self.backend.kind.as_str()));
        // Written for every backend: they are what was parsed (a host-gw config may carry
        // them; leases are still checked against the VNI), so the output reads back equal.
        backend.insert("VNI".into(), Value::from(self.backend.vni));
        backend.insert("Port".into(), Value::from(self.backend.port));
        backend.insert(
            "DirectRouting".into(),
            Value::from(self.backend.direct_routing),
        );
        if let Some(mtu) = self.backend.mtu {
            backend.insert("MTU".into(), Value::from(mtu));
        }
        let wg = &self.backend.wireguard;
        backend.insert("ListenPort".into(), Value::from(wg.listen_port));
        backend.insert("ListenPortV6".into(), Value::from(wg.listen_port_v6));
        if let Some(psk) = &wg.psk {
            backend.insert("PSK".into(), Value::from(psk.0.to_base64()));
        }
        backend.insert(
            "PersistentKeepaliveInterval".into(),
            Value::from(wg.keepalive),
        );
        backend.insert("Mode".into(), Value::from(wg.mode.as_str()));
        let mut out = Map::new();
        if let Some(p) = &self.ipv4 {
            out.insert("Network".into(), Value::from(p.network.to_string()));
            out.insert("SubnetLen".into(), Value::from(p.subnet_len));
            out.insert("SubnetMin".into(), Value::from(p.min.to_string()));
            out.insert("SubnetMax".into(), Value::from(p.max.to_string()));
        }
        out.insert("EnableIPv4".into(), Value::from(self.ipv4.is_some()));
        out.insert("EnableIPv6".into(), Value::from(self.ipv6.is_some()));
        if let Some(p) = &self.ipv6 {
            out.insert("IPv6Network".into(), Value::from(p.network.to_string()));
            out.insert("IPv6SubnetLen".into(), Value::from(p.subnet_len));
            out.insert("IPv6SubnetMin".into(), Value::from(p.min.to_string()));
            out.insert("IPv6SubnetMax".into(), Value::from(p.max.to_string()));
        }
        out.insert("Backend".into(), Value::Object(backend));
        Value::Object(out)
    }
}

fn parse_v4_pool(top: &Fields) -> Result<SubnetPool, ConfigError> {
    let network = match top.get("Network") {
        None => return Err(ConfigError::Missing("Network")),
        Some(v) => parse_v4_net("Network", v)?,
    };
    if network.ip() != network.network() {
        return Err(invalid(
            "Network",
            format!(
                "{network} has host bits set; did you mean {}/{}?",
                network.network(),
                network.prefix()
            ),
        ));
    }
    let subnet_len = match opt_u64(top.get("SubnetLen"), "SubnetLen")? {
        None => {
            if network.prefix() <= 22 {
                24
            } else {
                network.prefix() + 2
            }
        }
        Some(n) => u8::try_from(n).map_err(|_| invalid("SubnetLen", "must be at most 30"))?,
    };
    if subnet_len > 30 {
        return Err(invalid(
            "SubnetLen",
            format!("/{subnet_len} leaves no room for pods; must be at most 30"),
        ));
    }
    if subnet_len <= network.prefix() {
        return Err(invalid(
            "SubnetLen",
            format!(
                "/{subnet_len} must be longer than the Network's /{} so the network holds more than one subnet",
                network.prefix()
            ),
        ));
    }
    let step = subnet_step(subnet_len);
    let first = u32::from(network.network());
    let last_subnet = u32::from(network.broadcast()) - (step - 1);
    let subnet_min = match opt_v4_addr(top.get("SubnetMin"), "SubnetMin")? {
        // flannel skips the first subnet of the network by default.
        None => Ipv4Addr::from(first + step),
        Some(a) => check_subnet_bound("SubnetMin", a, network, subnet_len)?,
    };
    let subnet_max = match opt_v4_addr(top.get("SubnetMax"), "SubnetMax")? {
        None => Ipv4Addr::from(last_subnet),
        Some(a) => check_subnet_bound("SubnetMax", a, network, subnet_len)?,
    };
    if u32::from(subnet_min) > u32::from(subnet_max) {
        return Err(invalid(
            "SubnetMin",
            format!("{subnet_min} is above SubnetMax {subnet_max}"),
        ));
    }
    Ok(SubnetPool {
        network: IpNetwork::V4(network),
        subnet_len,
        min: IpAddr::V4(subnet_min),
        max: IpAddr::V4(subnet_max),
    })
}

/// The longest IPv6 subnet a node may lease: the CNI plugin needs the network address, the
/// gateway and at least one pod address.
pub const MAX_IPV6_SUBNET_LEN: u8 = 126;

fn parse_v6_pool(top: &Fields) -> Result<SubnetPool, ConfigError> {
    let network = match top.get("IPv6Network") {
        None => return Err(ConfigError::Missing("IPv6Network")),
        Some(Raw::Other(Value::String(s))) if s.contains('/') => s
            .parse::<Ipv6Network>()
            .map_err(|e| invalid("IPv6Network", format!("{s:?} is not an IPv6 CIDR: {e}")))?,
        Some(Raw::Other(Value::String(s))) => {
            return Err(invalid(
                "IPv6Network",
                format!("{s:?} has no prefix length (like /48)"),
            ))
        }
        Some(other) => {
            return Err(invalid(
                "IPv6Network",
                format!("expected a CIDR string like \"fc00::/48\", got {other}"),
            ))
        }
    };
    if network.ip() != network.network() {
        return Err(invalid(
            "IPv6Network",
            format!(
                "{network} has host bits set; did you mean {}/{}?",
                network.network(),
                network.prefix()
            ),
        ));
    }
    let subnet_len = match opt_u64(top.get("IPv6SubnetLen"), "IPv6SubnetLen")? {
        None => 64u8.max(network.prefix() + 1),
        Some(n) => u8::try_from(n).unwrap_or(u8::MAX),
    };
    if subnet_len > MAX_IPV6_SUBNET_LEN || subnet_len <= network.prefix() {
        return Err(invalid(
            "IPv6SubnetLen",
            format!(
                "/{subnet_len} must be longer than the IPv6Network's /{} and at most /{MAX_IPV6_SUBNET_LEN}",
                network.prefix()
            ),
        ));
    }
    let step = crate::config::pool::step(128, subnet_len);
    let first = u128::from(network.network());
    let last_subnet = first + (((u128::MAX >> network.prefix()) >> (128 - subnet_len)) * step);
    let bound = |key: &'static str, default: u128| -> Result<Ipv6Addr, ConfigError> {
        match top.get(key) {
            None => Ok(Ipv6Addr::from(default)),
            Some(Raw::Other(Value::String(s))) => {
                let a: Ipv6Addr = s
                    .parse()
                    .map_err(|_| invalid(key, format!("{s:?} is not an IPv6 address")))?;
                if !network.contains(a) {
                    return Err(invalid(
                        key,
                        format!("{a} is outside IPv6Network {network}"),
                    ));
                }
                if u128::from(a) % step != 0 {
                    return Err(invalid(
                        key,
                        format!("{a} is not the start of a /{subnet_len} subnet"),
                    ));
                }
                Ok(a)
            }
            Some(other) => Err(invalid(
                key,
                format!("expected an IPv6 address string, got {other}"),
            )),
        }
    };
    // As for IPv4, the first subnet of the network is skipped by default.
    let min = bound("IPv6SubnetMin", first + step)?;
    let max = bound("IPv6SubnetMax", last_subnet)?;
    if u128::from(min) > u128::from(max) {
        return Err(invalid(
            "IPv6SubnetMin",
            format!("{min} is above IPv6SubnetMax {max}"),
        ));
    }
    Ok(SubnetPool {
        network: IpNetwork::V6(network),
        subnet_len,
        min: IpAddr::V6(min),
        max: IpAddr::V6(max),
    })
}

/// Address distance between two consecutive subnets of length `len`.
pub fn subnet_step(len: u8) -> u32 {
    1u32 << (32 - u32::from(len))
}

fn parse_backend(
    b: &Fields,
    notices: &mut Vec<ConfigNotice>,
) -> Result<BackendConfig, ConfigError> {
    let mut cfg = BackendConfig::default();
    match b.get("Type") {
        None => {}
        Some(Raw::Other(Value::String(t))) => {
            // flannel looks the backend up by its lowercased name.
            cfg.kind = t
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| invalid("Backend.Type", UnknownBackend(t.clone()).to_string()))?;
            if t != cfg.kind.as_str() {
                notices.push(ConfigNotice {
                    path: KeyPath::new(Some("Backend"), "Type"),
                    kind: NoticeKind::NonCanonicalValue {
                        written: t.clone(),
                        canonical: cfg.kind.as_str(),
                    },
                });
            }
        }
        Some(other) => {
            return Err(invalid(
                "Backend.Type",
                format!("expected a string, got {other}"),
            ))
        }
    }
    if let Some(vni) = opt_u64(b.get("VNI"), "Backend.VNI")? {
        if vni == 0 || vni > 0x00ff_ffff {
            return Err(invalid(
                "Backend.VNI",
                format!("{vni} is outside 1..=16777215"),
            ));
        }
        cfg.vni = vni as u32;
    }
    if let Some(port) = opt_u64(b.get("Port"), "Backend.Port")? {
        match port {
            // flannel treats 0 as "the kernel default", which is 8472 on Linux.
            0 => cfg.port = DEFAULT_VXLAN_PORT,
            1..=65535 => cfg.port = port as u16,
            _ => return Err(invalid("Backend.Port", format!("{port} is not a UDP port"))),
        }
    }
    if let Some(dr) = opt_bool(b.get("DirectRouting"), "Backend.DirectRouting")? {
        cfg.direct_routing = dr;
    }
    if let Some(mtu) = opt_u64(b.get("MTU"), "Backend.MTU")? {
        if !(576..=65535).contains(&mtu) {
            return Err(invalid(
                "Backend.MTU",
                format!("{mtu} is outside 576..=65535"),
            ));
        }
        cfg.mtu = Some(mtu as u32);
    }
    let wg = &mut cfg.wireguard;
    for (key, path, port) in [
        ("ListenPort", "Backend.ListenPort", &mut wg.listen_port),
        (
            "ListenPortV6",
            "Backend.ListenPortV6",
            &mut wg.listen_port_v6,
        ),
    ] {
        if let Some(p) = opt_u64(b.get(key), path)? {
            *port = match p {
                1..=65535 => p as u16,
                _ => return Err(invalid(path, format!("{p} is not a UDP port (1..=65535)"))),
            };
        }
    }
    match b.get("PSK") {
        None => {}
        Some(Raw::Other(Value::String(text))) if text.is_empty() => {}
        Some(Raw::Other(Value::String(text))) => {
            let key = Key::from_base64(text).map_err(|e| {
                invalid("Backend.PSK", format!("is {e}: make one with `wg genpsk`"))
            })?;
            wg.psk = Some(PresharedKey(key));
        }
        Some(other) => {
            return Err(invalid(
                "Backend.PSK",
                format!("expected a base64 key (from `wg genpsk`), got {other}"),
            ))
        }
    }
    if let Some(k) = opt_u64(
        b.get("PersistentKeepaliveInterval"),
        "Backend.PersistentKeepaliveInterval",
    )? {
        wg.keepalive = u16::try_from(k).map_err(|_| {
            invalid(
                "Backend.PersistentKeepaliveInterval",
                format!("{k} is more than 65535 seconds"),
            )
        })?;
    }
    match b.get("Mode") {
        None => {}
        Some(Raw::Other(Value::String(m))) => {
            wg.mode = m
                .to_ascii_lowercase()
                .parse()
                .map_err(|e: wireguard::UnknownMode| invalid("Backend.Mode", e.to_string()))?;
        }
        Some(other) => {
            return Err(invalid(
                "Backend.Mode",
                format!("expected a string such as \"separate\", got {other}"),
            ))
        }
    }
    Ok(cfg)
}

/// The combinations of families and `Backend.Mode` that can work: a single-family mode
/// needs its family enabled (it sends over that family's public IPs).
fn check_wireguard_mode(
    backend: &BackendConfig,
    ipv4: bool,
    ipv6: bool,
) -> Result<(), ConfigError> {
    if backend.kind != BackendKind::Wireguard {
        return Ok(());
    }
    let problem = match (backend.wireguard.mode, ipv4, ipv6) {
        (Mode::Ipv4, false, _) => {
            "\"ipv4\" sends over IPv4, but EnableIPv4 is false: use \"ipv6\" or \"auto\"".to_string()
        }
        (Mode::Ipv6, _, false) => {
            "\"ipv6\" sends over IPv6, but IPv6 is not enabled: use \"ipv4\" or \"auto\", or enable IPv6 (EnableIPv6 and IPv6Network)".to_string()
        }
        _ => return Ok(()),
    };
    Err(invalid("Backend.Mode", problem))
}

fn opt_u64(v: Option<&Raw>, key: &'static str) -> Result<Option<u64>, ConfigError> {
    match v {
        None => Ok(None),
        Some(Raw::Other(Value::Number(n))) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(key, format!("expected a non-negative integer, got {n}"))),
        Some(other) => Err(invalid(
            key,
            format!("expected a non-negative integer, got {other}"),
        )),
    }
}

fn opt_bool(v: Option<&Raw>, key: &'static str) -> Result<Option<bool>, ConfigError> {
    match v {
        None => Ok(None),
        Some(Raw::Other(Value::Bool(b))) => Ok(Some(*b)),
        Some(other) => Err(invalid(key, format!("expected true or false, got {other}"))),
    }
}

fn opt_v4_addr(v: Option<&Raw>, key: &'static str) -> Result<Option<Ipv4Addr>, ConfigError> {
    match v {
        None => Ok(None),
        Some(Raw::Other(Value::String(s))) => s
            .parse::<Ipv4Addr>()
            .map(Some)
            .map_err(|_| invalid(key, format!("{s:?} is not an IPv4 address"))),
        Some(other) => Err(invalid(
            key,
            format!("expected an IPv4 address string, got {other}"),
        )),
    }
}

fn parse_v4_net(key: &'static str, v: &Raw) -> Result<Ipv4Network, ConfigError> {
    match v {
        Raw::Other(Value::String(s)) => {
            if !s.contains('/') {
                return Err(invalid(
                    key,
                    format!("{s:?} has no prefix length (like /16)"),
                ));
            }
            s.parse::<Ipv4Network>()
                .map_err(|e| invalid(key, format!("{s:?} is not an IPv4 CIDR: {e}")))
        }
        other => Err(invalid(
            key,
            format!("expected a CIDR string like \"10.244.0.0/16\", got {other}"),
        )),
    }
}

fn check_subnet_bound(
    key: &'static str,
    a: Ipv4Addr,
    network: Ipv4Network,
    subnet_len: u8,
) -> Result<Ipv4Addr, ConfigError> {
    if !network.contains(a) {
        return Err(invalid(key, format!("{a} is outside Network {network}")));
    }
    if u32::from(a) % subnet_step(subnet_len) != 0 {
        return Err(invalid(
            key,
            format!("{a} is not the start of a /{subnet_len} subnet"),
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConfig, ConfigError> {
        NetConfig::parse(s.as_bytes())
    }

    #[test]
    fn flannel_defaults() {
        let c = parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert!(c.ipv6.is_none());
        let p = c.ipv4.unwrap();
        assert_eq!(p.subnet_len, 24);
        assert_eq!(p.min, "10.244.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(p.max, "10.244.255.0".parse::<IpAddr>().unwrap());
        assert_eq!(p.size(), 255);
        assert_eq!(c.backend, BackendConfig::default());
        assert_eq!(c.backend.kind, BackendKind::Vxlan);
    }

    #[test]
    fn small_network_default_subnet_len() {
        let c = parse(r#"{"Network":"10.1.0.0/24"}"#).unwrap().ipv4.unwrap();
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.size(), 3);
        let c = parse(r#"{"Network":"10.1.0.0/22"}"#).unwrap().ipv4.unwrap();
        assert_eq!(c.subnet_len, 24);
    }

    #[test]
    fn explicit_values() {
        let c = parse(
            r#"{"Network":"10.5.0.0/16","SubnetLen":26,"SubnetMin":"10.5.0.64","SubnetMax":"10.5.3.192",
               "Backend":{"Type":"host-gw"},"SomethingNew":1}"#,
        )
        .unwrap();
        let p = c.ipv4.unwrap();
        assert_eq!(p.subnet_len, 26);
        assert_eq!(p.size(), 15);
        assert_eq!(p.subnet(0).unwrap().to_string(), "10.5.0.64/26");
        assert_eq!(c.backend.kind, BackendKind::HostGw);
        assert_eq!(
            c.notices,
            vec![ConfigNotice {
                path: KeyPath(vec!["SomethingNew".into()]),
                kind: NoticeKind::UnknownKey { suggestion: None }
            }]
        );
    }

    #[test]
    fn wireguard_backend_fields_with_flannels_defaults() {
        let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#).unwrap();
        assert_eq!(c.backend.kind, BackendKind::Wireguard);
        assert_eq!(c.backend.wireguard, WireguardConfig::default());
        assert_eq!(
            (
                c.backend.wireguard.listen_port,
                c.backend.wireguard.listen_port_v6
            ),
            (51820, 51821)
        );
        let psk = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let text = format!(
            r#"{{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{{"Type":"wireguard","ListenPort":5000,"ListenPortV6":5001,"PSK":"{psk}","PersistentKeepaliveInterval":25,"Mode":"separate","MTU":1380}}}}"#
        );
        let c = parse(&text).unwrap();
        let wg = &c.backend.wireguard;
        assert_eq!(
            (wg.listen_port, wg.listen_port_v6, wg.keepalive),
            (5000, 5001, 25)
        );
        assert_eq!(wg.psk.map(|k| k.0.to_base64()).as_deref(), Some(psk));
        assert_eq!(
            (wg.port_of(IpFamily::V4), wg.port_of(IpFamily::V6)),
            (5000, 5001)
        );
        assert_eq!(c.backend.mtu, Some(1380));
        // Written back, it reads the same.
        assert_eq!(parse(&c.to_json().to_string()).unwrap(), c);
        // Single-device modes: one port for both.
        let c = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard","Mode":"auto"}}"#).unwrap();
        assert_eq!(c.backend.wireguard.port_of(IpFamily::V6), 51820);
    }

    #[test]
    fn bad_wireguard_values_name_the_key_and_the_fix() {
        for (text, key, fix) in [
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","ListenPort":0}}"#,
                "Backend.ListenPort",
                "1..=65535",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","ListenPortV6":70000}}"#,
                "Backend.ListenPortV6",
                "not a UDP port",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","PSK":"short"}}"#,
                "Backend.PSK",
                "wg genpsk",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","PSK":7}}"#,
                "Backend.PSK",
                "base64",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":-1}}"#,
                "Backend.PersistentKeepaliveInterval",
                "non-negative",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":70000}}"#,
                "Backend.PersistentKeepaliveInterval",
                "65535",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","Mode":"both"}}"#,
                "Backend.Mode",
                "\"separate\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","Mode":"ipv6"}}"#,
                "Backend.Mode",
                "IPv6 is not enabled",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"wireguard","Mode":"ipv4"}}"#,
                "Backend.Mode",
                "EnableIPv4 is false",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("\"{key}\"")), "{text}: {e}");
            assert!(e.contains(fix), "{text}: {e}");
        }
    }

    #[test]
    fn single_device_modes_on_dual_stack_use_one_port() {
        for mode in ["auto", "ipv4", "ipv6"] {
            let c = parse(&format!(
                r#"{{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{{"Type":"wireguard","Mode":"{mode}","ListenPort":5000,"ListenPortV6":5001}}}}"#
            ))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
            let wg = &c.backend.wireguard;
            assert_eq!(wg.mode.as_str(), mode);
            assert!(wg.mode.shares_device(true), "{mode}");
            assert_eq!(
                (wg.port_of(IpFamily::V4), wg.port_of(IpFamily::V6)),
                (5000, 5000),
                "{mode}: the one device listens on ListenPort"
            );
        }
    }

    #[test]
    fn vxlan_backend_fields() {
        let c = parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"DirectRouting":true,"MTU":9000}}"#,
        )
        .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig {
                kind: BackendKind::Vxlan,
                vni: 42,
                port: 4789,
                direct_routing: true,
                mtu: Some(9000),
                ..BackendConfig::default()
            }
        );
        let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Port":0}}"#).unwrap();
        assert_eq!(c.backend.port, 8472);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not valid JSON"),
            ("[1,2]", "must be a JSON object"),
            ("{}", "\"Network\""),
            (r#"{"Network":42}"#, "\"Network\""),
            (r#"{"Network":"10.0.0.0"}"#, "no prefix length"),
            (r#"{"Network":"10.0.0.1/16"}"#, "host bits"),
            (r#"{"Network":"fc00::/64"}"#, "\"Network\""),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":16}"#,
                "\"SubnetLen\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
                "\"SubnetLen\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#,
                "\"SubnetLen\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#,
                "\"SubnetLen\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
                "\"SubnetMin\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.0.5"}"#,
                "\"SubnetMin\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMax":"nope"}"#,
                "\"SubnetMax\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}"#,
                "above SubnetMax",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#,
                "\"Backend.Type\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#,
                "\"Backend\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"VNI":0}}"#,
                "\"Backend.VNI\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"VNI":16777216}}"#,
                "\"Backend.VNI\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Port":70000}}"#,
                "\"Backend.Port\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"MTU":100}}"#,
                "\"Backend.MTU\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"DirectRouting":"yes"}}"#,
                "\"Backend.DirectRouting\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv4":false}"#,
                "\"EnableIPv4\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#,
                "\"IPv6Network\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":"yes","IPv6Network":"fc00::/48"}"#,
                "\"EnableIPv6\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::"}"#,
                "no prefix length",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"10.0.0.0/16"}"#,
                "\"IPv6Network\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::1/48"}"#,
                "host bits",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":48}"#,
                "\"IPv6SubnetLen\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#,
                "\"IPv6SubnetLen\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::"}"#,
                "\"IPv6SubnetMin\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:1::5"}"#,
                "\"IPv6SubnetMax\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:9::","IPv6SubnetMax":"fc00:0:0:3::"}"#,
                "above IPv6SubnetMax",
            ),
        ];
        for (input, needle) in cases {
            let err = parse(input).expect_err(input).to_string();
            assert!(
                err.contains(needle),
                "{input}: error {err:?} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn dual_stack_and_ipv6_only() {
        let c = parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#)
            .unwrap();
        assert_eq!(c.v4_network().unwrap().to_string(), "10.244.0.0/16");
        let p6 = c.ipv6.unwrap();
        assert_eq!(p6.subnet_len, 64);
        assert_eq!(p6.min.to_string(), "fc00:0:0:1::");
        assert_eq!(p6.max.to_string(), "fc00:0:0:ffff::");
        assert_eq!(p6.size(), 65535);

        let c = parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/56","IPv6SubnetLen":60,
                "IPv6SubnetMin":"fd00:10:0:20::","IPv6SubnetMax":"fd00:10:0:40::","Network":"ignored"}"#,
        )
        .unwrap();
        assert!(c.ipv4.is_none(), "IPv4 off: Network is not read");
        let p6 = c.ipv6.unwrap();
        assert_eq!(p6.size(), 3);
        assert_eq!(p6.subnet(2).unwrap().to_string(), "fd00:10:0:40::/60");

        // A /64 network cannot hold /64 subnets; the default length follows the network.
        let c =
            parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120"}"#).unwrap();
        assert_eq!(c.ipv6.unwrap().subnet_len, 121);
    }

    #[test]
    fn fits_checks_network_and_length() {
        let c = parse(r#"{"Network":"10.244.0.0/16"}"#)
            .unwrap()
            .ipv4
            .unwrap();
        assert!(
            c.fits("10.244.0.0/24".parse().unwrap()),
            "first subnet still fits"
        );
        assert!(!c.fits("10.245.0.0/24".parse().unwrap()));
        assert!(!c.fits("10.244.0.0/25".parse().unwrap()));
    }

    #[test]
    fn round_trips_through_json() {
        for text in [
            r#"{"Network":"10.5.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan","VNI":7}}"#,
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":80}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
            // Found by the fuzzer: vxlan options on a host-gw backend were not written back.
            r#"{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw","VNI":7,"DirectRouting":true}}"#,
        ] {
            let c = parse(text).unwrap();
            let again = NetConfig::parse(c.to_json().to_string().as_bytes()).unwrap();
            assert_eq!(c, again, "{text}");
        }
    }

    fn path(p: &str) -> KeyPath {
        KeyPath(p.split('.').map(str::to_string).collect())
    }

    fn non_canonical(written: &str, canonical: &'static str) -> ConfigNotice {
        ConfigNotice {
            path: path(written),
            kind: NoticeKind::NonCanonicalKey { canonical },
        }
    }

    #[test]
    fn flannel_spellings_are_read_at_both_levels() {
        // What Go's encoding/json (and so flannel) reads from each text.
        let c = parse(r#"{"network":"10.5.0.0/16","backend":{"type":"host-gw"}}"#).unwrap();
        assert_eq!(c.v4_network().unwrap().to_string(), "10.5.0.0/16");
        assert_eq!(c.backend.kind, BackendKind::HostGw);
        assert_eq!(
            c.notices,
            vec![
                non_canonical("network", "Network"),
                non_canonical("backend", "Backend"),
                non_canonical("Backend.type", "Backend.Type"),
            ]
        );

        let c = parse(
            r#"{"NETWORK":"10.5.0.0/16","subnetlen":26,"SUBNETMIN":"10.5.0.64","subnetMax":"10.5.3.192",
                "enableipv6":true,"ipv6NETWORK":"fc00::/48","Ipv6SubnetLen":80,
                "BACKEND":{"TYPE":"vxlan","vni":42,"port":4789,"directrouting":true,"mtu":1400}}"#,
        )
        .unwrap();
        let p = c.ipv4.as_ref().unwrap();
        assert_eq!((p.subnet_len, p.size()), (26, 15));
        assert_eq!(c.ipv6.as_ref().unwrap().subnet_len, 80);
        assert_eq!(
            c.backend,
            BackendConfig {
                kind: BackendKind::Vxlan,
                vni: 42,
                port: 4789,
                direct_routing: true,
                mtu: Some(1400),
                ..BackendConfig::default()
            }
        );
        assert_eq!(c.notices.len(), 13, "{:#?}", c.notices);
        assert!(c
            .notices
            .iter()
            .all(|n| matches!(n.kind, NoticeKind::NonCanonicalKey { .. })));

        let c =
            parse(r#"{"enableIPv4":false,"EnableIpv6":true,"ipv6network":"fc00::/48"}"#).unwrap();
        assert!(c.ipv4.is_none());
        assert_eq!(c.v6_network().unwrap().to_string(), "fc00::/48");

        // Unicode simple folding, as Go does it: the Kelvin sign is a k, the long s an s; a
        // dotless i is not an i.
        let c = parse("{\"Networ\u{212A}\":\"10.5.0.0/16\",\"\u{17F}ubnetLen\":26}").unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 26);
        assert_eq!(
            c.notices[0].to_string(),
            "network config key \"Networ\\u{212a}\" is read as \"Network\" (keys match \
             case-insensitively, as in flannel); spell it \"Network\""
        );
        let c = parse("{\"Network\":\"10.5.0.0/16\",\"\u{131}Pv6Network\":\"fc00::/48\"}").unwrap();
        assert!(matches!(c.notices[0].kind, NoticeKind::UnknownKey { .. }));

        // The documented spelling gives no notice at all.
        let c = parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","VNI":1}}"#,
        )
        .unwrap();
        assert_eq!(c.notices, vec![]);
    }

    #[test]
    fn backend_names_match_case_insensitively_like_flannels_lookup() {
        for (written, kind) in [
            ("VXLAN", BackendKind::Vxlan),
            ("Host-GW", BackendKind::HostGw),
            ("host-gw", BackendKind::HostGw),
        ] {
            let c = parse(&format!(
                r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{written}"}}}}"#
            ))
            .unwrap();
            assert_eq!(c.backend.kind, kind, "{written}");
            let expected: Vec<ConfigNotice> = (written != kind.as_str())
                .then(|| ConfigNotice {
                    path: path("Backend.Type"),
                    kind: NoticeKind::NonCanonicalValue {
                        written: written.into(),
                        canonical: kind.as_str(),
                    },
                })
                .into_iter()
                .collect();
            assert_eq!(c.notices, expected, "{written}");
        }
        let e = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"UDP"}}"#).unwrap_err();
        assert!(e.to_string().contains("\"UDP\""), "{e}");
        let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"VXLAN"}}"#).unwrap();
        assert_eq!(
            c.notices[0].to_string(),
            "network config key \"Backend.Type\" has the value \"VXLAN\", read as \"vxlan\" \
             (backend names match case-insensitively, as in flannel); write \"vxlan\""
        );
    }

    #[test]
    fn unknown_keys_are_reported_at_every_level_with_a_likely_meaning() {
        let c = parse(
            r#"{"Network":"10.5.0.0/16","Netwrok":"x","VNI":7,"Colour":"blue",
                "Backend":{"Type":"vxlan","Prot":4789,"network":"10.6.0.0/16","GBP":true,"Flavour":1},
                "EnableNFTables":false}"#,
        )
        .unwrap();
        let unknown = |p: &str, suggestion| ConfigNotice {
            path: path(p),
            kind: NoticeKind::UnknownKey { suggestion },
        };
        let unsupported = |p: &str| ConfigNotice {
            path: path(p),
            kind: NoticeKind::Unsupported {
                instead: match p {
                    "EnableNFTables" => "weft always masquerades with nftables",
                    _ => "weft's VXLAN devices do not carry Group Based Policy",
                },
            },
        };
        assert_eq!(
            c.notices,
            vec![
                unknown("Netwrok", Some("Network")),
                unknown("VNI", Some("Backend.VNI")),
                unknown("Colour", None),
                unsupported("EnableNFTables"),
                unknown("Backend.Prot", Some("Backend.Port")),
                unknown("Backend.network", Some("Network")),
                unsupported("Backend.GBP"),
                unknown("Backend.Flavour", None),
            ]
        );
        // Ignored means ignored: the misspelt port is not the port.
        assert_eq!(c.backend.port, DEFAULT_VXLAN_PORT);
        let text: Vec<String> = c.notices.iter().map(ToString::to_string).collect();
        assert_eq!(
            text[4],
            "network config key \"Backend.Prot\" is not one weft knows, so it is ignored; did you \
             mean \"Backend.Port\"?"
        );
        assert_eq!(
            text[2],
            "network config key \"Colour\" is not one weft knows, so it is ignored"
        );
        assert_eq!(
            text[6],
            "network config key \"Backend.GBP\" is a flannel setting weft does not implement, so \
             it is ignored (weft's VXLAN devices do not carry Group Based Policy)"
        );
        // Keys that cannot be shown as they are come out escaped and cut short.
        let long = "k".repeat(100);
        let c = parse(&format!(
            "{{\"Network\":\"10.5.0.0/16\",\"a\\n\\\"b\":1,\"{long}\":2}}"
        ))
        .unwrap();
        assert_eq!(
            c.notices[0].to_string(),
            "network config key \"a\\u{a}\\\"b\" is not one weft knows, so it is ignored"
        );
        assert!(
            c.notices[1]
                .to_string()
                .contains(&format!("\"{}…\"", "k".repeat(64))),
            "{}",
            c.notices[1]
        );
    }

    #[test]
    fn a_setting_given_twice_is_refused_as_ambiguous() {
        for (text, key, spellings) in [
            (
                r#"{"network":"10.5.0.0/16","Network":"10.6.0.0/16"}"#,
                "Network",
                &["network", "Network"][..],
            ),
            (
                r#"{"Network":"10.5.0.0/16","Network":"10.5.0.0/16"}"#,
                "Network",
                &["Network", "Network"],
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","TYPE":"host-gw","type":"vxlan"}}"#,
                "Backend.Type",
                &["Type", "TYPE", "type"],
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{},"backend":null}"#,
                "Backend",
                &["Backend", "backend"],
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(
                e,
                ConfigError::Duplicate {
                    key,
                    spellings: spellings.iter().map(|s| s.to_string()).collect()
                },
                "{text}"
            );
        }
        assert_eq!(
            parse(r#"{"network":"10.5.0.0/16","Network":"10.6.0.0/16"}"#)
                .unwrap_err()
                .to_string(),
            "network config: key \"Network\" is given 2 times (as \"network\", \"Network\"), so \
             which value applies is ambiguous; keep one"
        );
        // An unknown key twice is only reported, once.
        let c = parse(r#"{"Network":"10.5.0.0/16","Extra":1,"Extra":2}"#).unwrap();
        assert_eq!(c.notices.len(), 1);
    }

    #[test]
    fn odd_spellings_round_trip_to_the_documented_ones() {
        for text in [
            r#"{"network":"10.5.0.0/16","backend":{"type":"Host-GW","vni":3}}"#,
            r#"{"NETWORK":"10.5.0.0/16","ENABLEIPV6":true,"IPV6NETWORK":"fc00::/48","Backend":{"Type":"VXLAN","mtu":1400}}"#,
        ] {
            let c = parse(text).unwrap();
            assert!(!c.notices.is_empty());
            let again = NetConfig::parse(c.to_json().to_string().as_bytes()).unwrap();
            assert_eq!(again.notices, vec![], "{text}");
            assert_eq!(
                NetConfig {
                    notices: vec![],
                    ..c
                },
                again,
                "{text}"
            );
        }
    }

    #[test]
    fn suggestions_need_a_close_name() {
        assert_eq!(edit_distance("Prot", "Port"), 1);
        assert_eq!(edit_distance("subnetlength", "SubnetLen"), 3);
        assert_eq!(edit_distance("", "VNI"), 3);
        assert_eq!(suggestion("Prot", &BACKEND, &TOP), Some("Backend.Port"));
        assert_eq!(
            suggestion("SubnetLength", &TOP, &BACKEND),
            Some("SubnetLen")
        );
        assert_eq!(suggestion("Typo", &BACKEND, &TOP), Some("Backend.Type"));
        assert_eq!(suggestion("MTUs", &BACKEND, &TOP), Some("Backend.MTU"));
        assert_eq!(suggestion("Colour", &TOP, &BACKEND), None);
        assert_eq!(suggestion("XYZ", &BACKEND, &TOP), None);
    }
}
