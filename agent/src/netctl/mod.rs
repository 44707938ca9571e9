//! `netctl`: what an operator asks of weft's etcd state. Rendering is pure and tested on
//! known leases; the commands only fetch and print.

pub mod check;
pub mod cluster;
pub mod health;
pub mod health_html;
pub mod host_facts;
pub mod weftd_http;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde::Serialize;

use crate::cli::{ConfigOutput, Output};
use crate::config::NetConfig;
use crate::lease::pick::Occupancy;
use crate::lease::{validate, LeaseAttrs, LeaseRules, SubnetKey};
use crate::store::{LeaseStore, StoreError, StoredEntry, TtlLeaseId};
use weft_backends::backend::wireguard::WireguardData;

/// One row of `netctl leases`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRow {
    pub key: String,
    /// The IPv4 subnet; the key itself when it is not a subnet key, "-" when IPv6-only.
    pub subnet: String,
    pub subnet_v6: Option<String>,
    pub node: Option<String>,
    pub public_ip: Option<String>,
    pub public_ip_v6: Option<String>,
    pub backend: Option<String>,
    pub vtep_mac: Option<String>,
    pub vtep_mac_v6: Option<String>,
    /// The WireGuard public key (base64) and listen port the lease publishes, per family.
    pub wireguard_key: Option<String>,
    pub wireguard_port: Option<u16>,
    pub wireguard_key_v6: Option<String>,
    pub wireguard_port_v6: Option<u16>,
    /// Seconds left; `None` for a reservation or an unknown TTL.
    pub ttl_seconds: Option<u64>,
    pub reserved: bool,
    /// RFC 3339 expiry time; `None` for a reservation.
    pub expires: Option<String>,
    pub etcd_lease: Option<String>,
    pub mod_revision: i64,
    pub valid: bool,
    pub problem: Option<String>,
    pub status: LeaseStatus,
    /// The lease of the host netctl runs on (the subnet its subnet.env names).
    pub this_node: bool,
}

/// A lease's state, as the STATUS column shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseStatus {
    /// A valid lease with an etcd TTL.
    Ok,
    /// A valid key without an etcd TTL: it never expires, only its node may use it.
    Reserved,
    /// Its etcd TTL lease ran out between listing and asking (the key goes with it).
    Expired,
    /// The key or value fails validation; weftd ignores it (`problem` says why).
    Invalid,
}

/// Where a lease sorts: family width, address, prefix length.
type SortKey = (u8, u128, u8);

