//! What `netctl check` reads about the host beside its data plane: the local weftd's health
//! port, the CNI config directory, and the bridge pods hang off with its veths. Each reader
//! returns plain values; judging them is [`crate::netctl::check`]'s job.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use weft_backends::netlink::{link_attr, NlError, NlSocket};

use crate::host::install_cni::CONFLIST_NAME;
use crate::netctl::weftd_http::{get, url, GetLimits};

/// The CNI config directory.
#[derive(Clone, Debug, Default)]
pub struct CniFacts {
    pub dir: PathBuf,
    /// Its entries that are not directories.
    pub names: Vec<String>,
    /// The `weft` plugin's entry of weft's conflist, when that is there and readable.
    pub weft: Option<WeftPluginConf>,
}

/// What `netctl check` reads from the `weft` entry of weft's conflist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeftPluginConf {
    pub bridge: String,
    /// The pods' MTU when the config overrides FLANNEL_MTU.
    pub mtu: Option<u32>,
}

/// The bridge the plugin attaches pods to (`weft_cni::request::DEFAULT_BRIDGE` unless the
/// conflist says otherwise).
pub const DEFAULT_BRIDGE: &str = "cni0";

impl WeftPluginConf {
    /// The `weft` plugin's entry of a conflist (`None` when there is none).
    pub fn from_conflist(text: &str) -> Option<WeftPluginConf> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let plugin = v.get("plugins")?.as_array()?.iter().find(|p| {
            p.get("type").and_then(|t| t.as_str()) == Some(crate::host::install_cni::PLUGIN_NAME)
        })?;
        Some(WeftPluginConf {
            bridge: plugin
                .get("bridge")
                .and_then(|b| b.as_str())
                .unwrap_or(DEFAULT_BRIDGE)
                .to_string(),
            mtu: plugin
                .get("mtu")
                .and_then(|m| m.as_u64())
                .and_then(|m| u32::try_from(m).ok()),
        })
    }
}

/// A bridge and the veths attached to it (the host ends of pods' interfaces, created with the
/// pod's MTU), as read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedBridge {
    pub name: String,
    pub mtu: u32,
    /// Name and MTU of each veth attached.
    pub veths: Vec<(String, u32)>,
}

/// What the local weftd's health port said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WeftdHealth {
    /// Not asked (`--healthz-port 0`).
    #[default]
    NotChecked,
    /// /healthz and /readyz answer 200.
    Ready,
    /// /healthz answers, /readyz says why weftd is not ready.
    NotReady { url: String, why: String },
    /// Nothing answered at `url`.
    NotAnswering { url: String, error: String },
}

