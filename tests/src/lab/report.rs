//! What the lab prints: its hosts and pods, one ping matrix per address family, and the
//! commands to look at a lab left running. Plain text from a [`LabState`] and its probes.

use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;

use weft_agent::netctl::render_table;
use weft_backends::IpFamily;

use super::{LabState, PodRecord, Probe, ProbeKind, HEALTHZ_PORT};

/// At most this many failed probes are listed one by one.
const LISTED_FAILURES: usize = 12;

const KINDS: [(ProbeKind, &str); 4] = [
    (ProbeKind::SameHost, "pod -> pod, same host"),
    (ProbeKind::CrossHost, "pod -> pod, across hosts"),
    (ProbeKind::OtherHost, "pod -> other host"),
    (ProbeKind::Outside, "pod -> outside (masquerade)"),
];

impl LabState {
    /// The address families of the lab's pods, IPv4 first.
    pub fn families(&self) -> Vec<IpFamily> {
        let mut v = Vec::new();
        if self.ipv4 {
            v.push(IpFamily::V4);
        }
        if self.ipv6 {
            v.push(IpFamily::V6);
        }
        v
    }

    fn host_name(&self, host: usize) -> &str {
        self.hosts
            .get(host.wrapping_sub(1))
            .map(|h| h.name.as_str())
            .unwrap_or("?")
    }
}

