//! [`FakeNetlink`]: the data plane in memory, for tests of whatever drives it. Compiled only
//! with the `fake` feature, which release builds never enable.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::backend::vxlan::VxlanOp;
use crate::backend::wireguard::WireguardOp;
use crate::dataplane::{wrong_family, ApplyFailure, ApplyReport, DataplaneError, Netlink};
use crate::plan::{KernelState, Op};
use crate::route::Via;
use crate::{is_link_local, IpFamily};

/// [`Netlink`] in memory, for unit tests of whatever drives the data plane. Someone else's
/// changes to the kernel are simulated by editing `state` directly.
///
/// It models [`KernelNetlink`](crate::dataplane::KernelNetlink)'s family scoping: `state` stands for the namespace as this
/// data plane's device sees it and may hold routes, neighbours and device addresses of the
/// other family (the other data plane's, or someone else's) and IPv6 link-local addresses;
/// [`Netlink::observe`] never shows them, so a diff never deletes them, and operations of the
/// other family are refused.
#[derive(Debug, Default)]
pub struct FakeNetlink {
    /// The family served; IPv4 unless set.
    pub family: IpFamily,
    pub state: KernelState,
    /// Every operation applied, in order.
    pub applied: Vec<Op>,
    /// Number of `observe` calls.
    pub observed: usize,
    /// Operations matching this predicate fail (to test retries).
    pub fail_if: Option<fn(&Op) -> bool>,
}

impl FakeNetlink {
    /// An empty fake of `family`.
    pub fn new(family: IpFamily) -> FakeNetlink {
        FakeNetlink {
            family,
            ..Default::default()
        }
    }

    /// Whether `ip` is something [`Netlink::observe`] shows.
    fn visible(&self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self.family && !is_link_local(ip) && !ip.is_multicast()
    }

    /// Routes that survive the VXLAN device's deletion: direct ones, routes through the
    /// WireGuard device, and the other family's (their overlay routes go through the other
    /// family's device).
    fn drop_device(&mut self) {
        let family = self.family;
        let s = &mut self.state;
        s.vxlan.neighbours.clear();
        s.vxlan.fdb.clear();
        s.routes.retain(|r| {
            !matches!(r.via, Via::Overlay { .. }) || IpFamily::of_network(r.dst) != family
        });
    }

    /// A device's addresses after setting `want`: those, and the old ones observe does not
    /// show (the other family's, link-local ones), which stay as in the kernel. Sorted.
    fn kept_addresses(&self, want: &[IpNetwork], old: Option<&Vec<IpNetwork>>) -> Vec<IpNetwork> {
        let mut out = want.to_vec();
        out.extend(
            old.into_iter()
                .flatten()
                .filter(|a| !self.visible(a.ip()))
                .copied(),
        );
        out.sort();
        out
    }

    /// The same for the WireGuard device: its peers and the routes through it go.
    fn drop_wireguard_device(&mut self) {
        let family = self.family;
        let s = &mut self.state;
        s.wireguard.peers.clear();
        s.routes
            .retain(|r| r.via != Via::Device || IpFamily::of_network(r.dst) != family);
    }
}

impl Netlink for FakeNetlink {
    fn observe(&mut self) -> Result<KernelState, DataplaneError> {
        self.observed += 1;
        let s = &self.state;
        let mut out = KernelState {
            routes: s
                .routes
                .iter()
                .filter(|r| IpFamily::of_network(r.dst) == self.family)
                .copied()
                .collect(),
            ..Default::default()
        };
        out.vxlan.device = s.vxlan.device.clone().map(|mut d| {
            d.addresses.retain(|a| self.visible(a.ip()));
            d
        });
        out.vxlan.neighbours = s
            .vxlan
            .neighbours
            .iter()
            .filter(|n| self.visible(n.ip))
            .copied()
            .collect();
        out.vxlan.fdb = s.vxlan.fdb.clone();
        out.wireguard.device = s.wireguard.device.clone().map(|mut d| {
            d.addresses.retain(|a| self.visible(a.ip()));
            d
        });
        out.wireguard.peers = s.wireguard.peers.clone();
        Ok(out)
    }

