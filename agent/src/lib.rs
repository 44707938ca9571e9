//! weft's node agent: subnet leases in etcd, the peer watch, the data-plane reconcilers,
//! subnet.env, health and metrics, the masquerade firewall, and the `netctl` operator
//! commands.
//!
//! | module | what |
//! |---|---|
//! | [`backoff`] | the one retry backoff (exponential, with jitter) |
//! | [`daemon`] | weftd's top level: start-up steps, the tasks and their supervision, readiness |
//! | [`node`] | this node's policy shared by weftd and `netctl check`: MTU, backend settings, VTEP MACs, the lease it publishes |
//! | [`config`] | flannel's net-conf.json and the subnet pools |
//! | [`lease`] | the lease codec and validation, subnet choice, the keeper, the peer watch |
//! | [`store`] | `LeaseStore`: etcd and in-memory |
//! | [`dataplane`] | the data-plane owner task per family |
//! | [`firewall`] | the nftables masquerade tables |
//! | [`supervisor`] | the owner of weftd's long-lived tasks: restarts, fatal failures, the task board `/healthz` reads |
//! | [`fault`] | the test-only fault hook (feature `fault-injection`) |
//! | [`health`] | `/healthz`, `/readyz`, `/metrics`, `/health/peers` |
//! | [`mesh`] | the peer health mesh: probe responder, prober, peer states and their report |
//! | [`host`] | the node itself: interface choice, privileges, PID 1, install-cni, cleanup |
//! | [`netctl`] | the operator commands: leases, config, check |

pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod fault;
pub mod firewall;
pub mod health;
pub mod host;
pub mod lease;
pub mod logging;
pub mod mesh;
pub mod netctl;
pub mod node;
pub mod settings;
pub mod store;
pub mod supervisor;
pub use weft_backends::subnet_env;
