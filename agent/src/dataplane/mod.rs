//! The data plane as weftd runs it: one owner task per address family that plans, diffs and
//! applies the kernel state, fed by peer events, kernel notifications and a resync tick.

pub mod feed;
pub mod reconciler;
pub mod wireguard;
