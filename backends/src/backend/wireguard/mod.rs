//! Parts of the wireguard backend (flannel's `wireguard`): the node's keys and their file
//! ([`key`]), the `BackendData` it publishes and accepts ([`lease`]), and the two ways to
//! configure a device, with the same change and state types: the userspace implementations'
//! configuration protocol ([`uapi`]) and the kernel module's generic netlink family
//! ([`genl`]). The backend itself (settings, plan, kernel objects) is not registered yet:
//! `BackendKind` does not name it, so a config or lease of type `wireguard` is still refused
//! as unknown.

pub mod genl;
pub mod key;
pub mod lease;
pub mod uapi;
