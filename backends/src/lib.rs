//! weft data-plane backends.
//!
//! This crate holds the peer model that the agent derives from validated leases, the pure
//! data-plane planning (`plan::plan` for vxlan with DirectRouting and host-gw, `plan::diff`
//! from observed to desired state), subnet.env, and a small blocking netlink client shared
//! with the CNI plugin. Applying a diff through netlink arrives with the data-plane work.

pub mod dataplane;
pub mod files;
mod mac;
pub mod netlink;
mod peer;
pub mod plan;
pub mod subnet_env;

pub use mac::{stable_hash, MacAddr, MacError};
pub use peer::{BackendKind, Peer, PeerEvent, UnknownBackend};
