//! The CNI verbs: each reads what it needs, then changes the IPAM store and the kernel in an
//! order that leaves nothing behind when it fails.

use weft_backends::netlink::NlSocket;

use crate::attach::{self, Options, PodNetwork};
use crate::error::{code, CniError};
use crate::ipam::{FileIpam, IpamError, IpamStore};
use crate::kernel::{self, PodNs};
use crate::request::{Command, NetConf, Request};
use crate::{status, version};

/// Run one validated request; `Some(json)` is what goes to stdout.
pub fn run(req: &Request) -> Result<Option<String>, CniError> {
    match req.command {
        Command::Version => Ok(Some(version::version_json())),
        Command::Status => pod_network(conf(req)).map(|_| None),
        Command::Add => add(req).map(Some),
        Command::Del => del(req).map(|()| None),
        Command::Check => check(req).map(|()| None),
        Command::Gc => gc(req).map(|()| None),
    }
}

fn conf(req: &Request) -> &NetConf {
    req.conf
        .as_ref()
        .expect("every verb but VERSION is parsed with a config")
}

/// (container id, ifname): validated present for ADD, DEL and CHECK.
fn attachment(req: &Request) -> (&str, &str) {
    match (req.container_id.as_deref(), req.ifname.as_deref()) {
        (Some(c), Some(i)) => (c, i),
        _ => unreachable!(
            "CNI_CONTAINERID and CNI_IFNAME are validated for {:?}",
            req.command
        ),
    }
}

/// The subnet pods get addresses from: an explicit `range`, or this node's lease from
/// subnet.env (error 50 until weftd has written it).
pub fn pod_network(conf: &NetConf) -> Result<PodNetwork, CniError> {
    if let Some(range) = conf.range {
        return Ok(PodNetwork {
            subnet: range,
            cluster: range,
            mtu: conf.mtu.unwrap_or(1500),
        });
    }
    let env = status::read_subnet(&conf.subnet_file)?;
    Ok(PodNetwork {
        subnet: env.subnet,
        cluster: env.network,
        mtu: env.mtu,
    })
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        match e {
            IpamError::Exhausted { .. } => {
                CniError::new(code::TRY_AGAIN_LATER, "no pod address left", e.to_string())
            }
            other => CniError::new(code::IO, "IPAM store failure", other.to_string()),
        }
    }
}

fn store(conf: &NetConf) -> Result<FileIpam, CniError> {
    Ok(FileIpam::open(&conf.data_dir, &conf.name)?)
}

fn host() -> Result<NlSocket, CniError> {
    NlSocket::open().map_err(|e| {
        CniError::new(
            code::DATAPATH,
            "cannot set up the pod's network",
            e.to_string(),
        )
    })
}

fn add(req: &Request) -> Result<String, CniError> {
    let conf = conf(req);
    let (cid, ifname) = attachment(req);
    let netns = req
        .netns
        .as_deref()
        .expect("CNI_NETNS is validated for ADD");
    let net = pod_network(conf)?;
    // Everything that can be checked without changing anything is checked first.
    let mut pod = PodNs::open(netns)?;
    let mut host = host()?;
    // The lock is held only while choosing the address, not while building the interfaces.
    let ip = store(conf)?.allocate(net.subnet, cid, ifname)?;
    let plan = attach::plan(&net, &Options::from(conf), cid, ifname, netns, ip);
    match kernel::add(&mut host, &mut pod, &plan) {
        Ok(bridge) => Ok(plan.result(&conf.cni_version, bridge.mac).to_string()),
        Err(e) => {
            if let Ok(mut s) = store(conf) {
                let _ = s.release(cid, ifname);
            }
            Err(e)
        }
    }
}

fn del(req: &Request) -> Result<(), CniError> {
    let conf = conf(req);
    let (cid, ifname) = attachment(req);
    // The interfaces go first, so the address is never handed out while still in use.
    kernel::delete(&mut host()?, &attach::host_veth_name(cid, ifname))?;
    store(conf)?.release(cid, ifname)?;
    Ok(())
}

fn check(req: &Request) -> Result<(), CniError> {
    let conf = conf(req);
    let (cid, ifname) = attachment(req);
    let netns = req
        .netns
        .as_deref()
        .expect("CNI_NETNS is validated for CHECK");
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network config",
            "CHECK needs prevResult (the result of the ADD being checked)",
        )
    })?;
    let want = attach::expected_from_prev(prev, ifname)?;
    let net = pod_network(conf)?;
    let held = store(conf)?.find(cid, ifname)?.ok_or_else(|| {
        CniError::new(
            code::CHECK_FAILED,
            "the pod's network is not as set up",
            format!("no address is allocated to {cid}/{ifname}"),
        )
    })?;
    if !want.addresses.iter().any(|a| a.ip() == held) {
        return Err(CniError::new(
            code::CHECK_FAILED,
            "the pod's network is not as set up",
            format!(
                "{cid}/{ifname} holds {} but prevResult says {:?}",
                held,
                want.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
            ),
        ));
    }
    let plan = attach::plan(&net, &Options::from(conf), cid, ifname, netns, held);
    let mut pod = PodNs::open(netns)?;
    kernel::check(&mut host()?, &mut pod, &plan, &want)
}

fn gc(req: &Request) -> Result<(), CniError> {
    let conf = conf(req);
    let keep: Vec<(String, String)> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid network config",
                "GC needs cni.dev/valid-attachments (an empty list releases everything)",
            )
        })?
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    // Under the store's lock: an attachment's interfaces go before its address is freed.
    let mut host = host()?;
    store(conf)?.gc_with(&keep, |a| {
        kernel::delete(
            &mut host,
            &attach::host_veth_name(&a.container_id, &a.ifname),
        )
        .map(drop)
    })?;
    Ok(())
}
