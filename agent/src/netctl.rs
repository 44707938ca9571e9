//! `netctl`: what an operator asks of weft's etcd state. Rendering is pure and tested on
//! known leases; the commands only fetch and print.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde::Serialize;

use crate::cli::Output;
use crate::config::NetConfig;
use crate::lease::{validate, LeaseAttrs, LeaseRules, SubnetKey};
use crate::store::{LeaseStore, StoreError, StoredEntry, TtlLeaseId};

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
    /// Seconds left; `None` for a reservation or an unknown TTL.
    pub ttl_seconds: Option<u64>,
    pub reserved: bool,
    /// RFC 3339 expiry time; `None` for a reservation.
    pub expires: Option<String>,
    pub etcd_lease: Option<String>,
    pub mod_revision: i64,
    pub valid: bool,
    pub problem: Option<String>,
}

/// Where a lease sorts: family width, address, prefix length.
type SortKey = (u8, u128, u8);

/// Build rows from entries. `ttls` maps TTL lease ids to time left (`None`: expired).
pub fn lease_rows(
    entries: &[StoredEntry],
    rules: Option<&LeaseRules>,
    ttls: &BTreeMap<TtlLeaseId, Option<Duration>>,
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
            let vtep = attrs
                .as_ref()
                .and_then(|a| a.vxlan_data().ok())
                .map(|d| d.vtep_mac.to_string());
            let vtep6 = attrs
                .as_ref()
                .and_then(|a| a.vxlan_v6_data().ok())
                .map(|d| d.vtep_mac.to_string());
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
                vtep_mac: vtep,
                vtep_mac_v6: vtep6,
                ttl_seconds: ttl.map(|d| d.as_secs()),
                reserved: e.ttl_lease.is_none(),
                expires: ttl.map(|d| humantime::format_rfc3339_seconds(now + d).to_string()),
                etcd_lease: e.ttl_lease.map(|l| format!("{:x}", l.0)),
                mod_revision: e.mod_revision.0,
                valid: problem.is_none(),
                problem,
            };
            let order = key.map(|k| {
                let p = k.primary();
                let (addr, bits) = crate::pool::addr_bits(p.ip());
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

fn ttl_cell(r: &LeaseRow) -> String {
    match (r.reserved, r.ttl_seconds) {
        (true, _) => "reserved".into(),
        (false, Some(s)) => short_duration(s),
        (false, None) => "expired".into(),
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

pub fn render_leases(rows: &[LeaseRow], output: Output) -> String {
    if output == Output::Json {
        return serde_json::to_string_pretty(rows).expect("rows serialize") + "\n";
    }
    let wide = output == Output::Wide;
    // IPv6 columns only when some lease has an IPv6 half.
    let v6 = rows
        .iter()
        .any(|r| r.subnet_v6.is_some() || r.public_ip_v6.is_some());
    let mut header = vec!["SUBNET"];
    if v6 {
        header.push("IPV6-SUBNET");
    }
    header.extend(["NODE", "PUBLIC-IP"]);
    if v6 {
        header.push("PUBLIC-IPV6");
    }
    header.extend(["BACKEND", "VTEP-MAC"]);
    if v6 && wide {
        header.push("VTEP-MAC-V6");
    }
    header.push("TTL");
    if wide {
        header.extend(["EXPIRES", "ETCD-LEASE", "REVISION", "STATUS"]);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![r.subnet.clone()];
            if v6 {
                c.push(dash(&r.subnet_v6));
            }
            c.extend([dash(&r.node), dash(&r.public_ip)]);
            if v6 {
                c.push(dash(&r.public_ip_v6));
            }
            c.extend([dash(&r.backend), dash(&r.vtep_mac)]);
            if v6 && wide {
                c.push(dash(&r.vtep_mac_v6));
            }
            c.push(ttl_cell(r));
            if wide {
                c.extend([
                    r.expires.clone().unwrap_or_else(|| "never".into()),
                    dash(&r.etcd_lease),
                    r.mod_revision.to_string(),
                    match &r.problem {
                        None => "ok".into(),
                        Some(p) => format!("invalid: {p}"),
                    },
                ]);
            }
            c
        })
        .collect();
    render_table(&header, &cells)
}

pub fn render_config(cfg: &NetConfig, output: Output) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(&cfg.to_json()).expect("json") + "\n",
        Output::Table | Output::Wide => {
            let b = &cfg.backend;
            let mut rows = Vec::new();
            for (prefix, pool) in [("", &cfg.ipv4), ("IPv6", &cfg.ipv6)] {
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
                rows.push(vec![format!("{prefix}Subnets"), p.size().to_string()]);
            }
            rows.push(vec!["Backend".into(), b.kind.to_string()]);
            if b.kind == weft_backends::BackendKind::Vxlan {
                rows.push(vec!["VNI".into(), b.vni.to_string()]);
                rows.push(vec!["Port".into(), b.port.to_string()]);
                rows.push(vec!["DirectRouting".into(), b.direct_routing.to_string()]);
            }
            rows.push(vec![
                "MTU".into(),
                b.mtu
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "from underlay".into()),
            ]);
            if !cfg.unknown_keys.is_empty() {
                rows.push(vec!["Ignored keys".into(), cfg.unknown_keys.join(",")]);
            }
            render_table(&["KEY", "VALUE"], &rows)
        }
    }
}

