//! weft's node agent: subnet leases in etcd, the peer watch, subnet.env, health and
//! metrics, the masquerade firewall, and the `netctl` operator commands.

pub mod agent;
pub mod check;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod firewall;
pub mod health;
pub mod iface;
pub mod init;
pub mod install_cni;
pub mod keeper;
pub mod lease;
pub mod logging;
pub mod memory;
pub mod netctl;
pub mod pick;
pub mod pool;
pub mod privileges;
pub mod reconcile;
pub mod settings;
pub mod store;
pub use weft_backends::subnet_env;
pub mod watch;
