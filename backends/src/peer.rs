use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::backend::BackendData;
use crate::{BackendKind, IpFamily};

/// Another node, as learned from its validated lease. Everything a backend needs to reach its
/// pods. IPv6 fields are carried for dual-stack and IPv6-only clusters; they are `None` on
/// IPv4-only clusters. On an IPv6-only cluster the IPv4 fields hold `0.0.0.0/0` and
/// `0.0.0.0` (flannel's key form `0.0.0.0-0&fc00::-64`) and are never planned.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    pub subnet_v6: Option<Ipv6Network>,
    pub public_ip_v6: Option<Ipv6Addr>,
    pub backend: BackendKind,
    /// What its lease carries for its backend over IPv4 (`BackendData`), validated; None
    /// for a backend that publishes nothing (host-gw) and on an IPv6-only cluster.
    pub data: Option<BackendData>,
    /// The same for IPv6 (`BackendV6Data`).
    pub data_v6: Option<BackendData>,
    /// The node name the peer published, when it did (flannel does not).
    pub node_name: Option<String>,
}

impl Peer {
    /// The peer's pod subnet of `family`, if its lease has one.
    pub fn subnet_of(&self, family: IpFamily) -> Option<IpNetwork> {
        match family {
            IpFamily::V4 => Some(self.subnet.into()),
            IpFamily::V6 => self.subnet_v6.map(IpNetwork::from),
        }
    }

    /// The peer's public IP of `family`, if its lease has one.
    pub fn public_ip_of(&self, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::V4 => Some(self.public_ip.into()),
            IpFamily::V6 => self.public_ip_v6.map(IpAddr::from),
        }
    }

    /// Its backend data of `family`, if its lease has any.
    pub fn data_of(&self, family: IpFamily) -> Option<&BackendData> {
        match family {
            IpFamily::V4 => self.data.as_ref(),
            IpFamily::V6 => self.data_v6.as_ref(),
        }
    }
}

/// A change in the set of peers, as delivered by the lease watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    Added(Peer),
    /// The peer's lease changed (new public IP, new VTEP MAC, ...). Carries old and new.
    Updated {
        old: Peer,
        new: Peer,
    },
    Removed(Peer),
}

impl Peer {
    /// The subnet that identifies the peer: its IPv4 subnet, or its IPv6 subnet when the
    /// lease is IPv6-only (flannel writes `0.0.0.0-0` as the IPv4 part of such a key).
    pub fn id(&self) -> IpNetwork {
        match self.subnet_v6 {
            Some(v6) if self.subnet.prefix() == 0 => IpNetwork::V6(v6),
            _ => IpNetwork::V4(self.subnet),
        }
    }
}

impl PeerEvent {
    pub fn id(&self) -> IpNetwork {
        match self {
            PeerEvent::Added(p) | PeerEvent::Removed(p) => p.id(),
            PeerEvent::Updated { new, .. } => new.id(),
        }
    }
}