/// Build rows from entries, in address order (the one order of every output). `ttls` maps
/// TTL lease ids to time left (`None`: expired); `own` is this host's key, from its
/// subnet.env.
pub fn lease_rows(
    entries: &[StoredEntry],
    rules: Option<&LeaseRules>,
    ttls: &BTreeMap<TtlLeaseId, Option<Duration>>,
    own: Option<&SubnetKey>,
    now: SystemTime,
) -> Vec<LeaseRow> {
    let mut rows: Vec<(Option<SortKey>, LeaseRow)> = entries
        .iter()
        .map(|e| {
            let key = e.name.parse::<SubnetKey>();
            let decoded = LeaseAttrs::decode(&e.value);
            let problem = match (rules, &key, &decoded) {
                (Some(r), _, _) => validate(r, &e.name, &e.value)
                    .err()
                    .map(|err| err.to_string()),
                (None, Err(err), _) => Some(err.to_string()),
                (None, _, Err(err)) => Some(err.to_string()),
                (None, Ok(_), Ok(_)) => None,
            };
            let key = key.ok();
            let attrs = decoded.ok();
            let ttl = e.ttl_lease.and_then(|l| ttls.get(&l).copied().flatten());
            let status = match (&problem, e.ttl_lease, ttl) {
                (Some(_), _, _) => LeaseStatus::Invalid,
                (None, None, _) => LeaseStatus::Reserved,
                (None, Some(_), Some(_)) => LeaseStatus::Ok,
                (None, Some(_), None) => LeaseStatus::Expired,
            };
            let vtep = attrs
                .as_ref()
                .and_then(|a| a.vxlan_data().ok())
                .map(|d| d.vtep_mac.to_string());
            let vtep6 = attrs
                .as_ref()
                .and_then(|a| a.vxlan_v6_data().ok())
                .map(|d| d.vtep_mac.to_string());
            let wg = |v: Option<&serde_json::Value>| {
                v.and_then(|v| serde_json::from_value::<WireguardData>(v.clone()).ok())
            };
            let is_wg = attrs
                .as_ref()
                .is_some_and(|a| a.backend_type == "wireguard");
            let (wg4, wg6) = match (&attrs, is_wg) {
                (Some(a), true) => (wg(a.backend_data.as_ref()), wg(a.backend_v6_data.as_ref())),
                _ => (None, None),
            };
            let row = LeaseRow {
                key: e.name.clone(),
                subnet: match key {
                    Some(k) => k
                        .v4_subnet()
                        .map_or_else(|| "-".to_string(), |s| s.to_string()),
                    None => e.name.escape_debug().to_string(),
                },
                subnet_v6: key.and_then(|k| k.v6).map(|s| s.to_string()),
                node: attrs.as_ref().and_then(|a| a.node_name.clone()),
                public_ip: attrs
                    .as_ref()
                    .and_then(|a| a.public_ip)
                    .filter(|ip| !ip.is_unspecified())
                    .map(|ip| ip.to_string()),
                public_ip_v6: attrs
                    .as_ref()
                    .and_then(|a| a.public_ip_v6)
                    .map(|ip| ip.to_string()),
                backend: attrs.as_ref().map(|a| a.backend_type.clone()),
                vtep_mac: vtep.filter(|_| !is_wg),
                vtep_mac_v6: vtep6.filter(|_| !is_wg),
                wireguard_key: wg4.as_ref().map(|d| d.public_key.clone()),
                wireguard_port: wg4.as_ref().map(|d| d.port),
                wireguard_key_v6: wg6.as_ref().map(|d| d.public_key.clone()),
                wireguard_port_v6: wg6.as_ref().map(|d| d.port),
                ttl_seconds: ttl.map(|d| d.as_secs()),
                reserved: e.ttl_lease.is_none(),
                expires: ttl.map(|d| humantime::format_rfc3339_seconds(now + d).to_string()),
                etcd_lease: e.ttl_lease.map(|l| format!("{:x}", l.0)),
                mod_revision: e.mod_revision.0,
                valid: problem.is_none(),
                problem,
                status,
                this_node: key.is_some() && key.as_ref() == own,
            };
            let order = key.map(|k| {
                let p = k.primary();
                let (addr, bits) = crate::config::pool::addr_bits(p.ip());
                (bits, addr, p.prefix())
            });
            (order, row)
        })
        .collect();
    // Subnets in address order; keys that are not subnets last.
    rows.sort_by(|a, b| match (&a.0, &b.0) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.1.key.cmp(&b.1.key),
    });
    rows.into_iter().map(|(_, r)| r).collect()
}

/// "23h59m", "4m05s", "42s".
pub fn short_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Time left, or "-" for a key without one (a reservation, or one whose TTL ran out).
fn ttl_cell(r: &LeaseRow) -> String {
    r.ttl_seconds.map_or_else(|| "-".into(), short_duration)
}

/// "ok", "reserved", "expired", "invalid: <why>". The table gives the reason's first clause
/// (what is wrong); wide gives it whole, as the warning on stderr does.
fn status_cell(r: &LeaseRow, wide: bool) -> String {
    match (r.status, &r.problem) {
        (LeaseStatus::Invalid, Some(p)) => {
            let why = if wide {
                p.as_str()
            } else {
                p.split_once(": ").map_or(p.as_str(), |(what, _)| what)
            };
            format!("invalid: {why}")
        }
        (LeaseStatus::Invalid, None) => "invalid".into(),
        (LeaseStatus::Ok, _) => "ok".into(),
        (LeaseStatus::Reserved, _) => "reserved".into(),
        (LeaseStatus::Expired, _) => "expired".into(),
    }
}

fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// A plain text table with columns padded to their widest cell.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// What [`render_table`] drew, read back (for tests): each row's cells by the header word
/// above them, up to the first empty line. A column runs from where its header word starts
/// to where the next one starts.
#[cfg(test)]
pub(crate) fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let mut starts: Vec<(usize, String)> = Vec::new();
    let mut prev = ' ';
    for (i, c) in header.char_indices() {
        if c != ' ' && prev == ' ' {
            let word = header[i..].split(' ').next().unwrap_or_default();
            starts.push((i, word.to_string()));
        }
        prev = c;
    }
    lines
        .take_while(|l| !l.is_empty())
        .map(|l| {
            starts
                .iter()
                .enumerate()
                .map(|(n, (at, name))| {
                    let end = starts.get(n + 1).map_or(l.len(), |(e, _)| *e);
                    let cell = l.get(*at..end.min(l.len())).unwrap_or_default();
                    (name.clone(), cell.trim().to_string())
                })
                .collect()
        })
        .collect()
}

