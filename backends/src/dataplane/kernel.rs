//! [`KernelNetlink`]: the data plane on the kernel of the namespace its socket was opened in.

use crate::backend::vxlan::kernel::{EntryRequest, VxlanKernel};
use crate::backend::wireguard::kernel::WireguardKernel;
use crate::backend::wireguard::{self, Mode, WireguardOp};
use crate::dataplane::{wrong_family, ApplyFailure, ApplyReport, DataplaneError, Netlink};
use crate::netlink::{NlSocket, Request, BATCH, BATCH_SOCKET_RCVBUF};
use crate::plan::{KernelState, Op};
use crate::route;
use crate::IpFamily;

/// [`Netlink`] on the kernel of the namespace the socket was opened in.
#[derive(Debug)]
pub struct KernelNetlink {
    nl: NlSocket,
    family: IpFamily,
    vxlan: VxlanKernel,
    wireguard: WireguardKernel,
}

impl KernelNetlink {
    /// A data plane of `family` around the VXLAN device called `device` (looked for even by
    /// host-gw and wireguard, so that a device left from an earlier vxlan configuration is
    /// removed; likewise a WireGuard device of the family's `separate`-mode name, unless
    /// [`KernelNetlink::with_wireguard`] configures one).
    pub fn open(device: &str, family: IpFamily) -> Result<KernelNetlink, DataplaneError> {
        Self::around(NlSocket::open()?, device, family)
    }

    /// The same, in the network namespace `ns` (see [`NlSocket::open_in`]).
    pub fn open_in(
        ns: &std::fs::File,
        path: &str,
        device: &str,
        family: IpFamily,
    ) -> Result<KernelNetlink, DataplaneError> {
        Self::around(NlSocket::open_in(ns, path)?, device, family)
    }

    /// The data plane on `nl`, which gets a receive buffer big enough for the answers to a
    /// batch ([`BATCH_SOCKET_RCVBUF`]).
    fn around(
        nl: NlSocket,
        device: &str,
        family: IpFamily,
    ) -> Result<KernelNetlink, DataplaneError> {
        nl.set_receive_buffer(BATCH_SOCKET_RCVBUF)?;
        Ok(KernelNetlink {
            nl,
            family,
            vxlan: VxlanKernel {
                device: device.to_string(),
                family,
            },
            wireguard: WireguardKernel::leftover(
                wireguard::device_name(Mode::Separate, family),
                family,
            ),
        })
    }

    /// The same data plane with the wireguard backend configured: overlay routes go through
    /// its device, and its peers are read back and changed.
    pub fn with_wireguard(mut self, wireguard: WireguardKernel) -> KernelNetlink {
        self.wireguard = wireguard;
        self
    }

    /// The family this data plane serves.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// The index of the device overlay routes go through, if it exists: the WireGuard
    /// device when that backend is configured, else the VXLAN device.
    pub fn device_index(&mut self) -> Result<Option<u32>, DataplaneError> {
        if self.wireguard.is_configured() {
            self.wireguard.device_index(&mut self.nl)
        } else {
            self.vxlan.device_index(&mut self.nl)
        }
    }

    /// The receive buffer of the data plane's socket, in bytes.
    pub fn receive_buffer(&self) -> Result<usize, DataplaneError> {
        Ok(self.nl.receive_buffer()?)
    }
}

impl Netlink for KernelNetlink {
    fn observe(&mut self) -> Result<KernelState, DataplaneError> {
        let (vxlan_index, vxlan) = self.vxlan.observe(&mut self.nl)?;
        let (wireguard_index, wireguard) = self.wireguard.observe(&mut self.nl)?;
        let index = if self.wireguard.is_configured() {
            wireguard_index
        } else {
            vxlan_index
        };
        let routes = route::dump_routes(&mut self.nl, self.family, index)?;
        Ok(KernelState {
            routes,
            vxlan,
            wireguard,
        })
    }

    fn apply(&mut self, ops: &[Op]) -> ApplyReport {
        let mut report = ApplyReport::default();
        // Device operations first, one at a time: the entries need the device's index.
        let mut rest = Vec::new();
        for op in ops {
            if let Some(why) = wrong_family(op, self.family) {
                report.failures.push((op.clone(), why));
                continue;
            }
            let done = match op {
                Op::Vxlan(v) => self
                    .vxlan
                    .apply_device_op(&mut self.nl, v)
                    .map(|r| r.map_err(ApplyFailure::from)),
                Op::Wireguard(w) => self
                    .wireguard
                    .apply_device_op(&mut self.nl, w)
                    .map(|r| r.map_err(ApplyFailure::from)),
                Op::SetRoute(_) | Op::DeleteRoute(_) => None,
            };
            match done {
                None => rest.push(op),
                Some(Ok(())) => report.applied += 1,
                Some(Err(e)) => report.failures.push((op.clone(), e)),
            }
        }
        if rest.is_empty() {
            return report;
        }
        let index = match self.device_index() {
            Ok(i) => i,
            Err(e) => {
                for op in rest {
                    report
                        .failures
                        .push((op.clone(), ApplyFailure::Kernel(e.to_string())));
                }
                return report;
            }
        };
        let no_device = |op: &Op| (op.clone(), ApplyFailure::NoDevice);
        // Requests are built a batch at a time: 15,000 of them at once would cost megabytes
        // that the allocator keeps afterwards.
        for chunk in rest.chunks(BATCH) {
            let mut reqs: Vec<Request> = Vec::with_capacity(chunk.len());
            let mut sent = Vec::with_capacity(chunk.len());
            let mut peer_ops: Vec<(&Op, &WireguardOp)> = Vec::new();
            for &op in chunk {
                let req = match op {
                    Op::SetRoute(r) => match route::set_request(r, index) {
                        Some(req) => req,
                        None => {
                            report.failures.push(no_device(op));
                            continue;
                        }
                    },
                    Op::DeleteRoute(r) => route::delete_request(r),
                    Op::Wireguard(w) => {
                        match (index, w.is_deletion()) {
                            (Some(_), _) => peer_ops.push((op, w)),
                            // A peer of a device that does not exist is gone already.
                            (None, true) => report.applied += 1,
                            (None, false) => report.failures.push(no_device(op)),
                        }
                        continue;
                    }
                    Op::Vxlan(v) => match VxlanKernel::entry_request(v, index) {
                        EntryRequest::Send(req) => req,
                        EntryRequest::Done => {
                            report.applied += 1;
                            continue;
                        }
                        EntryRequest::NoDevice => {
                            report.failures.push(no_device(op));
                            continue;
                        }
                    },
                };
                reqs.push(req);
                sent.push(op);
            }
            for (op, result) in sent.into_iter().zip(self.nl.ack_batch(&reqs)) {
                match result {
                    Ok(()) => report.applied += 1,
                    Err(e) if op.is_deletion() && e.is_gone() => report.applied += 1,
                    Err(e) => report.failures.push((op.clone(), e.into())),
                }
            }
            if !peer_ops.is_empty() {
                let ws: Vec<&WireguardOp> = peer_ops.iter().map(|(_, w)| *w).collect();
                for ((op, _), result) in peer_ops.iter().zip(self.wireguard.apply_peers(&ws)) {
                    match result {
                        Ok(()) => report.applied += 1,
                        Err(e) => report.failures.push(((*op).clone(), e.into())),
                    }
                }
            }
        }
        report
    }
}