    fn apply(&mut self, ops: &[Op]) -> ApplyReport {
        let mut report = ApplyReport::default();
        for op in ops {
            if let Some(why) = wrong_family(op, self.family) {
                report.failures.push((op.clone(), why));
                continue;
            }
            if self.fail_if.is_some_and(|f| f(op)) {
                report.failures.push((op.clone(), ApplyFailure::Injected));
                continue;
            }
            let refused: Option<ApplyFailure> = match op {
                Op::SetRoute(r) => {
                    let s = &mut self.state;
                    let no_device = match r.via {
                        Via::Overlay { .. } => s.vxlan.device.is_none(),
                        Via::Device => s.wireguard.device.is_none(),
                        Via::Direct { .. } => false,
                    };
                    if no_device {
                        Some(ApplyFailure::NoDevice)
                    } else {
                        s.routes.retain(|o| o.dst != r.dst);
                        s.routes.insert(*r);
                        None
                    }
                }
                Op::DeleteRoute(r) => {
                    self.state.routes.retain(|o| o.dst != r.dst);
                    None
                }
                Op::Vxlan(v) => self.apply_vxlan(v),
                Op::Wireguard(w) => self.apply_wireguard(w),
            };
            if let Some(why) = refused {
                report.failures.push((op.clone(), why));
                continue;
            }
            self.applied.push(op.clone());
            report.applied += 1;
        }
        report
    }
}

impl FakeNetlink {
    /// One wireguard operation; the reason when it is refused.
    fn apply_wireguard(&mut self, op: &WireguardOp) -> Option<ApplyFailure> {
        match op {
            WireguardOp::SetDevice(d) => {
                let mut want = (**d).clone();
                let old = self.state.wireguard.device.as_ref().map(|o| &o.addresses);
                want.addresses = self.kept_addresses(&want.addresses, old);
                self.state.wireguard.device = Some(want);
            }
            WireguardOp::DeleteDevice(_) => {
                self.state.wireguard.device = None;
                self.drop_wireguard_device();
            }
            WireguardOp::SetPeer(p) => {
                let s = &mut self.state.wireguard;
                if s.device.is_none() {
                    return Some(ApplyFailure::NoDevice);
                }
                s.peers.insert(p.public_key, (**p).clone());
            }
            WireguardOp::DeletePeer(k) => {
                self.state.wireguard.peers.remove(k);
            }
        }
        None
    }

    /// One vxlan operation; the reason when it is refused.
    fn apply_vxlan(&mut self, op: &VxlanOp) -> Option<ApplyFailure> {
        match op {
            VxlanOp::SetDevice(d) => {
                if self
                    .state
                    .vxlan
                    .device
                    .as_ref()
                    .is_some_and(|o| o.needs_recreate(d))
                {
                    self.drop_device();
                }
                // Addresses observe does not show stay, as in the kernel.
                let mut want = (**d).clone();
                let old = self.state.vxlan.device.as_ref().map(|o| &o.addresses);
                want.addresses = self.kept_addresses(&want.addresses, old);
                self.state.vxlan.device = Some(want);
            }
            VxlanOp::DeleteDevice(_) => {
                self.state.vxlan.device = None;
                self.drop_device();
            }
            VxlanOp::SetNeighbour(n) => {
                let s = &mut self.state.vxlan;
                if s.device.is_none() {
                    return Some(ApplyFailure::NoDevice);
                }
                s.neighbours.retain(|o| o.ip != n.ip);
                s.neighbours.insert(*n);
            }
            VxlanOp::DeleteNeighbour(n) => {
                self.state.vxlan.neighbours.retain(|o| o.ip != n.ip);
            }
            VxlanOp::SetFdb(f) => {
                let s = &mut self.state.vxlan;
                if s.device.is_none() {
                    return Some(ApplyFailure::NoDevice);
                }
                s.fdb.retain(|o| o.mac != f.mac);
                s.fdb.insert(*f);
            }
            VxlanOp::DeleteFdb(f) => {
                self.state.vxlan.fdb.remove(f);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Route;
    use IpFamily::V6;

    #[test]
    fn the_fake_sees_only_its_family_and_refuses_the_other() {
        let v6_route = Route {
            dst: "fc00:0:0:2::/64".parse().unwrap(),
            via: Via::Direct {
                gateway: "fd00::2".parse().unwrap(),
                index: 2,
            },
        };
        let mut fake = FakeNetlink::default();
        fake.state.routes.insert(v6_route);
        assert!(fake.observe().unwrap().routes.is_empty());
        let report = fake.apply(&[Op::DeleteRoute(v6_route)]);
        assert_eq!(report.failures.len(), 1);
        assert!(
            report.failures[0].1
                == ApplyFailure::WrongFamily {
                    serves: IpFamily::V4
                }
                && report.failures[0].1.to_string().contains("IPv6")
                && report.failures[0].1.to_string().contains("IPv4"),
            "{:?}",
            report.failures
        );
        assert!(fake.state.routes.contains(&v6_route), "nothing changed");
        let mut fake6 = FakeNetlink::new(V6);
        fake6.state.routes.insert(v6_route);
        assert_eq!(fake6.observe().unwrap().routes.len(), 1);
    }
}
