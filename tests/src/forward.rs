//! TCP forwarding across network namespaces, without touching any namespace's addresses or
//! routes: a socket belongs to the namespace it was created in, whichever thread uses it
//! later. So a listener created by a thread that entered namespace A, whose connections are
//! relayed to sockets created in namespace B, joins the two loopbacks.
//!
//! Used to run a weftd (which programs the kernel of the namespace it runs in) inside a test
//! namespace while it talks to an etcd on the root namespace's loopback, and to reach its
//! health port from the test.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Run `f` on a fresh thread inside the namespace at `ns` (None: the caller's namespace) and
/// return its result.
fn in_ns<T: Send + 'static>(
    ns: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let file = ns.map(File::open).transpose()?;
    std::thread::spawn(move || {
        if let Some(file) = file {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// A thread that stays in a namespace and opens connections there on request.
#[derive(Clone, Debug)]
struct Connector {
    tx: mpsc::Sender<(SocketAddr, mpsc::Sender<io::Result<TcpStream>>)>,
}

impl Connector {
    fn start(ns: Option<&Path>) -> io::Result<Connector> {
        let file = ns.map(File::open).transpose()?;
        let (tx, rx) = mpsc::channel::<(SocketAddr, mpsc::Sender<io::Result<TcpStream>>)>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Some(file) = file {
                if let Err(e) =
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                {
                    let _ = ready_tx.send(Err(io::Error::from(e)));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            for (addr, reply) in rx {
                let _ = reply.send(TcpStream::connect_timeout(&addr, Duration::from_secs(3)));
            }
        });
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("connector thread died"))??;
        Ok(Connector { tx })
    }

    fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send((addr, tx))
            .map_err(|_| io::Error::other("connector thread gone"))?;
        rx.recv()
            .map_err(|_| io::Error::other("connector thread gone"))?
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// A running relay; dropping it closes the listener (connections already relayed finish on
/// their own).
#[derive(Debug)]
pub struct Forward {
    listener: TcpListener,
}

impl Drop for Forward {
    fn drop(&mut self) {
        // Wakes the accept loop with an error, which ends it.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.listener),
            nix::sys::socket::Shutdown::Both,
        );
    }
}

fn relay(listener: TcpListener, connector: Connector, target: SocketAddr) -> io::Result<Forward> {
    let guard = Forward {
        listener: listener.try_clone()?,
    };
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(inbound) = conn else { break };
            let connector = connector.clone();
            std::thread::spawn(move || {
                let Ok(outbound) = connector.connect(target) else {
                    return; // dropping `inbound` resets it, as a refused connection would
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (Ok(i2), Ok(o2)) = (inbound.try_clone(), outbound.try_clone()) else {
                    return;
                };
                std::thread::spawn(move || pipe(i2, o2));
                pipe(outbound, inbound);
            });
        }
    });
    Ok(guard)
}

/// Listen on `listen` inside namespace `ns` and relay every connection to `target` as seen
/// from the caller's namespace, until the returned guard drops.
pub fn into_ns(ns: &Path, listen: SocketAddr, target: SocketAddr) -> io::Result<Forward> {
    let listener = in_ns(Some(ns), move || TcpListener::bind(listen))?;
    relay(listener, Connector::start(None)?, target)
}

/// Listen on `listen` in the caller's namespace and relay every connection to `target` inside
/// namespace `ns`, until the returned guard drops.
pub fn out_of_ns(ns: &Path, listen: SocketAddr, target: SocketAddr) -> io::Result<Forward> {
    let listener = TcpListener::bind(listen)?;
    relay(listener, Connector::start(Some(ns))?, target)
}
