//! The masquerade rules of one node for one address family, and the nft script that replaces
//! weft's table of that family with them. Pure: nothing here runs nft.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use weft_backends::IpFamily;

use super::FirewallError;

/// The name of weft's table, the same in both families (`ip weft`, `ip6 weft`).
pub const TABLE: &str = "weft";

/// The bit kube-proxy sets on packets it wants masqueraded (`--masquerade-bit` 14).
pub const KUBE_PROXY_MASQ_MARK: u32 = 0x4000;

/// The nftables family keyword of weft's table for `family`: `ip` (IPv4) or `ip6` (IPv6). The
/// same word names the table's family and the address match inside it (`ip saddr …`,
/// `ip6 saddr …`).
pub fn nft_family(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// Multicast destinations of `family`, never masqueraded.
fn multicast(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "224.0.0.0/4",
        IpFamily::V6 => "ff00::/8",
    }
}

/// The masquerade rules of one node for one address family.
///
/// Both networks are always of the same family: build the rules with [`MasqRules::v4`] or
/// [`MasqRules::v6`], or with [`MasqRules::new`], which refuses a mixed pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasqRules {
    network: IpNetwork,
    own_subnet: IpNetwork,
}

impl MasqRules {
    /// IPv4 rules: the cluster network (all pod subnets, e.g. 10.244.0.0/16) and this node's
    /// pod subnet (e.g. 10.244.1.0/24). Rendered into table `ip weft`.
    pub fn v4(network: Ipv4Network, own_subnet: Ipv4Network) -> MasqRules {
        MasqRules {
            network: network.into(),
            own_subnet: own_subnet.into(),
        }
    }

    /// IPv6 rules: the cluster network (e.g. fd00:10:244::/56) and this node's pod subnet
    /// (e.g. fd00:10:244:1::/64). Rendered into table `ip6 weft`.
    pub fn v6(network: Ipv6Network, own_subnet: Ipv6Network) -> MasqRules {
        MasqRules {
            network: network.into(),
            own_subnet: own_subnet.into(),
        }
    }

    /// Rules for two networks of either family; [`FirewallError::MixedFamilies`] when one is
    /// IPv4 and the other IPv6.
    pub fn new(network: IpNetwork, own_subnet: IpNetwork) -> Result<MasqRules, FirewallError> {
        match (network, own_subnet) {
            (IpNetwork::V4(n), IpNetwork::V4(o)) => Ok(MasqRules::v4(n, o)),
            (IpNetwork::V6(n), IpNetwork::V6(o)) => Ok(MasqRules::v6(n, o)),
            _ => Err(FirewallError::MixedFamilies {
                network,
                own_subnet,
            }),
        }
    }

    /// The cluster network (all pod subnets).
    pub fn network(&self) -> IpNetwork {
        self.network
    }

    /// This node's pod subnet.
    pub fn own_subnet(&self) -> IpNetwork {
        self.own_subnet
    }

    /// The family of both networks, and so of the table the rules go into.
    pub fn family(&self) -> IpFamily {
        IpFamily::of_network(self.network)
    }
}

/// `address/len` with the host bits cleared, so a network given as `10.244.1.1/24` still
/// means the whole `10.244.1.0/24` (and `fd00::5/64` the whole `fd00::/64`).
fn cidr(n: IpNetwork) -> String {
    format!("{}/{}", n.network(), n.prefix())
}

/// The nft script that atomically replaces weft's table of `r`'s family with `r`'s rules:
/// table `ip weft` with `ip saddr`/`ip daddr` matches for IPv4, table `ip6 weft` with
/// `ip6 saddr`/`ip6 daddr` matches for IPv6. The rules are the same in both; only the
/// multicast range that is never masqueraded differs (224.0.0.0/4, ff00::/8).
///
/// The first two lines make sure the table exists and then delete it, inside the same
/// transaction as the new definition, so `nft -f` swaps old for new in one commit.
pub fn render(r: &MasqRules) -> String {
    let family = r.family();
    let fam = nft_family(family);
    let multicast = multicast(family);
    let net = cidr(r.network);
    let own = cidr(r.own_subnet);
    let mark = format!("{KUBE_PROXY_MASQ_MARK:#x}");
    let mut s = String::new();
    s.push_str(&format!(
        "# weft masquerade rules; replaces the whole table in one transaction\n\
         table {fam} {TABLE} {{}}\n\
         delete table {fam} {TABLE}\n\
         table {fam} {TABLE} {{\n"
    ));
    s.push_str(&format!(
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {mark} == {mark} return comment \"marked by kube-proxy, which masquerades it itself\"\n\
         \t\t{fam} saddr {net} {fam} daddr {net} return comment \"pod to pod inside the cluster network: keep the pod source\"\n\
         \t\t{fam} saddr {net} {fam} daddr != {multicast} masquerade fully-random comment \"pod to outside the cluster network: masquerade\"\n\
         \t\t{fam} saddr != {net} {fam} daddr {own} return comment \"outside to this node's pods: keep the source\"\n\
         \t\t{fam} saddr != {net} {fam} daddr {net} masquerade fully-random comment \"outside to other nodes' pods: masquerade\"\n\
         \t}}\n"
    ));
    s.push_str(&format!(
        "\tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\t{fam} saddr {net} accept comment \"forward traffic from the cluster network\"\n\
         \t\t{fam} daddr {net} accept comment \"forward traffic to the cluster network\"\n\
         \t}}\n\
         }}\n"
    ));
    s
}

