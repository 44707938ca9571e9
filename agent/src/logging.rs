//! The one place each binary sets up tracing. Logs go to stderr; `WEFT_LOG` (or `RUST_LOG`)
//! sets the filter, default `info`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    let filter = std::env::var("WEFT_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Logs of the current thread, captured for a test (every level, plain text). On a
/// current-thread tokio runtime this includes the tasks it runs.
///
/// One process-wide subscriber (installed by the first capture) formats every event and hands
/// it to the capture of the thread that logged it, if any. Per-test scoped subscribers would
/// race: tracing caches each callsite's interest globally, and a callsite first hit on another
/// test thread while no subscriber was registered stays disabled for the capturing test too.
#[cfg(test)]
pub(crate) struct Captured {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

#[cfg(test)]
thread_local! {
    static THREAD_CAPTURE: std::cell::RefCell<Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
impl Captured {
    pub(crate) fn start() -> Captured {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(|| ThreadSink)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in unit tests");
            tracing::callsite::rebuild_interest_cache();
        });
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        THREAD_CAPTURE.with(|c| *c.borrow_mut() = Some(buf.clone()));
        Captured { buf }
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().expect("log buffer")).into_owned()
    }
}

#[cfg(test)]
impl Drop for Captured {
    fn drop(&mut self) {
        THREAD_CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

/// Writes an event to the logging thread's capture; events of other threads are dropped.
#[cfg(test)]
struct ThreadSink;

#[cfg(test)]
impl std::io::Write for ThreadSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        THREAD_CAPTURE.with(|c| {
            if let Some(buf) = c.borrow().as_ref() {
                buf.lock().expect("log buffer").extend_from_slice(data);
            }
        });
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