/// The leases as a table (columns for the families the leases use) or JSON, in the rows'
/// order. The row of this host's lease is marked `*` in a first column, as `git branch` marks
/// the current branch.
pub fn render_leases(rows: &[LeaseRow], output: Output) -> String {
    if output == Output::Json {
        return serde_json::to_string_pretty(rows).expect("rows serialize") + "\n";
    }
    let wide = output == Output::Wide;
    // A family's columns only when some lease has a half of that family.
    let has_v6 = rows
        .iter()
        .any(|r| r.subnet_v6.is_some() || r.public_ip_v6.is_some());
    let has_v4 = !has_v6
        || rows.iter().any(|r| {
            r.public_ip.is_some()
                || r.key
                    .parse::<SubnetKey>()
                    .is_ok_and(|k| k.v4_subnet().is_some())
        });
    let marked = rows.iter().any(|r| r.this_node);
    let mut header = Vec::new();
    if marked {
        header.push("");
    }
    if has_v4 {
        header.push("SUBNET");
    }
    if has_v6 {
        header.push("IPV6-SUBNET");
    }
    header.push("NODE");
    if has_v4 {
        header.push("PUBLIC-IP");
    }
    if has_v6 {
        header.push("PUBLIC-IPV6");
    }
    header.push("BACKEND");
    // A cluster of WireGuard leases only shows keys and ports, not (absent) VTEP MACs.
    let has_wg = rows
        .iter()
        .any(|r| r.wireguard_key.is_some() || r.wireguard_key_v6.is_some());
    let has_mac = !has_wg
        || rows
            .iter()
            .any(|r| r.vtep_mac.is_some() || r.vtep_mac_v6.is_some());
    let v4_mac = has_v4 && has_mac;
    if v4_mac {
        header.push("VTEP-MAC");
    }
    // Dual-stack tables keep the IPv6 MAC for wide; an IPv6-only one has no other.
    let v6_mac = has_mac && has_v6 && (wide || !has_v4);
    if v6_mac {
        header.push("VTEP-MAC-V6");
    }
    if has_wg {
        header.extend(["WG-KEY", "WG-PORT"]);
    }
    header.push("TTL");
    if wide {
        header.extend(["EXPIRES", "ETCD-LEASE", "REVISION"]);
    }
    header.push("STATUS");
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = Vec::new();
            if marked {
                c.push(if r.this_node { "*" } else { "" }.to_string());
            }
            if has_v4 {
                c.push(r.subnet.clone());
            }
            if has_v6 {
                // Without an IPv4 column, a key that is not a subnet is shown here.
                c.push(match (&r.subnet_v6, has_v4) {
                    (Some(s), _) => s.clone(),
                    (None, false) => r.subnet.clone(),
                    (None, true) => "-".into(),
                });
            }
            c.push(dash(&r.node));
            if has_v4 {
                c.push(dash(&r.public_ip));
            }
            if has_v6 {
                c.push(dash(&r.public_ip_v6));
            }
            c.push(dash(&r.backend));
            if v4_mac {
                c.push(dash(&r.vtep_mac));
            }
            if v6_mac {
                c.push(dash(&r.vtep_mac_v6));
            }
            if has_wg {
                c.push(wireguard_key_cell(r, wide));
                c.push(wireguard_port_cell(r));
            }
            c.push(ttl_cell(r));
            if wide {
                c.extend([
                    r.expires.clone().unwrap_or_else(|| "never".into()),
                    dash(&r.etcd_lease),
                    r.mod_revision.to_string(),
                ]);
            }
            c.push(status_cell(r, wide));
            c
        })
        .collect();
    render_table(&header, &cells)
}

/// The key a lease publishes (both families share one): shortened to its first 8
/// characters, as `wg` does, unless `wide`; both when the families' keys differ.
fn wireguard_key_cell(r: &LeaseRow, wide: bool) -> String {
    let show = |k: &String| {
        if wide || k.len() <= 8 {
            k.clone()
        } else {
            format!("{}…", &k[..8])
        }
    };
    match (&r.wireguard_key, &r.wireguard_key_v6) {
        (Some(a), Some(b)) if a != b => format!("{}/{}", show(a), show(b)),
        (Some(k), _) | (None, Some(k)) => show(k),
        (None, None) => "-".into(),
    }
}

/// The listen port(s) a lease publishes: `51820`, or `51820/51821` with an IPv6 device of
/// its own (0 is shown as "own": a peer uses its own port for it).
fn wireguard_port_cell(r: &LeaseRow) -> String {
    let show = |p: u16| match p {
        0 => "own".to_string(),
        p => p.to_string(),
    };
    match (r.wireguard_port, r.wireguard_port_v6) {
        (Some(a), Some(b)) if a != b => format!("{}/{}", show(a), show(b)),
        (Some(p), _) | (None, Some(p)) => show(p),
        (None, None) => "-".into(),
    }
}

