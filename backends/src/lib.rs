//! weft data-plane backends.
//!
//! This crate holds the peer model that the agent derives from validated leases, the pure
//! data-plane planning (`plan::plan` for vxlan with DirectRouting and host-gw, `plan::diff`
//! from observed to desired state), applying a diff through netlink (`dataplane`), subnet.env,
//! and a small blocking netlink client shared with the CNI plugin. Every data-plane type is
//! family-generic: one plan/diff/apply serves an IPv4 overlay and, separately, an IPv6 one
//! ([`IpFamily`]).

pub mod dataplane;
mod family;
pub mod files;
mod mac;
pub mod netlink;
mod peer;
pub mod plan;
pub mod subnet_env;

pub use family::{
    addr_from_u128, addr_offset, addr_to_u128, is_link_local, is_link_local_v4, nth_address,
    IpFamily,
};
pub use mac::{stable_hash, MacAddr, MacError};
pub use peer::{BackendKind, Peer, PeerEvent, UnknownBackend};