fn dash(v: Option<impl ToString>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

/// A table indented by two spaces.
fn indented(header: &[&str], rows: &[Vec<String>]) -> String {
    render_table(header, rows)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// Hosts, pods, the ping matrix and a summary per address family, then the failed probes.
pub fn results(state: &LabState, probes: &[Probe]) -> String {
    let families = state.families();
    let mut out = String::new();

    let mut header = vec!["HOST", "UNDERLAY"];
    if state.ipv4 {
        header.push("SUBNET");
    }
    if state.ipv6 {
        header.extend(["IPV6-UNDERLAY", "IPV6-SUBNET"]);
    }
    let rows: Vec<Vec<String>> = state
        .hosts
        .iter()
        .map(|h| {
            let mut row = vec![h.name.clone(), h.ip.to_string()];
            if state.ipv4 {
                row.push(dash(h.subnet));
            }
            if state.ipv6 {
                row.extend([dash(h.ip6), dash(h.subnet6)]);
            }
            row
        })
        .collect();
    out += "hosts:\n";
    out += &indented(&header, &rows);

    let mut header = vec!["POD", "HOST"];
    header.extend(families.iter().map(|f| match f {
        IpFamily::V4 => "IPV4",
        IpFamily::V6 => "IPV6",
    }));
    let rows: Vec<Vec<String>> = state
        .pods
        .iter()
        .map(|p| {
            let mut row = vec![p.name.clone(), state.host_name(p.host).to_string()];
            for f in &families {
                row.push(match f {
                    IpFamily::V4 => dash(p.ip),
                    IpFamily::V6 => dash(p.ip6),
                });
            }
            row
        })
        .collect();
    out += "pods:\n";
    out += &indented(&header, &rows);

    for family in families {
        let of_family: Vec<&Probe> = probes
            .iter()
            .filter(|p| IpFamily::of(p.dst) == family)
            .collect();
        out += &matrix(state, family, &of_family);
    }

    let failed: Vec<&Probe> = probes.iter().filter(|p| !p.ok).collect();
    out.push('\n');
    if failed.is_empty() {
        let _ = writeln!(out, "all {} probes answered", probes.len());
    } else {
        let _ = writeln!(out, "FAILED: {} of {} probes:", failed.len(), probes.len());
        for p in failed.iter().take(LISTED_FAILURES) {
            let _ = writeln!(out, "  {} -> {} ({})", p.from, p.to, p.dst);
        }
        if failed.len() > LISTED_FAILURES {
            let _ = writeln!(
                out,
                "  … and {} more (see the matrix)",
                failed.len() - LISTED_FAILURES
            );
        }
    }
    out
}

/// One family's matrix (rows: from, columns: to) and its line per kind of probe.
fn matrix(state: &LabState, family: IpFamily, probes: &[&Probe]) -> String {
    let mut columns: Vec<&str> = state.pods.iter().map(|p| p.name.as_str()).collect();
    columns.extend(state.hosts.iter().map(|h| h.name.as_str()));
    if probes.iter().any(|p| p.kind == ProbeKind::Outside) {
        columns.push("outside");
    }
    let rows: Vec<Vec<String>> = state
        .pods
        .iter()
        .map(|pod| {
            let mut row = vec![pod.name.clone()];
            row.extend(columns.iter().map(|c| {
                let cell = probes
                    .iter()
                    .find(|p| p.from == pod.name && p.to == *c)
                    .map(|p| if p.ok { "ok" } else { "FAIL" });
                cell.unwrap_or("-").to_string()
            }));
            row
        })
        .collect();
    let mut header = vec![""];
    header.extend(columns);
    let mut out = format!(
        "\n{} ping from (rows) to (columns): ok, FAIL, or - (not probed)\n",
        family.as_str()
    );
    out += &indented(&header, &rows);
    for (kind, label) in KINDS {
        let of_kind: Vec<&&Probe> = probes.iter().filter(|p| p.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let good = of_kind.iter().filter(|p| p.ok).count();
        let _ = writeln!(out, "{label:<28} {good}/{} ok", of_kind.len());
    }
    if !state.probes_other_hosts() {
        let _ = writeln!(
            out,
            "{:<28} not probed: over WireGuard a host answers from its own address, which its peers accept only with --ip-masq",
            "pod -> other host"
        );
    }
    out
}

/// Where the lab's logs are, relative to its directory, as one phrase.
fn log_layout(dir: &Path) -> String {
    format!(
        "{}: weftd's in h<i>/weftd.<n>.log (one per start), the CNI plugin's in h<i>/cni.log, \
         etcd's in etcd.log",
        dir.display()
    )
}

/// After a failed run without `--keep`: the lab is gone, its logs are not.
pub fn logs_kept(dir: &Path) -> String {
    format!(
        "The lab is torn down; its logs are kept in {}. Remove the directory when done; run \
         with --keep to look at a failing lab while it is up.\n",
        log_layout(dir)
    )
}

/// Where a running lab's logs are.
pub fn logs_of(state: &LabState) -> String {
    format!("Logs of lab {}: {}.\n", state.lab, log_layout(&state.dir))
}

/// The ping of the commands: from the first pod to a pod on another host, else to another
/// pod, else to its own host; over IPv4 unless the lab is IPv6-only.
fn example_ping(state: &LabState) -> Option<(&PodRecord, IpAddr, String)> {
    let from = state.pods.first()?;
    let addr = |p: &PodRecord| -> Option<IpAddr> {
        match state.ipv4 {
            true => p.ip.map(IpAddr::V4),
            false => p.ip6.map(IpAddr::V6),
        }
    };
    let others = || state.pods.iter().filter(|p| p.name != from.name);
    let to = others()
        .find(|p| p.host != from.host)
        .or_else(|| others().next());
    match to {
        Some(p) => Some((from, addr(p)?, p.name.clone())),
        None => {
            let h = state.hosts.get(from.host.wrapping_sub(1))?;
            let ip = match state.ipv4 {
                true => IpAddr::V4(h.ip),
                false => IpAddr::V6(h.ip6?),
            };
            Some((from, ip, h.name.clone()))
        }
    }
}

/// Commands to look at a lab that is up, ready to paste into a root shell. `lab_command`
/// runs the lab again (`bash /path/to/tests/lab.sh`).
pub fn commands(state: &LabState, lab_command: &str) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let netctl = format!(
        "{} --etcd-endpoints {}",
        state.netctl.display(),
        state.etcd_endpoint
    );
    if let Some(sw) = state.namespaces.iter().find(|n| n.ends_with("-sw")) {
        lines.push((
            format!("ip netns exec {sw} {netctl} leases"),
            "the leases in etcd".into(),
        ));
        lines.push((
            format!("ip netns exec {sw} {netctl} health --cluster"),
            "which node reaches which, by weft's own probes".into(),
        ));
    }
    if let Some(h) = state.hosts.first() {
        // On a WireGuard lab the host's /run/wireguard (where wireguard-go's sockets are) is
        // a directory of its own, bind-mounted inside the namespace's mount namespace.
        let in_host = match (state.wireguard, h.subnet_file.parent()) {
            (true, Some(dir)) => format!(
                "ip netns exec {} sh -ec 'mount --bind {} /run/wireguard; exec \"$@\"' -",
                h.netns,
                dir.join("wireguard").display()
            ),
            _ => format!("ip netns exec {}", h.netns),
        };
        lines.push((
            format!(
                "{in_host} {netctl} check --subnet-file {} --cni-conf-dir {}",
                h.subnet_file.display(),
                h.cni_conf_dir.display()
            ),
            format!("{}'s kernel state against the leases", h.name),
        ));
        if state.wireguard {
            lines.push((
                format!("{in_host} wg show"),
                format!("{}'s WireGuard devices and peers", h.name),
            ));
        }
        lines.push((
            format!(
                "ip netns exec {} curl -s http://127.0.0.1:{HEALTHZ_PORT}/metrics",
                h.netns
            ),
            format!("{}'s weftd metrics", h.name),
        ));
    }
    if let Some((from, ip, to)) = example_ping(state) {
        lines.push((
            format!("ip netns exec {} ping -c1 {ip}", from.netns),
            format!("{} -> {to}", from.name),
        ));
    }
    if let Some(h) = state.hosts.first() {
        let mut files = vec![h.weftd_log.display().to_string()];
        if state.pods.iter().any(|p| p.host == 1) {
            files.push(h.cni_log.display().to_string());
        }
        files.push(state.etcd_log().display().to_string());
        lines.push((
            format!("tail -n 20 {}", files.join(" ")),
            format!("{}'s weftd and CNI logs, etcd's log", h.name),
        ));
    }
    lines.push((
        format!("{lab_command} --probe {}", state.lab),
        "the ping matrix again".into(),
    ));
    lines.push((
        format!("{lab_command} --teardown {}", state.lab),
        "remove the lab".into(),
    ));
    let mut out = format!("The lab {} is up. To look at it, as root:\n", state.lab);
    for (cmd, what) in &lines {
        let _ = writeln!(out, "  # {what}\n  {cmd}");
    }
    let others = match state.hosts.len() {
        0 | 1 => None,
        2 => Some("h2".to_string()),
        n => Some(format!("h2..h{n}")),
    };
    if let Some(others) = others {
        let _ = writeln!(
            out,
            "For {others}, use the host's namespace ({}-h<i>) and files (h<i>/ in {}).",
            state.lab,
            state.dir.display()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::tests::sample;

    fn all_ok(state: &LabState) -> Vec<Probe> {
        state
            .probe_plan()
            .into_iter()
            .map(|(p, _)| Probe { ok: true, ..p })
            .collect()
    }

    #[test]
    fn a_dual_stack_lab_gets_a_matrix_per_family() {
        let state = sample(true, true, 2);
        let text = results(&state, &all_ok(&state));
        assert_eq!(
            text.matches(" ping from (rows) to (columns)").count(),
            2,
            "{text}"
        );
        let v4 = text.find("\nIPv4 ping from").expect("an IPv4 matrix");
        let v6 = text.find("\nIPv6 ping from").expect("an IPv6 matrix");
        assert!(v4 < v6, "{text}");
        // Both addresses of every pod are listed.
        for p in &state.pods {
            assert!(text.contains(&p.ip.unwrap().to_string()), "{text}");
            assert!(text.contains(&p.ip6.unwrap().to_string()), "{text}");
        }
        assert_eq!(
            text.matches("pod -> pod, across hosts     2/2 ok").count(),
            2,
            "{text}"
        );
        assert!(text.ends_with("all 8 probes answered\n"), "{text}");
    }

    #[test]
    fn an_ipv6_only_lab_shows_ipv6_addresses_and_one_matrix() {
        let state = sample(false, true, 2);
        let mut probes = all_ok(&state);
        probes[0].ok = false;
        let text = results(&state, &probes);
        assert!(!text.contains("0.0.0.0"), "{text}");
        assert!(!text.contains("IPv4"), "{text}");
        assert_eq!(text.matches("IPv6 ping from").count(), 1, "{text}");
        let pods = text
            .split("pods:\n")
            .nth(1)
            .and_then(|t| t.split("\n\n").next())
            .unwrap();
        assert_eq!(
            pods,
            "  POD   HOST  IPV6\n  h1p1  h1    fc00:0:0:1::2\n  h2p1  h2    fc00:0:0:2::2"
        );
        assert!(text.contains("  h1p1  -     FAIL  -   ok\n"), "{text}");
        assert!(
            text.contains("FAILED: 1 of 4 probes:\n  h1p1 -> h2p1 (fc00:0:0:2::2)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_commands_name_the_labs_own_namespaces_files_and_binaries() {
        let state = sample(true, false, 2);
        let text = commands(&state, "bash /src/tests/lab.sh");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "The lab lab1 is up. To look at it, as root:");
        // Each command follows the comment that says what it shows.
        let cmd = |i: usize| {
            assert!(lines[2 * i - 1].starts_with("  # "), "{text}");
            lines[2 * i].strip_prefix("  ").unwrap()
        };
        assert_eq!(
            cmd(1),
            "ip netns exec lab1-sw /bin/netctl --etcd-endpoints http://10.99.0.1:2379 leases"
        );
        assert_eq!(
            cmd(2),
            "ip netns exec lab1-sw /bin/netctl --etcd-endpoints http://10.99.0.1:2379 health --cluster"
        );
        assert_eq!(
            cmd(3),
            "ip netns exec lab1-h1 /bin/netctl --etcd-endpoints http://10.99.0.1:2379 check \
             --subnet-file /tmp/lab1-abc123/h1/subnet.env --cni-conf-dir /tmp/lab1-abc123/h1/net.d"
        );
        assert_eq!(
            cmd(4),
            "ip netns exec lab1-h1 curl -s http://127.0.0.1:8471/metrics"
        );
        assert_eq!(cmd(5), "ip netns exec lab1-h1p1 ping -c1 10.244.2.2");
        assert_eq!(lines[9], "  # h1p1 -> h2p1");
        assert_eq!(
            cmd(6),
            "tail -n 20 /tmp/lab1-abc123/h1/weftd.1.log /tmp/lab1-abc123/h1/cni.log \
             /tmp/lab1-abc123/etcd.log"
        );
        assert_eq!(cmd(7), "bash /src/tests/lab.sh --probe lab1");
        assert_eq!(cmd(8), "bash /src/tests/lab.sh --teardown lab1");
        assert_eq!(
            lines[17],
            "For h2, use the host's namespace (lab1-h<i>) and files (h<i>/ in /tmp/lab1-abc123)."
        );
        assert_eq!(lines.len(), 18, "{text}");
        // An IPv6-only lab pings over IPv6.
        let v6 = commands(&sample(false, true, 2), "lab");
        assert!(
            v6.contains("  ip netns exec lab1-h1p1 ping -c1 fc00:0:0:2::2\n"),
            "{v6}"
        );
        // On a WireGuard lab, netctl and wg on a host see its own /run/wireguard.
        let wg = LabState {
            wireguard: true,
            ..sample(true, false, 2)
        };
        let text = commands(&wg, "lab");
        let in_h1 = "ip netns exec lab1-h1 sh -ec 'mount --bind /tmp/lab1-abc123/h1/wireguard /run/wireguard; exec \"$@\"' -";
        assert!(
            text.contains(&format!(
                "  {in_h1} /bin/netctl --etcd-endpoints http://10.99.0.1:2379 check "
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "  # h1's WireGuard devices and peers\n  {in_h1} wg show\n"
            )),
            "{text}"
        );
    }
}