/// Where `netctl config` read the network config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// `<prefix>/config` in etcd.
    Etcd { key: String, endpoints: Vec<String> },
    /// `--net-config`.
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Etcd { key, endpoints } => {
                write!(f, "etcd key {key} at {}", endpoints.join(","))
            }
            ConfigSource::File(path) => write!(f, "the file {} (--net-config)", path.display()),
        }
    }
}

/// A subnet count: exact up to a billion, then rounded (an IPv6 pool of /64s in a /8 holds
/// 2^56 of them, and nobody reads seventeen digits).
pub fn count_text(n: u128) -> String {
    if n < 1_000_000_000 {
        n.to_string()
    } else {
        format!("about {:.1e}", n as f64)
    }
}

/// The config as a KEY/VALUE table under a line naming its source, or as net-conf.json
/// (`-o json`, the config alone, so it can be fed back to weftd). With `occupancy` (the
/// subnets the keys in etcd take), each pool's leased and free counts are shown.
pub fn render_config(
    cfg: &NetConfig,
    source: &ConfigSource,
    occupancy: Option<&Occupancy>,
    output: ConfigOutput,
) -> String {
    if output == ConfigOutput::Json {
        return serde_json::to_string_pretty(&cfg.to_json()).expect("json") + "\n";
    }
    let b = &cfg.backend;
    let mut rows = Vec::new();
    for (prefix, pool, taken) in [
        ("", &cfg.ipv4, occupancy.map(|o| &o.v4)),
        ("IPv6", &cfg.ipv6, occupancy.map(|o| &o.v6)),
    ] {
        let Some(p) = pool else {
            rows.push(vec![
                format!("Enable{}", if prefix.is_empty() { "IPv4" } else { "IPv6" }),
                "false".into(),
            ]);
            continue;
        };
        rows.push(vec![format!("{prefix}Network"), p.network.to_string()]);
        rows.push(vec![format!("{prefix}SubnetLen"), p.subnet_len.to_string()]);
        rows.push(vec![format!("{prefix}SubnetMin"), p.min.to_string()]);
        rows.push(vec![format!("{prefix}SubnetMax"), p.max.to_string()]);
        rows.push(vec![format!("{prefix}Subnets"), count_text(p.size())]);
        if let Some(taken) = taken {
            let leased = taken.count().min(p.size());
            rows.push(vec![format!("{prefix}Leased"), count_text(leased)]);
            rows.push(vec![format!("{prefix}Free"), count_text(p.size() - leased)]);
        }
    }
    rows.push(vec!["Backend".into(), b.kind.to_string()]);
    if b.kind == weft_backends::BackendKind::Vxlan {
        rows.push(vec!["VNI".into(), b.vni.to_string()]);
        rows.push(vec!["Port".into(), b.port.to_string()]);
        rows.push(vec!["DirectRouting".into(), b.direct_routing.to_string()]);
    }
    if b.kind == weft_backends::BackendKind::Wireguard {
        let wg = &b.wireguard;
        rows.push(vec!["Mode".into(), wg.mode.to_string()]);
        rows.push(vec!["ListenPort".into(), wg.listen_port.to_string()]);
        if wg.mode == weft_backends::backend::wireguard::Mode::Separate {
            rows.push(vec!["ListenPortV6".into(), wg.listen_port_v6.to_string()]);
        }
        // The key itself is a secret: only whether there is one.
        rows.push(vec![
            "PSK".into(),
            if wg.psk.is_some() { "set" } else { "none" }.into(),
        ]);
        rows.push(vec![
            "PersistentKeepaliveInterval".into(),
            match wg.keepalive {
                0 => "off".to_string(),
                s => format!("{s}s"),
            },
        ]);
    }
    rows.push(vec![
        "MTU".into(),
        b.mtu
            .map(|m| m.to_string())
            .unwrap_or_else(|| "from underlay".into()),
    ]);
    format!(
        "network config from {source}\n{}",
        render_table(&["KEY", "VALUE"], &rows)
    )
}

/// The config's notices (odd spellings, ignored keys), one warning line each, for stderr.
pub fn config_warnings(cfg: &NetConfig) -> String {
    cfg.notices
        .iter()
        .map(|n| format!("warning: {n}\n"))
        .collect()
}

/// What a netctl command produced: text for stdout, warnings for stderr, an exit code.
#[derive(Debug, Default)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

/// What `netctl leases` shows.
#[derive(Clone, Debug, Default)]
pub struct LeasesQuery {
    pub output: Output,
    /// `--node`: only the leases of this node (its NodeName, or its public IP for leases
    /// without one, such as flannel's).
    pub node: Option<String>,
    /// This host's key, from its subnet.env: its row is marked.
    pub own: Option<SubnetKey>,
}

