//! The CNI verbs: each reads what it needs, then changes the IPAM store and the kernel in an
//! order that leaves nothing behind when it fails.

use ipnetwork::IpNetwork;
use weft_backends::netlink::NlSocket;

use crate::attach::{self, FamilyNetwork, Options, PodNetwork};
use crate::error::{code, CniError};
use crate::ipam::{FileIpam, IpamError, IpamStore};
use crate::kernel::{self, PodNs};
use std::path::Path;

use crate::request::{NetConf, Request, Target, Verb};
use crate::{status, version};

/// Run one validated request; `Some(json)` is what goes to stdout.
pub fn run(req: &Request) -> Result<Option<String>, CniError> {
    match &req.verb {
        Verb::Version => Ok(Some(version::version_json())),
        Verb::Status { conf } => pod_network(conf).map(|_| None),
        Verb::Add {
            target,
            netns,
            conf,
        } => add(target, netns, conf).map(Some),
        Verb::Del { target, conf, .. } => del(target, conf).map(|()| None),
        Verb::Check {
            target,
            netns,
            conf,
        } => check(target, netns, conf).map(|()| None),
        Verb::Gc { conf } => gc(conf).map(|()| None),
    }
}

/// The smallest MTU an IPv6 link may have (RFC 8200); below it the kernel turns IPv6 off on
/// the interface.
pub const MIN_IPV6_MTU: u32 = 1280;

/// The subnets pods get addresses from: an explicit IPv4 `range`, or this node's lease from
/// subnet.env, IPv4, IPv6 or both (error 50 until weftd has written it).
pub fn pod_network(conf: &NetConf) -> Result<PodNetwork, CniError> {
    if let Some(range) = conf.range {
        let range = IpNetwork::V4(range);
        return Ok(PodNetwork {
            ipv4: Some(FamilyNetwork {
                subnet: range,
                cluster: range,
            }),
            ipv6: None,
            mtu: conf.mtu.unwrap_or(1500),
        });
    }
    let env = status::read_subnet(&conf.subnet_file)?;
    let net = PodNetwork::from_subnet_env(&env);
    let mtu = conf.mtu.unwrap_or(net.mtu);
    if net.ipv6.is_some() && mtu < MIN_IPV6_MTU {
        let from = if conf.mtu.is_some() {
            "the config's mtu"
        } else {
            "FLANNEL_MTU"
        };
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network config",
            format!(
                "{from} {mtu} is below {MIN_IPV6_MTU}, the smallest MTU IPv6 allows, and {} sets FLANNEL_IPV6_SUBNET",
                conf.subnet_file.display()
            ),
        ));
    }
    Ok(net)
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

fn add(target: &Target, netns: &Path, conf: &NetConf) -> Result<String, CniError> {
    let (cid, ifname) = (target.container_id.as_str(), target.ifname.as_str());
    let net = pod_network(conf)?;
    // Everything that can be checked without changing anything is checked first.
    let mut pod = PodNs::open(netns)?;
    let mut host = host()?;
    // The lock is held only while choosing the addresses (one per family, all or none), not
    // while building the interfaces.
    let ips = store(conf)?.allocate_all(&net.ranges(), cid, ifname)?;
    let plan = attach::plan(&net, &Options::from(conf), cid, ifname, netns, &ips);
    match kernel::add(&mut host, &mut pod, &plan) {
        Ok(bridge) => Ok(plan.result(&conf.cni_version, bridge.mac).to_string()),
        Err(e) => {
            // Every family's address goes back.
            if let Ok(mut s) = store(conf) {
                let _ = s.release(cid, ifname);
            }
            Err(e)
        }
    }
}

fn del(target: &Target, conf: &NetConf) -> Result<(), CniError> {
    let (cid, ifname) = (target.container_id.as_str(), target.ifname.as_str());
    // The interfaces go first, so an address is never handed out while still in use; then
    // the addresses of both families.
    kernel::delete(&mut host()?, &attach::host_veth_name(cid, ifname))?;
    store(conf)?.release(cid, ifname)?;
    Ok(())
}

fn check(target: &Target, netns: &Path, conf: &NetConf) -> Result<(), CniError> {
    let (cid, ifname) = (target.container_id.as_str(), target.ifname.as_str());
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network config",
            "CHECK needs prevResult (the result of the ADD being checked)",
        )
    })?;
    let want = attach::expected_from_prev(prev, ifname)?;
    let net = pod_network(conf)?;
    let held = store(conf)?.find(cid, ifname)?;
    let differs = |details: String| {
        CniError::new(
            code::CHECK_FAILED,
            "the pod's network is not as set up",
            details,
        )
    };
    if held.is_empty() {
        return Err(differs(format!(
            "no address is allocated to {cid}/{ifname}"
        )));
    }
    // The allocations and the result name the same addresses, family by family.
    let mut said: Vec<_> = want.addresses.iter().map(|a| a.ip()).collect();
    said.sort();
    said.dedup();
    if said != held {
        return Err(differs(format!(
            "{cid}/{ifname} holds {} but prevResult says {}",
            held.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            want.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(ip) = held.iter().find(|ip| net.family_of(**ip).is_none()) {
        return Err(differs(format!(
            "{cid}/{ifname} holds {ip}, but {} no longer has a subnet of that address family",
            conf.subnet_file.display()
        )));
    }
    let plan = attach::plan(&net, &Options::from(conf), cid, ifname, netns, &held);
    let mut pod = PodNs::open(netns)?;
    kernel::check(&mut host()?, &mut pod, &plan, &want)
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
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
    store(conf)?.gc_with(&keep, |container_id, ifname| {
        kernel::delete(&mut host, &attach::host_veth_name(container_id, ifname)).map(drop)
    })?;
    Ok(())
}
