//! The host-gw backend (flannel's `host-gw`): no device and no encapsulation; every peer
//! subnet is routed through the peer's public IP on the underlay, which needs every node on
//! one L2 segment. Its only kernel objects are the shared routes, and its lease carries no
//! `BackendData`.

use ipnetwork::IpNetwork;

use crate::backend::{Backend, BackendKind};
use crate::plan::{view, Plan, Underlay, Unreachable};
use crate::route::{Route, Via};
use crate::{IpFamily, Peer};

/// host-gw's settings: the underlay the routes leave by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostGwSettings {
    pub underlay: Underlay,
}

impl Backend for HostGwSettings {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }

    fn family(&self) -> IpFamily {
        self.underlay.family()
    }

    /// Every peer is routed through its public IP (of the plan's family) on the underlay.
    fn plan<'a>(&self, own_subnet: IpNetwork, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        let u = &self.underlay;
        let family = IpFamily::of_network(own_subnet);
        let mut p = Plan::default();
        for peer in peers {
            let peer = match view(peer, family) {
                Ok(view) => view,
                Err(unreachable) => {
                    p.unreachable.push(unreachable);
                    continue;
                }
            };
            if let Some(why) = u.shadows(own_subnet, peer.subnet) {
                p.refused.push((peer.subnet, why));
                continue;
            }
            if u.reaches_directly(peer.public_ip) {
                p.state.routes.insert(Route {
                    dst: peer.subnet,
                    via: Via::Direct {
                        gateway: peer.public_ip,
                        index: u.index,
                    },
                });
            } else {
                p.unreachable
                    .push((peer.subnet, Unreachable::OffSegment(peer.public_ip)));
            }
        }
        p
    }
}