/// Whether `r` is a lease of `node`: a NodeName, or a public IP of either family.
fn is_of_node(r: &LeaseRow, node: &str) -> bool {
    if r.node.as_deref() == Some(node) {
        return true;
    }
    let Ok(ip) = node.parse::<IpAddr>() else {
        return false;
    };
    [&r.public_ip, &r.public_ip_v6]
        .into_iter()
        .flatten()
        .any(|p| p.parse::<IpAddr>().is_ok_and(|p| p == ip))
}

/// Every lease in etcd as rows (address order), checked against the network config, with
/// their TTLs; and warnings for stderr (no or an invalid config). `netctl leases` shows them,
/// `netctl health --cluster` asks the nodes they name.
pub async fn read_lease_rows<S: LeaseStore>(
    store: &S,
    own: Option<&SubnetKey>,
) -> Result<(Vec<LeaseRow>, String), StoreError> {
    let snap = store.snapshot(true).await?;
    let mut warnings = String::new();
    let rules = match snap.config.as_deref().map(NetConfig::parse) {
        Some(Ok(cfg)) => Some(LeaseRules::from_config(&cfg)),
        Some(Err(e)) => {
            warnings.push_str(&format!(
                "warning: {e}; leases are shown without checking them against it\n"
            ));
            None
        }
        None => {
            warnings.push_str("warning: no network config in etcd; leases are shown without checking them against it\n");
            None
        }
    };
    // One TimeToLive per distinct TTL lease, a few at a time.
    let ids: Vec<TtlLeaseId> = {
        let mut v: Vec<_> = snap.entries.iter().filter_map(|e| e.ttl_lease).collect();
        v.sort();
        v.dedup();
        v
    };
    let ttls: BTreeMap<TtlLeaseId, Option<Duration>> = futures::stream::iter(ids)
        .map(|id| async move { (id, store.time_to_live(id).await) })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|(id, r)| r.map(|ttl| (id, ttl)))
        .collect::<Result<_, _>>()?;
    let rows = lease_rows(&snap.entries, rules.as_ref(), &ttls, own, SystemTime::now());
    Ok((rows, warnings))
}

/// `netctl leases`.
pub async fn leases<S: LeaseStore>(
    store: &S,
    query: &LeasesQuery,
) -> Result<CommandOutput, StoreError> {
    let (mut rows, warnings) = read_lease_rows(store, query.own.as_ref()).await?;
    let mut out = CommandOutput {
        stderr: warnings,
        ..Default::default()
    };
    if let Some(node) = &query.node {
        rows.retain(|r| is_of_node(r, node));
        if rows.is_empty() {
            out.stderr.push_str(&format!(
                "no lease of node {}: no lease names it as NodeName or public IP (netctl leases lists them all)\n",
                node.escape_debug()
            ));
            out.code = 1;
        }
    }
    if query.output == Output::Table {
        for r in rows.iter().filter(|r| !r.valid) {
            out.stderr.push_str(&format!(
                "warning: lease {} is invalid: {}\n",
                r.key.escape_debug(),
                r.problem.as_deref().unwrap_or("?")
            ));
        }
    }
    if !(rows.is_empty() && query.node.is_some() && query.output != Output::Json) {
        out.stdout = render_leases(&rows, query.output);
    }
    Ok(out)
}

