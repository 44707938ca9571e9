//! Applying a [`diff`](crate::plan::diff) to the kernel, and reading back what is there.
//!
//! [`Netlink`] is the one side effect of the data plane: read weft's state
//! ([`Netlink::observe`]) and apply operations ([`Netlink::apply`]). [`KernelNetlink`] does it
//! on the kernel: routes through rtnetlink, each backend's objects through that backend's
//! kernel module, entries sent in batches. `FakeNetlink` (feature `fake`, for tests only)
//! keeps the state in memory. [`Monitor`] listens to the kernel's notifications so that a
//! hand-deleted route or device is noticed at once, and [`Notification::concerns_weft`]
//! decides which ones matter. [`remove_weft_state`] is `weftd --cleanup`'s.
//!
//! A data plane serves one address family ([`IpFamily`]): it sees and changes only that
//! family's addresses, neighbours and routes, so an IPv4 and an IPv6 data plane can run side
//! by side in one namespace without undoing each other's work.

mod cleanup;
#[cfg(feature = "fake")]
mod fake;
mod kernel;
mod monitor;

pub use cleanup::{remove_weft_state, Removed};
#[cfg(feature = "fake")]
pub use fake::FakeNetlink;
pub use kernel::KernelNetlink;
pub use monitor::{Monitor, Notification};

use crate::netlink::NlError;
use crate::plan::{KernelState, Op};
use crate::IpFamily;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("a link named {name} exists but is not a VXLAN device ({kind}); weft will not touch it: rename or remove it, or pick another device name")]
    NotVxlan { name: String, kind: String },
    #[error("a link named {name} exists but is neither a WireGuard nor a TUN device ({kind}); weft will not touch it: rename or remove it")]
    NotWireguard { name: String, kind: String },
    #[error("{op}: {reason}")]
    Refused { op: String, reason: String },
}

/// Why one operation was not applied. [`ApplyFailure::label`] names the reason in metrics
/// and structured logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyFailure {
    /// It programs addresses of the other family than the data plane serves.
    #[error("it has {} addresses but this data plane serves {serves}", serves.other())]
    WrongFamily { serves: IpFamily },
    /// It needs the backend's device, which is not there.
    #[error("the backend's device does not exist (it will be re-created on the next pass)")]
    NoDevice,
    /// The kernel (or reading it back) refused it; the text says what was asked and why.
    #[error("{0}")]
    Kernel(String),
    /// A test's fake was told to fail it.
    #[error("injected failure")]
    Injected,
}

impl ApplyFailure {
    pub fn label(&self) -> &'static str {
        match self {
            ApplyFailure::WrongFamily { .. } => "wrong-family",
            ApplyFailure::NoDevice => "no-device",
            ApplyFailure::Kernel(_) => "kernel",
            ApplyFailure::Injected => "injected",
        }
    }
}

impl From<DataplaneError> for ApplyFailure {
    fn from(e: DataplaneError) -> Self {
        ApplyFailure::Kernel(e.to_string())
    }
}

impl From<NlError> for ApplyFailure {
    fn from(e: NlError) -> Self {
        ApplyFailure::Kernel(e.to_string())
    }
}

/// What an [`Netlink::apply`] did: how many operations succeeded, and each failure.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: usize,
    pub failures: Vec<(Op, ApplyFailure)>,
}

impl ApplyReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The data plane's side effect, for one address family.
pub trait Netlink {
    /// weft's state of this family in the kernel: every main-table route of the family
    /// carrying [`crate::route::ROUTE_PROTOCOL`], and each backend's objects of the family
    /// (see [`KernelState`]).
    fn observe(&mut self) -> Result<KernelState, DataplaneError>;
    /// Apply `ops` in order. Every operation is attempted; additions replace what is there,
    /// deletions of something already gone count as done. An operation of the other family
    /// is refused (reported as a failure, nothing changed).
    fn apply(&mut self, ops: &[Op]) -> ApplyReport;
}

/// Why an operation must not be applied by a data plane of `family`, if it must not.
pub(crate) fn wrong_family(op: &Op, family: IpFamily) -> Option<ApplyFailure> {
    (!op.is_of(family)).then_some(ApplyFailure::WrongFamily { serves: family })
}
