//! The `weft` CNI plugin: the protocol side (environment, stdin config, versions, errors).
//! IPAM and the data path (bridge, veth) are added on top of these types.

pub mod error;
pub mod request;
pub mod version;

pub use error::CniError;
pub use request::{Command, NetConf, Request};
pub mod ipam;
pub mod status;