/// What a netctl command produced: text for stdout, warnings for stderr, an exit code.
#[derive(Debug, Default)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

/// `netctl leases`.
pub async fn leases<S: LeaseStore>(store: &S, output: Output) -> Result<CommandOutput, StoreError> {
    let snap = store.snapshot(true).await?;
    let mut out = CommandOutput::default();
    let rules = match snap.config.as_deref().map(NetConfig::parse) {
        Some(Ok(cfg)) => Some(LeaseRules::from_config(&cfg)),
        Some(Err(e)) => {
            out.stderr.push_str(&format!(
                "warning: {e}; leases are shown without checking them against it\n"
            ));
            None
        }
        None => {
            out.stderr.push_str("warning: no network config in etcd; leases are shown without checking them against it\n");
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
    let rows = lease_rows(&snap.entries, rules.as_ref(), &ttls, SystemTime::now());
    if output == Output::Table {
        for r in rows.iter().filter(|r| !r.valid) {
            out.stderr.push_str(&format!(
                "warning: lease {} is invalid: {}\n",
                r.key.escape_debug(),
                r.problem.as_deref().unwrap_or("?")
            ));
        }
    }
    out.stdout = render_leases(&rows, output);
    Ok(out)
}

/// `netctl config`.
pub async fn config<S: LeaseStore>(
    store: &S,
    output: Output,
    config_key: &str,
) -> Result<CommandOutput, StoreError> {
    let snap = store.snapshot(true).await?;
    let mut out = CommandOutput::default();
    match snap.config.as_deref().map(NetConfig::parse) {
        None => {
            out.stderr = format!("no network config at {config_key}\n");
            out.code = 1;
        }
        Some(Err(e)) => {
            out.stderr = format!("{config_key}: {e}\n");
            out.code = 1;
        }
        Some(Ok(cfg)) => out.stdout = render_config(&cfg, output),
    }
    Ok(out)
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
            SystemTime::UNIX_EPOCH,
        );
        let order: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(order, vec!["10.5.9.0-24", "10.5.10.0-24", "garbage"]);
        assert!(!rows[0].valid && rows[1].valid && !rows[2].valid);
        assert!(rows[1].reserved);
        assert_eq!(ttl_cell(&rows[1]), "reserved");
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
        let rows = lease_rows(&[e], Some(&rules), &BTreeMap::new(), SystemTime::UNIX_EPOCH);
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
}
