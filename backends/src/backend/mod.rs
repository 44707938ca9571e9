//! The backends, and the one place they are registered.
//!
//! A backend is a module: [`vxlan`], [`host_gw`] and [`wireguard`]. Each owns its settings, the
//! `BackendData` it publishes and accepts in a lease, its plan, the kernel objects it keeps
//! (its part of [`KernelState`](crate::plan::KernelState) and of [`Op`](crate::plan::Op)),
//! and how those are read back and applied. The rest of weft reaches a backend only through
//! what this module lists: [`BackendKind`] (the name in config and leases), [`Settings`]
//! (one variant per backend) and the [`Backend`] trait.

pub mod host_gw;
#[cfg(test)]
mod tests;
pub mod vxlan;
pub mod wireguard;

use std::fmt;
use std::str::FromStr;

use ipnetwork::IpNetwork;

use crate::plan::Plan;
use crate::{IpFamily, MacAddr, Peer};

pub use host_gw::HostGwSettings;
pub use vxlan::lease::{VxlanData, VxlanDataError};
pub use vxlan::VxlanSettings;
pub use wireguard::{WireguardDataError, WireguardPeer, WireguardSettings};

/// The backend a config names (`Backend.Type`) and a lease advertises (`BackendType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendKind {
    Vxlan,
    HostGw,
    Wireguard,
}

impl BackendKind {
    /// Every backend weft has, in the order operator text lists them.
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Vxlan,
        BackendKind::HostGw,
        BackendKind::Wireguard,
    ];

    /// The name in configs and leases (flannel's).
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
            BackendKind::Wireguard => "wireguard",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend name weft does not have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown backend type {:?} (supported: {})", .0, supported())]
pub struct UnknownBackend(pub String);

fn supported() -> String {
    let names: Vec<String> = BackendKind::ALL
        .iter()
        .map(|k| format!("\"{}\"", k.as_str()))
        .collect();
    names.join(", ")
}

impl FromStr for BackendKind {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

/// What a node's lease carries for its backend in one family (`BackendData` for IPv4,
/// `BackendV6Data` for IPv6), as published and, validated, as a peer's. host-gw publishes
/// none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendData {
    Vxlan(VxlanData),
    /// A wireguard node's public key and listen port (0: the same as ours).
    Wireguard(WireguardPeer),
}

/// What a peer's `BackendData` must fit in this cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRules {
    /// The cluster's VXLAN ID (`Backend.VNI`).
    pub vni: u32,
}

