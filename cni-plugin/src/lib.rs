//! The `weft` CNI plugin: the protocol side (environment, stdin config, versions, errors),
//! IPAM, the pure plan of an attachment, and the netlink code that carries it out.

pub mod attach;
pub mod cmd;
pub mod conf;
pub mod error;
pub mod ipam;
pub mod kernel;
pub mod report;
pub mod request;
pub mod status;
pub mod usage;
pub mod version;

pub use error::CniError;
pub use request::{Command, NetConf, Request, Target, Verb};
