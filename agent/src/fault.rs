//! The fault hook for tests: with the `fault-injection` feature (never in a release build),
//! `WEFT_FAULT` names supervised tasks that panic once weftd is ready, to show that the
//! supervisor notices. `WEFT_FAULT=peer-watch,dataplane-ipv4` makes each of those panic in its
//! first run; `WEFT_FAULT=peer-watch:always` in every run. Without the feature the hook is a
//! future that never resolves, and the variable is not read.

use tokio::sync::watch;

use crate::health::Readiness;

/// A future that resolves when task `name`, in its run number `run` (0 for the first),
/// should panic; never, unless the hook is built in and `WEFT_FAULT` asks for it.
#[cfg(not(feature = "fault-injection"))]
pub fn trigger(
    _name: &str,
    _run: u32,
    _ready: watch::Receiver<Readiness>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    std::future::pending()
}

/// A future that resolves when task `name`, in its run number `run` (0 for the first),
/// should panic: once weftd is ready, when `WEFT_FAULT` names the task (for every run with
/// `:always`).
#[cfg(feature = "fault-injection")]
pub fn trigger(
    name: &str,
    run: u32,
    mut ready: watch::Receiver<Readiness>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let wanted = std::env::var("WEFT_FAULT").unwrap_or_default();
    let fire = wanted.split(',').any(|item| match item.split_once(':') {
        Some((task, "always")) => task == name,
        Some(_) => false,
        None => item == name && run == 0,
    });
    async move {
        if !fire || ready.wait_for(Readiness::is_ready).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