/// `netctl config`. The config comes from `source` (etcd's `<prefix>/config`, or a file);
/// the lease counts from etcd, which a file config does without when etcd does not answer
/// (`store` is then the reason).
pub async fn config<S: LeaseStore>(
    store: Result<&S, String>,
    source: &ConfigSource,
    output: ConfigOutput,
) -> Result<CommandOutput, ConfigCommandError> {
    let mut out = CommandOutput::default();
    let (text, entries) = match source {
        ConfigSource::Etcd { .. } => {
            let snap = store
                .map_err(ConfigCommandError::Unreachable)?
                .snapshot(true)
                .await?;
            (snap.config, Ok(snap.entries))
        }
        ConfigSource::File(path) => {
            let text = std::fs::read(path).map_err(|error| ConfigCommandError::File {
                path: path.clone(),
                error,
            })?;
            let entries = match store {
                Ok(s) => s
                    .snapshot(false)
                    .await
                    .map(|s| s.entries)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            (Some(text), entries)
        }
    };
    let where_ = match source {
        ConfigSource::Etcd { key, .. } => key.clone(),
        ConfigSource::File(path) => path.display().to_string(),
    };
    match text.as_deref().map(NetConfig::parse) {
        None => {
            out.stderr = format!("no network config at {where_}\n");
            out.code = 1;
        }
        Some(Err(e)) => {
            out.stderr = format!("{where_}: {e}\n");
            out.code = 1;
        }
        Some(Ok(cfg)) => {
            out.stderr = config_warnings(&cfg);
            let occupancy = match &entries {
                Ok(entries) => Some(Occupancy::from_entries(
                    &cfg,
                    entries.iter().map(|e| e.name.as_str()),
                )),
                Err(e) => {
                    if output == ConfigOutput::Table {
                        out.stderr.push_str(&format!(
                            "warning: leased and free subnets not counted: {e}\n"
                        ));
                    }
                    None
                }
            };
            out.stdout = render_config(&cfg, source, occupancy.as_ref(), output);
        }
    }
    Ok(out)
}

/// Why `netctl config` could not run (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigCommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unreachable(String),
    #[error("network config file {}: {error}", path.display())]
    File {
        path: PathBuf,
        error: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Revision;

    #[test]
    fn short_durations() {
        assert_eq!(short_duration(42), "42s");
        assert_eq!(short_duration(245), "4m05s");
        assert_eq!(short_duration(86_399), "23h59m");
        assert_eq!(short_duration(3 * 86_400 + 7200), "3d2h");
    }

    #[test]
    fn table_pads_columns() {
        let t = render_table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn a_table_reads_back_by_column_and_stops_at_an_empty_line() {
        let t = render_table(
            &["NODE", "STATE", "NOTE"],
            &[
                vec!["h1".into(), "ok".into(), "".into()],
                vec!["h22".into(), "overlay-broken".into(), "two words".into()],
            ],
        );
        let rows = parse_table(&format!("{t}\nh3: below the table\n"));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["STATE"], "ok");
        assert_eq!(rows[0]["NOTE"], "");
        assert_eq!(rows[1]["NODE"], "h22");
        assert_eq!(rows[1]["NOTE"], "two words");
    }

    #[test]
    fn rows_sort_by_address_and_flag_invalid() {
        let rules = LeaseRules {
            v4: Some(("10.5.0.0/16".parse().unwrap(), 24)),
            v6: None,
            vni: 1,
            own_public_ip: None,
            own_public_ip_v6: None,
        };
        let mk = |name: &str, value: &str| StoredEntry {
            name: name.into(),
            value: value.as_bytes().to_vec(),
            create_revision: Revision(1),
            mod_revision: Revision(2),
            ttl_lease: None,
        };
        let entries = vec![
            mk(
                "10.5.10.0-24",
                r#"{"PublicIP":"192.0.2.1","BackendType":"host-gw"}"#,
            ),
            mk("garbage", "x"),
            mk("10.5.9.0-24", "nope"),
        ];
        let rows = lease_rows(
            &entries,
            Some(&rules),
            &BTreeMap::new(),
            None,
            SystemTime::UNIX_EPOCH,
        );
        let order: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(order, vec!["10.5.9.0-24", "10.5.10.0-24", "garbage"]);
        assert!(!rows[0].valid && rows[1].valid && !rows[2].valid);
        assert!(rows[1].reserved);
        assert_eq!(ttl_cell(&rows[1]), "-");
        assert_eq!(status_cell(&rows[1], false), "reserved");
        // Garbage without a TTL is invalid, not a reservation.
        assert_eq!(rows[2].status, LeaseStatus::Invalid);
        assert_eq!(ttl_cell(&rows[2]), "-");
        assert!(
            !render_leases(&rows, Output::Table).contains("IPV6"),
            "no IPv6 columns on an IPv4-only cluster"
        );
    }

    #[test]
    fn dual_stack_and_ipv6_only_rows_show_both_families() {
        let rules = LeaseRules {
            v4: None,
            v6: Some(("fc00::/48".parse().unwrap(), 64)),
            vni: 1,
            own_public_ip: None,
            own_public_ip_v6: None,
        };
        let e = StoredEntry {
            name: "0.0.0.0-0&fc00:0:0:2::-64".into(),
            value: br#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:06"},"NodeName":"n2"}"#.to_vec(),
            create_revision: Revision(1),
            mod_revision: Revision(1),
            ttl_lease: None,
        };
        let rows = lease_rows(
            &[e],
            Some(&rules),
            &BTreeMap::new(),
            None,
            SystemTime::UNIX_EPOCH,
        );
        assert!(rows[0].valid, "{:?}", rows[0].problem);
        assert_eq!(rows[0].subnet, "-");
        assert_eq!(rows[0].public_ip, None, "0.0.0.0 is shown as absent");
        let table = render_leases(&rows, Output::Wide);
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("IPV6-SUBNET"), "fc00:0:0:2::/64");
        assert_eq!(col("PUBLIC-IPV6"), "2001:db8::2");
        assert_eq!(col("VTEP-MAC-V6"), "0e:00:00:00:00:06");
        assert_eq!(col("NODE"), "n2");
    }

    fn entry(name: &str, value: &str, ttl_lease: Option<i64>) -> StoredEntry {
        StoredEntry {
            name: name.into(),
            value: value.as_bytes().to_vec(),
            create_revision: Revision(1),
            mod_revision: Revision(3),
            ttl_lease: ttl_lease.map(TtlLeaseId),
        }
    }

    fn v4_rules() -> LeaseRules {
        LeaseRules {
            v4: Some(("10.5.0.0/16".parse().unwrap(), 24)),
            v6: None,
            vni: 1,
            own_public_ip: None,
            own_public_ip_v6: None,
        }
    }

    fn vxlan(ip: &str, mac: &str, node: &str) -> String {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"NodeName":"{node}"}}"#
        )
    }

    #[test]
    fn the_table_says_what_state_each_lease_is_in() {
        let entries = vec![
            entry(
                "10.5.1.0-24",
                &vxlan("192.0.2.1", "02:00:00:00:00:01", "n1"),
                Some(7),
            ),
            entry(
                "10.5.2.0-24",
                &vxlan("192.0.2.2", "02:00:00:00:00:02", "n2"),
                None,
            ),
            entry(
                "10.5.3.0-24",
                &vxlan("192.0.2.3", "02:00:00:00:00:03", "n3"),
                Some(8),
            ),
            entry("10.5.4.0-24", "not json", None),
            entry("junk", "x", None),
        ];
        let ttls = BTreeMap::from([
            (TtlLeaseId(7), Some(Duration::from_secs(3600))),
            (TtlLeaseId(8), None),
        ]);
        let rows = lease_rows(
            &entries,
            Some(&v4_rules()),
            &ttls,
            None,
            SystemTime::UNIX_EPOCH,
        );
        let t = parse_table(&render_leases(&rows, Output::Table));
        let cell = |row: usize, col: &str| t[row][col].clone();
        assert_eq!(
            (0..5).map(|r| cell(r, "STATUS")).collect::<Vec<_>>(),
            [
                "ok",
                "reserved",
                "expired",
                "invalid: value is not lease JSON",
                "invalid: lease key \"junk\" is not of the form a.b.c.d-len",
            ]
        );
        assert_eq!(
            (0..5).map(|r| cell(r, "TTL")).collect::<Vec<_>>(),
            ["1h00m", "-", "-", "-", "-"]
        );
        // wide gives the whole reason.
        let wide = parse_table(&render_leases(&rows, Output::Wide));
        assert!(
            wide[3]["STATUS"].starts_with("invalid: value is not lease JSON: "),
            "{:?}",
            wide[3]
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_leases(&rows, Output::Json)).unwrap();
        let statuses: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            ["ok", "reserved", "expired", "invalid", "invalid"]
        );
    }

    #[test]
    fn table_wide_and_json_list_leases_in_one_address_order() {
        // etcd lists keys as strings: 10.5.10.0 before 10.5.9.0, IPv6-only keys anywhere.
        let rules = LeaseRules {
            v6: Some(("fc00::/48".parse().unwrap(), 64)),
            ..v4_rules()
        };
        let entries = vec![
            entry("0.0.0.0-0&fc00:0:0:1::-64", "{}", None),
            entry("10.5.10.0-24", "{}", None),
            entry("10.5.9.0-24&fc00:0:0:9::-64", "{}", None),
            entry("zz", "{}", None),
            entry("10.5.200.0-24", "{}", None),
        ];
        let rows = lease_rows(
            &entries,
            Some(&rules),
            &BTreeMap::new(),
            None,
            SystemTime::UNIX_EPOCH,
        );
        let want = [
            "10.5.9.0-24&fc00:0:0:9::-64",
            "10.5.10.0-24",
            "10.5.200.0-24",
            "0.0.0.0-0&fc00:0:0:1::-64",
            "zz",
        ];
        let json: serde_json::Value =
            serde_json::from_str(&render_leases(&rows, Output::Json)).unwrap();
        let json_order: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        assert_eq!(json_order, want);
        for output in [Output::Table, Output::Wide] {
            let t = parse_table(&render_leases(&rows, output));
            let order: Vec<String> = t
                .iter()
                .map(
                    |r| match (r["SUBNET"].as_str(), r["IPV6-SUBNET"].as_str()) {
                        ("-", v6) => v6.to_string(),
                        (v4, _) => v4.to_string(),
                    },
                )
                .collect();
            assert_eq!(
                order,
                [
                    "10.5.9.0/24",
                    "10.5.10.0/24",
                    "10.5.200.0/24",
                    "fc00:0:0:1::/64",
                    "zz"
                ],
                "{output:?}"
            );
        }
    }

    #[test]
    fn an_ipv6_only_table_has_the_ipv6_vtep_mac_and_no_ipv4_columns() {
        let rules = LeaseRules {
            v4: None,
            v6: Some(("fc00::/48".parse().unwrap(), 64)),
            vni: 1,
            own_public_ip: None,
            own_public_ip_v6: None,
        };
        let e = entry(
            "0.0.0.0-0&fc00:0:0:2::-64",
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:06"},"NodeName":"n2"}"#,
            None,
        );
        let rows = lease_rows(
            &[e],
            Some(&rules),
            &BTreeMap::new(),
            None,
            SystemTime::UNIX_EPOCH,
        );
        let text = render_leases(&rows, Output::Table);
        let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "IPV6-SUBNET",
                "NODE",
                "PUBLIC-IPV6",
                "BACKEND",
                "VTEP-MAC-V6",
                "TTL",
                "STATUS"
            ]
        );
        assert_eq!(parse_table(&text)[0]["VTEP-MAC-V6"], "0e:00:00:00:00:06");
    }

    #[test]
    fn this_nodes_lease_is_marked_and_node_filters_by_name_or_address() {
        let entries = vec![
            entry(
                "10.5.1.0-24",
                &vxlan("192.0.2.1", "02:00:00:00:00:01", "n1"),
                None,
            ),
            entry(
                "10.5.2.0-24",
                r#"{"PublicIP":"192.0.2.2","BackendType":"host-gw"}"#,
                None,
            ),
        ];
        let own: SubnetKey = "10.5.2.0-24".parse().unwrap();
        let rows = lease_rows(
            &entries,
            Some(&v4_rules()),
            &BTreeMap::new(),
            Some(&own),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(
            rows.iter().map(|r| r.this_node).collect::<Vec<_>>(),
            [false, true]
        );
        let text = render_leases(&rows, Output::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("   SUBNET"), "{text}");
        assert!(lines[1].starts_with("   10.5.1.0/24"), "{text}");
        assert!(lines[2].starts_with("*  10.5.2.0/24"), "{text}");
        // Unmarked when netctl runs elsewhere.
        let rows = lease_rows(
            &entries,
            Some(&v4_rules()),
            &BTreeMap::new(),
            None,
            SystemTime::UNIX_EPOCH,
        );
        assert!(render_leases(&rows, Output::Table).starts_with("SUBNET"));

        assert!(is_of_node(&rows[0], "n1"));
        assert!(!is_of_node(&rows[0], "n2"));
        assert!(
            is_of_node(&rows[1], "192.0.2.2"),
            "a flannel lease, by its address"
        );
        assert!(!is_of_node(&rows[1], "192.0.2.1"));
    }

    #[test]
    fn counts_stay_readable() {
        assert_eq!(count_text(254), "254");
        assert_eq!(count_text(999_999_999), "999999999");
        assert_eq!(count_text((1 << 56) - 1), "about 7.2e16");
    }

    #[test]
    fn config_names_its_source_and_counts_leased_and_free_subnets() {
        let cfg = NetConfig::parse(
            br#"{"Network":"10.5.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fc00::/8","IPv6SubnetLen":64}"#,
        )
        .unwrap();
        let names = [
            "10.5.1.0-24&fc00:0:0:1::-64",
            "10.5.2.0-24",
            "10.99.0.0-24",
            "junk",
        ];
        let occ = Occupancy::from_entries(&cfg, names);
        let source = ConfigSource::Etcd {
            key: "/coreos.com/network/config".into(),
            endpoints: vec!["http://a:2379".into(), "http://b:2379".into()],
        };
        let text = render_config(&cfg, &source, Some(&occ), ConfigOutput::Table);
        assert!(
            text.starts_with(
                "network config from etcd key /coreos.com/network/config at http://a:2379,http://b:2379\n"
            ),
            "{text}"
        );
        let value = |key: &str| {
            text.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once("  ")?;
                    (k == key).then(|| v.trim().to_string())
                })
                .unwrap_or_else(|| panic!("no {key} in {text}"))
        };
        assert_eq!(value("Subnets"), "255");
        assert_eq!(
            value("Leased"),
            "2",
            "the key outside the network is not counted"
        );
        assert_eq!(value("Free"), "253");
        assert_eq!(value("IPv6Subnets"), "about 7.2e16");
        assert_eq!(value("IPv6Leased"), "1");
        assert_eq!(value("IPv6Free"), "about 7.2e16");
        let file = ConfigSource::File("/etc/weft/net-conf.json".into());
        let text = render_config(&cfg, &file, None, ConfigOutput::Table);
        assert!(
            text.starts_with(
                "network config from the file /etc/weft/net-conf.json (--net-config)\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("Leased"),
            "not counted without the leases: {text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_config(&cfg, &file, Some(&occ), ConfigOutput::Json))
                .unwrap();
        assert_eq!(json["Network"], "10.5.0.0/16", "json is the config alone");
    }
}
