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
    pub subnet: String,
    pub node: Option<String>,
    pub public_ip: Option<String>,
    pub backend: Option<String>,
    pub vtep_mac: Option<String>,
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

/// Build rows from entries. `ttls` maps TTL lease ids to time left (`None`: expired).
pub fn lease_rows(
    entries: &[StoredEntry],
    rules: Option<&LeaseRules>,
    ttls: &BTreeMap<TtlLeaseId, Option<Duration>>,
    now: SystemTime,
) -> Vec<LeaseRow> {
    let mut rows: Vec<(Option<(u32, u8)>, LeaseRow)> = entries
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
            let row = LeaseRow {
                key: e.name.clone(),
                subnet: key
                    .map(|k| k.v4.to_string())
                    .unwrap_or_else(|| e.name.escape_debug().to_string()),
                node: attrs.as_ref().and_then(|a| a.node_name.clone()),
                public_ip: attrs
                    .as_ref()
                    .and_then(|a| a.public_ip)
                    .map(|ip| ip.to_string()),
                backend: attrs.as_ref().map(|a| a.backend_type.clone()),
                vtep_mac: vtep,
                ttl_seconds: ttl.map(|d| d.as_secs()),
                reserved: e.ttl_lease.is_none(),
                expires: ttl.map(|d| humantime::format_rfc3339_seconds(now + d).to_string()),
                etcd_lease: e.ttl_lease.map(|l| format!("{:x}", l.0)),
                mod_revision: e.mod_revision.0,
                valid: problem.is_none(),
                problem,
            };
            (key.map(|k| (u32::from(k.v4.ip()), k.v4.prefix())), row)
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
    match output {
        Output::Json => serde_json::to_string_pretty(rows).expect("rows serialize") + "\n",
        Output::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.subnet.clone(),
                        dash(&r.node),
                        dash(&r.public_ip),
                        dash(&r.backend),
                        dash(&r.vtep_mac),
                        ttl_cell(r),
                    ]
                })
                .collect();
            render_table(
                &["SUBNET", "NODE", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "TTL"],
                &cells,
            )
        }
        Output::Wide => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.subnet.clone(),
                        dash(&r.node),
                        dash(&r.public_ip),
                        dash(&r.backend),
                        dash(&r.vtep_mac),
                        ttl_cell(r),
                        r.expires.clone().unwrap_or_else(|| "never".into()),
                        dash(&r.etcd_lease),
                        r.mod_revision.to_string(),
                        match &r.problem {
                            None => "ok".into(),
                            Some(p) => format!("invalid: {p}"),
                        },
                    ]
                })
                .collect();
            render_table(
                &[
                    "SUBNET",
                    "NODE",
                    "PUBLIC-IP",
                    "BACKEND",
                    "VTEP-MAC",
                    "TTL",
                    "EXPIRES",
                    "ETCD-LEASE",
                    "REVISION",
                    "STATUS",
                ],
                &cells,
            )
        }
    }
}

pub fn render_config(cfg: &NetConfig, output: Output) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(&cfg.to_json()).expect("json") + "\n",
        Output::Table | Output::Wide => {
            let b = &cfg.backend;
            let mut rows = vec![
                vec!["Network".into(), cfg.network.to_string()],
                vec!["SubnetLen".into(), cfg.subnet_len.to_string()],
                vec!["SubnetMin".into(), cfg.subnet_min.to_string()],
                vec!["SubnetMax".into(), cfg.subnet_max.to_string()],
                vec!["Subnets".into(), cfg.pool_size().to_string()],
                vec!["Backend".into(), b.kind.to_string()],
            ];
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
            network: "10.5.0.0/16".parse().unwrap(),
            subnet_len: 24,
            vni: 1,
            own_public_ip: None,
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
    }
}
