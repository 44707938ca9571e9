//! weft data-plane backends.
//!
//! This crate holds the peer model that the agent derives from validated leases and that the
//! backends plan kernel state from. The planning (`plan`, `diff`, `apply`) arrives with the
//! data-plane work; what is here is the vocabulary every part of weft shares.

mod mac;
pub mod netlink;
mod peer;
pub mod subnet_env;

pub use mac::{MacAddr, MacError};
pub use peer::{BackendKind, Peer, PeerEvent, UnknownBackend};