/// Whether `script` names weft's table of `family` (`table ip6 weft …`,
/// `delete table ip6 weft`). A guard against handing one family's rendered script to the other
/// family's firewall, not a parser of nft's language.
fn names_table_of(script: &str, family: IpFamily) -> bool {
    let words: Vec<&str> = script.split_whitespace().collect();
    words.windows(3).any(|w| {
        w[0] == "table"
            && w[1] == nft_family(family)
            && w[2].trim_end_matches(['{', '}', ';']) == TABLE
    })
}

/// [`FirewallError::FamilyMismatch`] if `script` names the other family's table than
/// `family`'s.
pub(super) fn check_script_family(script: &str, family: IpFamily) -> Result<(), FirewallError> {
    let other = family.other();
    if names_table_of(script, other) {
        return Err(FirewallError::FamilyMismatch {
            table: family,
            rules: other,
        });
    }
    Ok(())
}

/// Rules and networks shared by the firewall's unit tests.
#[cfg(test)]
pub(super) mod testing {
    use super::MasqRules;

    pub const V6_NET: &str = "fd00:10:244::/56";
    pub const V6_OWN: &str = "fd00:10:244:1::/64";

    pub fn rules(net: &str, own: &str) -> MasqRules {
        MasqRules::new(net.parse().unwrap(), own.parse().unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{rules, V6_NET, V6_OWN};
    use super::*;

    /// The non-comment, non-empty lines of a script, trimmed.
    fn lines(script: &str) -> Vec<String> {
        script
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    /// The rule text of a line, without its comment.
    fn rule_of(line: &str) -> &str {
        line.split(" comment ").next().unwrap_or(line)
    }

    /// The IPv4 script, byte for byte as weft has always rendered it: existing nodes see no
    /// change in their table.
    const IPV4_SCRIPT: &str = "\
# weft masquerade rules; replaces the whole table in one transaction
table ip weft {}
delete table ip weft
table ip weft {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x4000 == 0x4000 return comment \"marked by kube-proxy, which masquerades it itself\"
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return comment \"pod to pod inside the cluster network: keep the pod source\"
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"pod to outside the cluster network: masquerade\"
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment \"outside to this node's pods: keep the source\"
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment \"outside to other nodes' pods: masquerade\"
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept comment \"forward traffic from the cluster network\"
\t\tip daddr 10.244.0.0/16 accept comment \"forward traffic to the cluster network\"
\t}
}
";

    #[test]
    fn render_ipv4_is_byte_for_byte_the_script_of_earlier_releases() {
        assert_eq!(
            render(&rules("10.244.0.0/16", "10.244.1.0/24")),
            IPV4_SCRIPT
        );
    }

    #[test]
    fn render_replaces_the_table_in_one_script() {
        let l = lines(&render(&rules("10.244.0.0/16", "10.244.1.0/24")));
        assert_eq!(l[0], "table ip weft {}");
        assert_eq!(l[1], "delete table ip weft");
        assert_eq!(l[2], "table ip weft {");
        assert_eq!(l.last().unwrap(), "}");
        // Exactly one definition of the table, nothing about any other table.
        assert_eq!(l.iter().filter(|x| x.starts_with("table ")).count(), 2);
        assert!(l.iter().all(|x| !x.contains("flush ruleset")));
    }

    #[test]
    fn render_has_the_masquerade_rules_in_order() {
        let l = lines(&render(&rules("10.244.0.0/16", "10.244.1.0/24")));
        let rules: Vec<&str> = l.iter().map(|x| rule_of(x)).collect();
        let want = [
            "chain postrouting {",
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x4000 == 0x4000 return",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
            "}",
            "chain forward {",
            "type filter hook forward priority filter; policy accept;",
            "ip saddr 10.244.0.0/16 accept",
            "ip daddr 10.244.0.0/16 accept",
            "}",
        ];
        assert_eq!(&rules[3..rules.len() - 1], &want[..]);
    }

    #[test]
    fn render_excludes_pod_to_pod_before_any_masquerade() {
        let l = lines(&render(&rules("10.244.0.0/16", "10.244.1.0/24")));
        let pod_to_pod = l
            .iter()
            .position(|x| rule_of(x) == "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return")
            .expect("pod-to-pod return rule");
        let kube_proxy = l
            .iter()
            .position(|x| x.starts_with("meta mark & 0x4000 == 0x4000 return"))
            .expect("kube-proxy mark rule");
        let first_masq = l
            .iter()
            .position(|x| rule_of(x).contains("masquerade"))
            .unwrap();
        assert!(kube_proxy < first_masq && pod_to_pod < first_masq);
        // No masquerade rule matches pod source and pod destination.
        assert!(!l.iter().any(|x| rule_of(x)
            .starts_with("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16")
            && x.contains("masquerade")));
    }

    #[test]
    fn render_comments_every_rule_and_normalises_networks() {
        let script = render(&rules("10.244.7.9/16", "10.244.1.1/24"));
        for line in lines(&script) {
            let is_rule = line.starts_with("ip ") || line.starts_with("meta ");
            if is_rule {
                assert!(line.contains(" comment \""), "rule without comment: {line}");
            }
        }
        assert!(script.contains("ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return"));
        assert!(!script.contains("10.244.7.9"));
        // A different subnet gives a different script.
        assert_ne!(
            script,
            render(&rules("10.244.0.0/16", "10.244.2.0/24")),
            "own subnet must be in the script"
        );
    }

    #[test]
    fn render_ipv6_is_the_ipv4_script_in_table_ip6_weft() {
        // Same rules, same order, same comments: only the family word, the networks and the
        // multicast range differ.
        let want = IPV4_SCRIPT
            .replace("table ip weft", "table ip6 weft")
            .replace("ip saddr", "ip6 saddr")
            .replace("ip daddr", "ip6 daddr")
            .replace("10.244.0.0/16", V6_NET)
            .replace("10.244.1.0/24", V6_OWN)
            .replace("224.0.0.0/4", "ff00::/8");
        assert_eq!(render(&rules(V6_NET, V6_OWN)), want);
    }

    #[test]
    fn render_ipv6_has_no_ipv4_match_and_normalises_networks() {
        let script = render(&rules("fd00:10:244::7/56", "fd00:10:244:1::1/64"));
        let l = lines(&script);
        assert_eq!(l[0], "table ip6 weft {}");
        assert_eq!(l[1], "delete table ip6 weft");
        assert_eq!(l[2], "table ip6 weft {");
        assert!(!names_table_of(&script, IpFamily::V4), "{script}");
        for word in ["ip saddr", "ip daddr", "224.0.0.0/4", "::7", "::1/"] {
            assert!(!script.contains(word), "{word:?} in:\n{script}");
        }
        assert!(script
            .contains("ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random"));
        assert!(
            script.contains("ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return")
        );
        for line in l {
            if line.starts_with("ip6 ") || line.starts_with("meta ") {
                assert!(line.contains(" comment \""), "rule without comment: {line}");
            }
        }
    }

    #[test]
    fn masq_rules_refuse_a_mixed_pair() {
        for (net, own) in [("10.244.0.0/16", V6_OWN), (V6_NET, "10.244.1.0/24")] {
            let err = MasqRules::new(net.parse().unwrap(), own.parse().unwrap()).unwrap_err();
            assert!(
                matches!(err, FirewallError::MixedFamilies { .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(net) && msg.contains(own), "names both: {msg}");
        }
    }

    #[test]
    fn masq_rules_know_their_family() {
        let v4 = rules("10.244.0.0/16", "10.244.1.0/24");
        assert_eq!(v4.family(), IpFamily::V4);
        assert_eq!(
            v4,
            MasqRules::v4(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap()
            )
        );
        let v6 = rules(V6_NET, V6_OWN);
        assert_eq!(v6.family(), IpFamily::V6);
        assert_eq!(v6.network().to_string(), V6_NET);
        assert_eq!(v6.own_subnet().to_string(), V6_OWN);
        assert_eq!(
            v6,
            MasqRules::v6(V6_NET.parse().unwrap(), V6_OWN.parse().unwrap())
        );
        assert_eq!(nft_family(IpFamily::V4), "ip");
        assert_eq!(nft_family(IpFamily::V6), "ip6");
        assert_eq!(IpFamily::ALL, [IpFamily::V4, IpFamily::V6]);
    }

    #[test]
    fn scripts_are_told_apart_by_the_table_they_name() {
        let v4 = render(&rules("10.244.0.0/16", "10.244.1.0/24"));
        let v6 = render(&rules(V6_NET, V6_OWN));
        assert!(names_table_of(&v4, IpFamily::V4) && !names_table_of(&v4, IpFamily::V6));
        assert!(names_table_of(&v6, IpFamily::V6) && !names_table_of(&v6, IpFamily::V4));
        assert!(names_table_of("delete table ip6 weft;", IpFamily::V6));
        assert!(names_table_of("table ip weft{}", IpFamily::V4));
        assert!(!names_table_of("table ip other {}", IpFamily::V4));
    }
}