/// Why a peer's `BackendData` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendDataError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{field} is not {backend} data: {problem}")]
    Malformed {
        field: &'static str,
        backend: BackendKind,
        problem: String,
    },
    #[error(transparent)]
    Vxlan(#[from] VxlanDataError),
    #[error(transparent)]
    Wireguard(#[from] WireguardDataError),
}

impl BackendData {
    /// A wireguard node's data: its public key and the listen port of its device of the
    /// family.
    pub fn wireguard(public_key: wireguard::Key, port: u16) -> BackendData {
        BackendData::Wireguard(WireguardPeer { public_key, port })
    }

    /// A vxlan node's data: its VXLAN ID and the VTEP MAC of its device of the family.
    pub fn vxlan(vni: u32, vtep_mac: MacAddr) -> BackendData {
        BackendData::Vxlan(VxlanData { vni, vtep_mac })
    }

    /// What the data says, in operator words: a name and a value (`VTEP MAC`,
    /// `0e:00:00:00:00:02`), for logs of a peer's change.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            BackendData::Vxlan(d) => ("VTEP MAC", d.vtep_mac.to_string()),
            BackendData::Wireguard(w) => ("WireGuard public key", w.public_key.to_base64()),
        }
    }

    /// The value written as `BackendData` / `BackendV6Data`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            BackendData::Vxlan(d) => serde_json::to_value(d).expect("plain struct"),
            BackendData::Wireguard(w) => {
                serde_json::to_value(wireguard::WireguardData::ours(w.public_key, w.port))
                    .expect("plain struct")
            }
        }
    }

    /// The data of a `kind` peer for one family, from the lease's `field` (`BackendData` or
    /// `BackendV6Data`), checked against the cluster's `rules`. None for a backend that
    /// publishes nothing.
    pub fn decode(
        kind: BackendKind,
        field: &'static str,
        value: Option<&serde_json::Value>,
        rules: DataRules,
    ) -> Result<Option<BackendData>, BackendDataError> {
        match kind {
            BackendKind::HostGw => Ok(None),
            BackendKind::Vxlan => {
                let value = value.ok_or(BackendDataError::Missing(field))?;
                let data: VxlanData = serde_json::from_value(value.clone()).map_err(|e| {
                    BackendDataError::Malformed {
                        field,
                        backend: kind,
                        problem: e.to_string(),
                    }
                })?;
                data.check(rules.vni)?;
                Ok(Some(BackendData::Vxlan(data)))
            }
            BackendKind::Wireguard => {
                let value = value.ok_or(BackendDataError::Missing(field))?;
                let data: wireguard::WireguardData = serde_json::from_value(value.clone())
                    .map_err(|e| BackendDataError::Malformed {
                        field,
                        backend: kind,
                        problem: e.to_string(),
                    })?;
                // A published port of 0 stays 0 here: the plan reads it as "our own".
                Ok(Some(BackendData::Wireguard(data.check(0)?)))
            }
        }
    }
}

/// A data-plane backend: turns this node's subnet and its peers into the kernel state it
/// wants. Pure; applying the result is [`crate::plan::diff`] plus a
/// [`crate::dataplane::Netlink`].
pub trait Backend {
    fn kind(&self) -> BackendKind;
    /// The address family the backend's data plane serves (its underlay address's).
    fn family(&self) -> IpFamily;
    /// What the kernel should hold, given this node's subnet and its peers (the own lease is
    /// not among `peers`).
    ///
    /// The plan is of `own_subnet`'s family: an IPv4 subnet plans from the peers' IPv4
    /// halves, an IPv6 one from their IPv6 halves; a peer whose lease lacks a half the plan
    /// needs is `unreachable`.
    ///
    /// Precondition: the underlay address is of the same family as `own_subnet`
    /// (encapsulated packets of an IPv6 overlay leave from an IPv6 address). A backend that
    /// needs it plans nothing otherwise, refuses this node's subnet and reports every peer
    /// unreachable, each with the reason.
    fn plan<'a>(&self, own_subnet: IpNetwork, peers: impl IntoIterator<Item = &'a Peer>) -> Plan;
}

/// How this node reaches its peers: the configured backend with its settings for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settings {
    Vxlan(VxlanSettings),
    HostGw(HostGwSettings),
    Wireguard(WireguardSettings),
}

impl Backend for Settings {
    fn kind(&self) -> BackendKind {
        match self {
            Settings::Vxlan(v) => v.kind(),
            Settings::HostGw(h) => h.kind(),
            Settings::Wireguard(w) => w.kind(),
        }
    }

    fn family(&self) -> IpFamily {
        match self {
            Settings::Vxlan(v) => v.family(),
            Settings::HostGw(h) => h.family(),
            Settings::Wireguard(w) => w.family(),
        }
    }

    fn plan<'a>(&self, own_subnet: IpNetwork, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        match self {
            Settings::Vxlan(v) => v.plan(own_subnet, peers),
            Settings::HostGw(h) => h.plan(own_subnet, peers),
            Settings::Wireguard(w) => w.plan(own_subnet, peers),
        }
    }
}

/// What the kernel should hold for `settings` (shorthand for [`Backend::plan`]).
pub fn plan(own_subnet: IpNetwork, peers: &[Peer], settings: &Settings) -> Plan {
    settings.plan(own_subnet, peers)
}
