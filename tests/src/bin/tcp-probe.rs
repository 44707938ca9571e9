//! A tiny TCP probe for tests that need a server or client inside a namespace:
//! `tcp-probe serve <port> <reply>` answers every connection with `<reply>` until killed;
//! `tcp-probe serve-peer <port> [<bind-ip>]` answers every connection with the peer's IP
//! address as text (what the server saw as the source, e.g. after masquerading) until killed;
//! it listens on 0.0.0.0 unless `<bind-ip>` says otherwise (`::` for IPv6);
//! `tcp-probe fetch <ip:port>` prints what the server sent (exit 1 if nothing within 3 s).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 4 => {
            let port: u16 = args[2].parse().expect("port");
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            eprintln!("tcp-probe: listening on {port}");
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(args[3].as_bytes());
            }
        }
        Some("serve-peer") if args.len() == 3 || args.len() == 4 => {
            let port: u16 = args[2].parse().expect("port");
            let ip: IpAddr = args
                .get(3)
                .map_or("0.0.0.0", String::as_str)
                .parse()
                .expect("bind ip");
            let listener = TcpListener::bind((ip, port)).expect("bind");
            eprintln!("tcp-probe: listening on {port}, answering with the peer address");
            for mut conn in listener.incoming().flatten() {
                if let Ok(peer) = conn.peer_addr() {
                    eprintln!("tcp-probe: connection from {peer}");
                    let _ = conn.write_all(peer.ip().to_string().as_bytes());
                }
            }
        }
        Some("fetch") if args.len() == 3 => {
            let addr: SocketAddr = args[2].parse().expect("ip:port");
            let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tcp-probe: connect {addr}: {e}");
                    std::process::exit(1);
                }
            };
            s.set_read_timeout(Some(Duration::from_secs(3))).ok();
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            print!("{text}");
            std::process::exit(if text.is_empty() { 1 } else { 0 });
        }
        _ => {
            eprintln!(
                "usage: tcp-probe serve <port> <reply> | tcp-probe serve-peer <port> [<bind-ip>] | tcp-probe fetch <ip:port>"
            );
            std::process::exit(2);
        }
    }
}