/// Where to reach weftd's health server given its listen address: an unspecified address
/// (weftd's default 0.0.0.0) means loopback of that family; port 0 means there is none.
pub fn healthz_target(ip: IpAddr, port: u16) -> Option<SocketAddr> {
    let ip = match ip {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// Ask the local weftd whether it is alive (/healthz) and ready (/readyz).
pub async fn probe_weftd(addr: Option<SocketAddr>) -> WeftdHealth {
    let Some(addr) = addr else {
        return WeftdHealth::NotChecked;
    };
    match get(addr, "/healthz", GetLimits::PROBE).await {
        Ok(r) if r.status == 200 => {}
        Ok(r) => {
            return WeftdHealth::NotAnswering {
                url: url(addr, "/healthz"),
                error: format!("status {}: {}", r.status, r.first_line()),
            }
        }
        Err(e) => {
            return WeftdHealth::NotAnswering {
                url: url(addr, "/healthz"),
                error: e.to_string(),
            }
        }
    }
    match get(addr, "/readyz", GetLimits::PROBE).await {
        Ok(r) if r.status == 200 => WeftdHealth::Ready,
        Ok(r) => WeftdHealth::NotReady {
            url: url(addr, "/readyz"),
            why: r.first_line(),
        },
        Err(e) => WeftdHealth::NotReady {
            url: url(addr, "/readyz"),
            why: e.to_string(),
        },
    }
}

/// The CNI config directory as a runtime sees it, and weft's plugin entry in it.
pub fn read_cni_facts(dir: &Path) -> std::io::Result<CniFacts> {
    let names = crate::host::install_cni::conf_dir_names(dir)?;
    let weft = std::fs::read_to_string(dir.join(CONFLIST_NAME))
        .ok()
        .and_then(|t| WeftPluginConf::from_conflist(&t));
    Ok(CniFacts {
        dir: dir.to_path_buf(),
        names,
        weft,
    })
}

/// The bridge `name` and the veths attached to it, from the kernel (`None`: no such link,
/// as before the first pod).
pub fn observe_bridge(name: &str) -> Result<Option<ObservedBridge>, NlError> {
    let mut nl = NlSocket::open()?;
    let Some(bridge) = nl.link_by_name(name)? else {
        return Ok(None);
    };
    let mtu = |l: &LinkMessage| {
        link_attr(l, |a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0)
    };
    let index = bridge.header.index;
    let mut veths = Vec::new();
    for m in nl.dump(
        "list links",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )? {
        let RouteNetlinkMessage::NewLink(l) = m else {
            continue;
        };
        let attached = link_attr(&l, |a| match a {
            LinkAttribute::Controller(c) => Some(*c),
            _ => None,
        }) == Some(index);
        let veth = link_attr(&l, |a| match a {
            LinkAttribute::LinkInfo(info) => Some(
                info.iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
            ),
            _ => None,
        })
        .unwrap_or(false);
        if attached && veth {
            let name = link_attr(&l, |a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_default();
            veths.push((name, mtu(&l)));
        }
    }
    veths.sort();
    Ok(Some(ObservedBridge {
        name: name.to_string(),
        mtu: mtu(&bridge),
        veths,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weft_entry_of_a_conflist_gives_bridge_and_mtu() {
        assert_eq!(
            WeftPluginConf::from_conflist(crate::host::install_cni::DEFAULT_CONFLIST),
            Some(WeftPluginConf {
                bridge: "cni0".into(),
                mtu: None
            })
        );
        let custom = r#"{"cniVersion":"1.0.0","name":"w","plugins":[{"type":"portmap"},{"type":"weft","bridge":"weft0","mtu":1400}]}"#;
        assert_eq!(
            WeftPluginConf::from_conflist(custom),
            Some(WeftPluginConf {
                bridge: "weft0".into(),
                mtu: Some(1400)
            })
        );
        assert_eq!(WeftPluginConf::from_conflist("{}"), None);
    }

    #[test]
    fn the_health_port_is_reached_on_loopback_when_weftd_listens_everywhere() {
        assert_eq!(
            healthz_target("0.0.0.0".parse().unwrap(), 8471),
            Some("127.0.0.1:8471".parse().unwrap())
        );
        assert_eq!(
            healthz_target("::".parse().unwrap(), 8471),
            Some("[::1]:8471".parse().unwrap())
        );
        assert_eq!(
            healthz_target("10.0.0.5".parse().unwrap(), 9000),
            Some("10.0.0.5:9000".parse().unwrap())
        );
        assert_eq!(healthz_target("0.0.0.0".parse().unwrap(), 0), None);
    }

    #[tokio::test]
    async fn probing_weftd_tells_a_closed_port_from_a_not_ready_agent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if req.starts_with("GET /healthz ") {
                    "HTTP/1.0 200 OK\r\n\r\nok\n"
                } else {
                    "HTTP/1.0 503 Service Unavailable\r\n\r\nnot ready: etcd is unreachable\n"
                };
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(
            probe_weftd(Some(addr)).await,
            WeftdHealth::NotReady {
                url: format!("http://{addr}/readyz"),
                why: "not ready: etcd is unreachable".into()
            }
        );
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        match probe_weftd(Some(closed)).await {
            WeftdHealth::NotAnswering { url, error } => {
                assert_eq!(url, format!("http://{closed}/healthz"));
                assert_eq!(error, "connection refused");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(probe_weftd(None).await, WeftdHealth::NotChecked);
    }
}
