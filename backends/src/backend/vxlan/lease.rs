//! What a vxlan node publishes in its lease, per family: `BackendData` (IPv4 device) and
//! `BackendV6Data` (IPv6 device), both `{"VNI": 1, "VtepMAC": "…"}` as flannel writes them.

use serde::{Deserialize, Serialize};

use crate::MacAddr;

/// `BackendData` / `BackendV6Data` of a vxlan lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: MacAddr,
}

/// Why a peer's vxlan data cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VxlanDataError {
    #[error("VNI {theirs} does not match this cluster's VNI {ours}")]
    VniMismatch { theirs: u32, ours: u32 },
    #[error("VtepMAC {0} is not a unicast MAC address")]
    BadMac(MacAddr),
}

impl VxlanData {
    /// The peer's VTEP MAC, if its data fits a cluster with VXLAN ID `vni`.
    pub fn check(self, vni: u32) -> Result<MacAddr, VxlanDataError> {
        if self.vni != vni {
            return Err(VxlanDataError::VniMismatch {
                theirs: self.vni,
                ours: vni,
            });
        }
        if !self.vtep_mac.is_unicast() {
            return Err(VxlanDataError::BadMac(self.vtep_mac));
        }
        Ok(self.vtep_mac)
    }
}
