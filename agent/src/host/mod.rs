//! The node weftd runs on: which interface and public IP to use, the capabilities to keep,
//! life as PID 1, installing the CNI files, removing weft's host state, and how the plugin
//! binary is linked.

pub mod cleanup;
pub mod iface;
pub mod init;
pub mod install_cni;
pub mod linkage;
pub mod memory;
pub mod privileges;
