//! weft data-plane backends.
//!
//! | module | what |
//! |---|---|
//! | [`backend`] | the backends, one module each ([`backend::vxlan`], [`backend::host_gw`]), and the one place they are registered |
//! | [`plan`] | what every backend shares: the underlay, the kernel state and operations, the diff, operator text |
//! | [`route`] | routes to peer subnets (every backend's), and their netlink messages |
//! | [`dataplane`] | applying a diff and reading the kernel back; the notification listener; removal of weft's state |
//! | [`netlink`] | a small blocking rtnetlink client, shared with the CNI plugin |
//! | [`subnet_env`], [`files`] | `subnet.env`, and writing files atomically |
//!
//! Every data-plane type is family-generic: one plan/diff/apply serves an IPv4 overlay and,
//! separately, an IPv6 one ([`IpFamily`]).

pub mod backend;
pub mod dataplane;
mod family;
pub mod files;
mod mac;
pub mod netlink;
mod peer;
pub mod plan;
pub mod route;
pub mod subnet_env;

pub use backend::{BackendKind, UnknownBackend};
pub use family::{
    addr_from_u128, addr_offset, addr_to_u128, is_link_local, is_link_local_v4, nth_address,
    IpFamily,
};
pub use mac::{stable_hash, MacAddr, MacError};
pub use peer::{Peer, PeerEvent};
