//! Shared pieces of the benchmark binaries: their command-line flags (the fuzz runner reads
//! its flags the same way), how they number the synthetic peers they make leases for, where
//! they write (docs/benchmarks.md, one marked section per benchmark) and small statistics.

use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use weft_backends::MacAddr;

/// The value after `flag` on this program's command line (`--peers 5000` → `Some(5000)`),
/// parsed as `T`; `None` when the flag is absent, has no value or the value does not parse,
/// so that the caller's default applies: `flag_value("--peers").unwrap_or(5000)`.
pub fn flag_value<T: FromStr>(flag: &str) -> Option<T> {
    std::env::args()
        .skip_while(|a| a != flag)
        .nth(1)?
        .parse()
        .ok()
}

/// How a benchmark numbers the synthetic peers it makes leases for. Peer `i` has:
/// - the `i`-th /24 from `first_subnet` on (10.20.1.0/24, 10.20.2.0/24, …), within
///   `first_subnet`'s /8;
/// - the `i`-th public IP in `public_ips`' /16 and the /16s after it, 250 hosts a /24 (.1 to
///   .250) and 250 /24s a /16: 172.16.0.1, …, 172.16.0.250, 172.16.1.1, …;
/// - the VTEP MAC `<mac_first_byte>:00:00:00:<i / 256>:<i % 256>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerNumbering {
    /// The network address of peer 0's /24.
    pub first_subnet: Ipv4Addr,
    /// The /16 the public IPs start in (its network address).
    pub public_ips: Ipv4Addr,
    /// The first byte of every VTEP MAC (a locally administered unicast one).
    pub mac_first_byte: u8,
}

/// The peers of bench-dataplane and bench-health: subnets from 10.20.1.0/24 on, clear of
/// their underlay's 10.9.0.0/24 (a peer subnet overlapping the underlay is refused, as it
/// would cut the node off), public IPs in 172.16.0.0/12, VTEP MACs 0e:00:00:00:…
pub const PEERS: PeerNumbering = PeerNumbering {
    first_subnet: Ipv4Addr::new(10, 20, 1, 0),
    public_ips: Ipv4Addr::new(172, 16, 0, 0),
    mac_first_byte: 0x0e,
};

impl PeerNumbering {
    /// Peer `i`'s subnet (/24).
    pub fn subnet(&self, i: usize) -> Ipv4Network {
        let [a, b, c, _] = self.first_subnet.octets();
        let n = usize::from(b) * 256 + usize::from(c) + i;
        Ipv4Network::new(Ipv4Addr::new(a, (n / 256) as u8, (n % 256) as u8, 0), 24)
            .expect("a /24 is a valid prefix")
    }

    /// Peer `i`'s public IP.
    pub fn public_ip(&self, i: usize) -> Ipv4Addr {
        let [a, b, _, _] = self.public_ips.octets();
        Ipv4Addr::new(
            a,
            b.wrapping_add((i / 250 / 250) as u8),
            ((i / 250) % 250) as u8,
            (i % 250 + 1) as u8,
        )
    }

    /// Peer `i`'s VTEP MAC.
    pub fn vtep_mac(&self, i: usize) -> MacAddr {
        MacAddr([
            self.mac_first_byte,
            0,
            0,
            0,
            (i / 256) as u8,
            (i % 256) as u8,
        ])
    }

    /// Peer `i`'s vxlan lease, naming the node `node`.
    pub fn vxlan_lease<'a>(&self, i: usize, node: &'a str) -> VxlanLease<'a> {
        VxlanLease {
            subnet: self.subnet(i),
            public_ip: self.public_ip(i),
            vtep_mac: self.vtep_mac(i),
            node,
        }
    }
}

/// A synthetic peer's vxlan lease (VNI 1, IPv4 only), as weft and flannel keep it in etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanLease<'a> {
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// `NodeName`.
    pub node: &'a str,
}

impl VxlanLease<'_> {
    /// Its key under the etcd prefix `prefix` (`<prefix>/subnets/10.20.1.0-24`).
    pub fn key(&self, prefix: &str) -> String {
        format!(
            "{prefix}/subnets/{}-{}",
            self.subnet.network(),
            self.subnet.prefix()
        )
    }

    /// Its value, the lease JSON.
    pub fn value(&self) -> String {
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}},"NodeName":"{}"}}"#,
            self.public_ip, self.vtep_mac, self.node
        )
    }
}

/// "YYYY-MM-DD, N cores" for the section headers.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{date}, {cores} cores")
}

/// Replace the section between `<!-- {tag}:begin -->` and `<!-- {tag}:end -->` in
/// docs/benchmarks.md (appending it if absent). `section` includes both markers.
pub fn write_section(tag: &str, section: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# weft benchmarks\n\nEach section is written by the benchmark named in it; rerun it to refresh the figures.\n\n".into()
    });
    let (begin, end) = (
        format!("<!-- {tag}:begin -->"),
        format!("<!-- {tag}:end -->\n"),
    );
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{}{}", &old[..a], section, &old[b + end.len()..]),
        _ => format!("{}\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new).expect("write docs/benchmarks.md");
    eprintln!("updated {}", path.display());
}

/// The `q` quantile (0..=1) of `samples` by nearest rank; 0 for no samples.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::{quantile, PeerNumbering, PEERS};
    use std::net::Ipv4Addr;

    /// The numbers the benchmarks have always used (their leases, routes and results depend
    /// on them).
    #[test]
    fn peers_are_numbered_as_before() {
        let subnets: Vec<String> = [0, 1, 255, 4999, 60_199]
            .iter()
            .map(|&i| PEERS.subnet(i).to_string())
            .collect();
        assert_eq!(
            subnets,
            [
                "10.20.1.0/24",
                "10.20.2.0/24",
                "10.21.0.0/24",
                "10.39.136.0/24",
                "10.255.40.0/24"
            ]
        );
        let ips: Vec<String> = [0, 249, 250, 4999, 62_500]
            .iter()
            .map(|&i| PEERS.public_ip(i).to_string())
            .collect();
        assert_eq!(
            ips,
            [
                "172.16.0.1",
                "172.16.0.250",
                "172.16.1.1",
                "172.16.19.250",
                "172.17.0.1"
            ]
        );
        assert_eq!(PEERS.vtep_mac(4999).to_string(), "0e:00:00:00:13:87");
        let from_zero = PeerNumbering {
            first_subnet: Ipv4Addr::new(10, 20, 0, 0),
            ..PEERS
        };
        assert_eq!(from_zero.subnet(0).to_string(), "10.20.0.0/24");
        assert_eq!(from_zero.subnet(256).to_string(), "10.21.0.0/24");
        let lease = PEERS.vxlan_lease(0, "bench-0");
        assert_eq!(lease.key("/p"), "/p/subnets/10.20.1.0-24");
        assert_eq!(
            lease.value(),
            r#"{"PublicIP":"172.16.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:00"},"NodeName":"bench-0"}"#
        );
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
