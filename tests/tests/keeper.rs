//! The lease keeper and the peer watch against a real etcd (and, for time-driven policy,
//! the in-memory store under paused tokio time).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use tokio::sync::{mpsc, watch};
use weft_agent::config::NetConfig;
use weft_agent::lease::keeper::{KeeperError, KeeperSettings, LeaseKeeper, LeaseStatus};
use weft_agent::lease::pick::{Identity, Previous};
use weft_agent::lease::watch::{run_peer_watch, WatchSettings};
use weft_agent::lease::{Endpoint, LeaseAttrs, LeaseRules, SubnetKey};
use weft_agent::store::{CreateOutcome, EtcdStore, LeaseStore, MemoryStore};
use weft_backends::backend::{BackendData, VxlanData};
use weft_backends::{BackendKind, MacAddr, PeerEvent};
use weft_tests::etcd::Etcd;
use weft_tests::wait_for;

const NET16: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
const DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;

fn cfg(s: &str) -> NetConfig {
    NetConfig::parse(s.as_bytes()).unwrap()
}

fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i + 1)
}

fn attrs(name: &str, ip: Ipv4Addr, mac: Option<MacAddr>) -> LeaseAttrs {
    let ep = Endpoint {
        public_ip: ip,
        data: mac.map(|vtep_mac| BackendData::vxlan(1, vtep_mac)),
    };
    let kind = if mac.is_some() {
        BackendKind::Vxlan
    } else {
        BackendKind::HostGw
    };
    LeaseAttrs::for_node(name, kind, Some(ep), None)
}

fn settings(name: &str, ip: Ipv4Addr, ttl: Duration) -> KeeperSettings {
    KeeperSettings {
        identity: Identity {
            node_name: name.into(),
            public_ip: Some(ip),
            public_ip_v6: None,
        },
        attrs: attrs(name, ip, Some(MacAddr::derive_from(name))),
        ttl,
        previous: Previous::default(),
    }
}

const DAY: Duration = Duration::from_secs(86_400);

/// A node's keeper and peer watch wired as weftd wires them.
struct Node {
    status: watch::Receiver<LeaseStatus>,
    events: mpsc::Receiver<Vec<PeerEvent>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    fn spawn<S: LeaseStore>(store: Arc<S>, cfg: NetConfig, s: KeeperSettings) -> Node {
        let name = s.identity.node_name.clone();
        let keeper = LeaseKeeper::new(store.clone(), cfg.clone(), s);
        let (status_tx, status) = watch::channel(LeaseStatus::Acquiring);
        let (stop, stop_rx) = watch::channel(false);
        let (own_tx, own_rx) = watch::channel(None);
        let (notice_tx, notice_rx) = mpsc::channel(64);
        let (ev_tx, events) = mpsc::channel(1024);
        let mut st = status.clone();
        let mut tasks = vec![tokio::spawn(keeper.run(
            None,
            status_tx,
            notice_rx,
            stop_rx.clone(),
        ))];
        tasks.push(tokio::spawn(async move {
            loop {
                let held = st.borrow_and_update().held().map(|h| h.key);
                if held.is_some() {
                    own_tx.send_replace(held);
                }
                if st.changed().await.is_err() {
                    return;
                }
            }
        }));
        tasks.push(tokio::spawn(run_peer_watch(
            WatchSettings {
                store,
                rules: LeaseRules::from_config(&cfg),
                initial: None,
                me: Some(name),
                own: own_rx,
                events: ev_tx,
                own_notices: notice_tx,
            },
            |_| {},
            stop_rx,
        )));
        Node {
            status,
            events,
            stop,
            tasks,
        }
    }

    async fn held(&mut self, what: &str) -> Ipv4Network {
        let mut st = self.status.clone();
        wait_for(what, Duration::from_secs(20), || {
            let v = st.borrow_and_update().held().map(|h| h.key.v4);
            async move { v }
        })
        .await
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_racing_keepers_get_distinct_subnets_then_the_pool_runs_dry() {
    let etcd = Etcd::start().await;
    let c = cfg(NET16);
    let stores: Vec<Arc<EtcdStore>> =
        futures::future::join_all((0..8).map(|_| etcd.store("/race")))
            .await
            .into_iter()
            .map(Arc::new)
            .collect();
    let acquire = |i: u32| {
        let store = stores[i as usize % stores.len()].clone();
        let c = c.clone();
        async move {
            LeaseKeeper::new(store, c, settings(&format!("node-{i}"), node_ip(i), DAY))
                .acquire(None)
                .await
        }
    };
    let results = futures::future::join_all((0..200).map(|i| tokio::spawn(acquire(i)))).await;
    let subnets: Vec<Ipv4Network> = results
        .into_iter()
        .map(|r| r.unwrap().expect("acquire").key.v4)
        .collect();
    let distinct: BTreeSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), 200, "200 keepers, 200 distinct subnets");
    for s in &subnets {
        let pool = c.ipv4.as_ref().unwrap();
        assert!(pool.index((*s).into()).is_some(), "{s} outside the pool");
    }
    let listed = stores[0].snapshot(false).await.unwrap();
    assert_eq!(listed.entries.len(), 200, "exactly one key per keeper");

    // Fill the rest of the pool (255 subnets: the first /24 is skipped, as flannel does).
    let rest = futures::future::join_all((200..255).map(|i| tokio::spawn(acquire(i)))).await;
    for r in rest {
        r.unwrap().expect("pool still has room");
    }
    match acquire(255).await {
        Err(KeeperError::PoolExhausted { pool_size, .. }) => assert_eq!(pool_size, 255),
        other => panic!("keeper beyond the pool: {other:?}"),
    }

    // The keeper that found no room keeps running, reports why, and gets a subnet once one
    // is freed.
    let mut late = Node::spawn(
        stores[0].clone(),
        c.clone(),
        settings("node-late", node_ip(999), DAY),
    );
    let mut st = late.status.clone();
    let why = wait_for(
        "the exhaustion to be reported",
        Duration::from_secs(20),
        || {
            let v = match &*st.borrow_and_update() {
                LeaseStatus::Failed(w) => Some(w.clone()),
                _ => None,
            };
            async move { v }
        },
    )
    .await;
    assert!(why.contains("pool exhausted"), "{why}");
    let freed = subnets[17];
    assert!(stores[0]
        .delete(&SubnetKey::v4(freed).to_string(), None)
        .await
        .unwrap());
    assert_eq!(
        late.held("the late keeper to get the freed subnet").await,
        freed
    );
    late.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_subnet_by_name_and_a_flannel_lease_by_public_ip() {
    let etcd = Etcd::start().await;
    let store = Arc::new(etcd.store("/restart").await);
    let c = cfg(NET16);
    let first = LeaseKeeper::new(store.clone(), c.clone(), settings("n1", node_ip(1), DAY))
        .acquire(None)
        .await
        .unwrap();
    // Some churn in between.
    for i in 2..20 {
        LeaseKeeper::new(
            store.clone(),
            c.clone(),
            settings(&format!("n{i}"), node_ip(i), DAY),
        )
        .acquire(None)
        .await
        .unwrap();
    }
    // Same name, new public IP: same subnet, attributes rewritten.
    let again = LeaseKeeper::new(store.clone(), c.clone(), settings("n1", node_ip(500), DAY))
        .acquire(None)
        .await
        .unwrap();
    assert_eq!(again.key, first.key);
    let attrs =
        LeaseAttrs::decode(&store.get(&again.entry.name).await.unwrap().unwrap().value).unwrap();
    assert_eq!(attrs.public_ip, Some(node_ip(500)));

    // Subnets nobody took in the churn above (nodes pick at random).
    let taken: Vec<String> = store
        .snapshot(false)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    let mut free = (100..=250)
        .map(|n| format!("10.5.{n}.0"))
        .filter(|s| !taken.iter().any(|t| t.starts_with(&format!("{s}-"))));
    let (flannel_subnet, previous) = (free.next().unwrap(), free.next().unwrap());
    // A lease written by flannel (no NodeName) is recognised by its PublicIP.
    let mut raw = etcd.raw_client().await;
    let flannel_value = r#"{"PublicIP":"203.0.113.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:11:22"}}"#;
    let grant = raw.lease_grant(3600, None).await.unwrap();
    raw.put(
        format!("/restart/subnets/{flannel_subnet}-24"),
        flannel_value,
        Some(etcd_client::PutOptions::new().with_lease(grant.id())),
    )
    .await
    .unwrap();
    let adopted = LeaseKeeper::new(
        store.clone(),
        c.clone(),
        settings("flannel-node", "203.0.113.9".parse().unwrap(), DAY),
    )
    .acquire(None)
    .await
    .unwrap();
    assert_eq!(adopted.key.v4.to_string(), format!("{flannel_subnet}/24"));
    let attrs = LeaseAttrs::decode(
        &store
            .get(&format!("{flannel_subnet}-24"))
            .await
            .unwrap()
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(
        attrs.node_name.as_deref(),
        Some("flannel-node"),
        "weft adds its NodeName on adoption"
    );

    // A node whose previous subnet (subnet.env) is free gets it back.
    let mut s = settings("n-prev", node_ip(77), DAY);
    s.previous = Previous {
        v4: Some(format!("{previous}/24").parse().unwrap()),
        v6: None,
    };
    let prev = LeaseKeeper::new(store.clone(), c.clone(), s)
        .acquire(None)
        .await
        .unwrap();
    assert_eq!(prev.key.v4.to_string(), format!("{previous}/24"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_are_honoured_and_never_handed_to_another_node() {
    let etcd = Etcd::start().await;
    let store = Arc::new(etcd.store("/resv").await);
    // Three subnets in the pool; one reserved for "special" (a key with no TTL).
    let c = cfg(r#"{"Network":"10.6.0.0/24","SubnetLen":26}"#);
    let special_ip: Ipv4Addr = "203.0.113.50".parse().unwrap();
    let mut raw = etcd.raw_client().await;
    raw.put("/resv/subnets/10.6.0.128-26", format!(r#"{{"PublicIP":"{special_ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"aa:bb:cc:00:11:23"}}}}"#), None)
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    for i in 0..2 {
        got.insert(
            LeaseKeeper::new(
                store.clone(),
                c.clone(),
                settings(&format!("o{i}"), node_ip(i), DAY),
            )
            .acquire(None)
            .await
            .unwrap()
            .key
            .v4,
        );
    }
    assert!(
        !got.contains(&"10.6.0.128/26".parse().unwrap()),
        "reserved subnet handed out: {got:?}"
    );
    let err = LeaseKeeper::new(store.clone(), c.clone(), settings("o9", node_ip(9), DAY))
        .acquire(None)
        .await
        .unwrap_err();
    assert!(matches!(err, KeeperError::PoolExhausted { .. }), "{err}");
    let held = LeaseKeeper::new(
        store.clone(),
        c.clone(),
        settings("special", special_ip, DAY),
    )
    .acquire(None)
    .await
    .unwrap();
    assert_eq!(held.key.v4.to_string(), "10.6.0.128/26");
    assert!(
        held.is_reservation(),
        "adopting a reservation keeps it a reservation"
    );
    let stored = store.get("10.6.0.128-26").await.unwrap().unwrap();
    assert_eq!(
        stored.ttl_lease, None,
        "no TTL was attached to the reservation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_is_reacquired_and_renewal_never_takes_another_nodes_subnet() {
    let etcd = Etcd::start().await;
    let store = Arc::new(etcd.store("/lost").await);
    let c = cfg(NET16);
    let mut node = Node::spawn(
        store.clone(),
        c.clone(),
        settings("n1", node_ip(1), Duration::from_secs(4)),
    );
    let subnet = node.held("first lease").await;
    let name = SubnetKey::v4(subnet).to_string();

    // Deleted by hand: the watch tells the keeper, which takes the same subnet back.
    assert!(store.delete(&name, None).await.unwrap());
    wait_for(
        "the lease to be re-created",
        Duration::from_secs(20),
        || {
            let (store, name) = (store.clone(), name.clone());
            async move { store.get(&name).await.unwrap().map(|_| ()) }
        },
    )
    .await;
    let back = LeaseAttrs::decode(&store.get(&name).await.unwrap().unwrap().value).unwrap();
    assert_eq!(back.node_name.as_deref(), Some("n1"));

    // Another node takes the subnet while n1 is not looking: n1 must not overwrite it.
    let thief_value = attrs("thief", node_ip(2), Some(MacAddr::derive_from("thief"))).encode();
    let mut raw = etcd.raw_client().await;
    raw.put(format!("/lost/subnets/{name}"), thief_value.clone(), None)
        .await
        .unwrap();
    let mut st = node.status.clone();
    let new_subnet = wait_for(
        "n1 to move to another subnet",
        Duration::from_secs(20),
        || {
            let v = st
                .borrow_and_update()
                .held()
                .map(|h| h.key.v4)
                .filter(|s| *s != subnet);
            async move { v }
        },
    )
    .await;
    assert_ne!(new_subnet, subnet);
    // Through renewals (TTL 4 s, renewed every 2 s), the thief's value is never touched.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.get(&name).await.unwrap().unwrap().value, thief_value);
    let mine = store
        .get(&SubnetKey::v4(new_subnet).to_string())
        .await
        .unwrap()
        .expect("n1's new lease was renewed and is alive");
    assert_eq!(
        LeaseAttrs::decode(&mine.value)
            .unwrap()
            .node_name
            .as_deref(),
        Some("n1")
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_a_stale_revision_reports_the_lease_lost() {
    let etcd = Etcd::start().await;
    let store = Arc::new(etcd.store("/cas").await);
    let c = cfg(NET16);
    let mut k = LeaseKeeper::new(store.clone(), c.clone(), settings("n1", node_ip(1), DAY));
    let held = k.acquire(None).await.unwrap();
    // The key is deleted and re-created by someone else.
    store.delete(&held.entry.name, None).await.unwrap();
    let other = attrs("other", node_ip(2), None).encode();
    assert!(matches!(
        store.create(&held.entry.name, &other, None).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    assert_eq!(
        k.renew(&held).await.unwrap(),
        None,
        "renewal must report the lease lost"
    );
    assert_eq!(
        store.get(&held.entry.name).await.unwrap().unwrap().value,
        other,
        "and leave the other node's lease alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_watch_that_falls_behind_a_compaction_relists_with_the_right_events() {
    let etcd = Etcd::start().await;
    let store = Arc::new(etcd.store("/compact").await);
    let c = cfg(NET16);
    let mine = LeaseKeeper::new(store.clone(), c.clone(), settings("me", node_ip(1), DAY))
        .acquire(None)
        .await
        .unwrap()
        .key
        .v4;
    let mut held = Vec::new();
    for i in 2..5 {
        held.push(
            LeaseKeeper::new(
                store.clone(),
                c.clone(),
                settings(&format!("p{i}"), node_ip(i), DAY),
            )
            .acquire(None)
            .await
            .unwrap(),
        );
    }
    // The watch's view: a listing taken now...
    let stale = store.snapshot(false).await.unwrap();
    // ...then the world moves on: p2 leaves, p5 joins, p3 changes its public IP...
    store.delete(&held[0].entry.name, None).await.unwrap();
    let p5 = LeaseKeeper::new(store.clone(), c.clone(), settings("p5", node_ip(5), DAY))
        .acquire(None)
        .await
        .unwrap()
        .key
        .v4;
    let p3 = LeaseKeeper::new(store.clone(), c.clone(), settings("p3", node_ip(33), DAY))
        .acquire(None)
        .await
        .unwrap();
    assert_eq!(p3.key, held[1].key);
    // ...and the history the watch would need is compacted away.
    etcd.compact_now().await;

    let (own_tx, own_rx) = watch::channel(Some(SubnetKey::v4(mine)));
    let (ev_tx, mut events) = mpsc::channel(64);
    let (notice_tx, _notices) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_peer_watch(
        WatchSettings {
            store: store.clone(),
            rules: LeaseRules::from_config(&c),
            initial: Some(stale),
            me: Some("me".into()),
            own: own_rx,
            events: ev_tx,
            own_notices: notice_tx,
        },
        |_| {},
        stop_rx,
    ));

    let first = recv(&mut events).await;
    let added: BTreeSet<_> = first
        .iter()
        .map(|e| match e {
            PeerEvent::Added(p) => p.subnet,
            other => panic!("initial listing gives only additions, got {other:?}"),
        })
        .collect();
    assert_eq!(
        added,
        held.iter().map(|h| h.key.v4).collect(),
        "own subnet excluded"
    );

    let relist = recv(&mut events).await;
    let (mut removed, mut joined, mut updated) = (false, false, false);
    for ev in &relist {
        match ev {
            PeerEvent::Removed(p) if p.subnet == held[0].key.v4 => removed = true,
            PeerEvent::Added(p) if p.subnet == p5 => joined = true,
            PeerEvent::Updated { old, new } if new.subnet == p3.key.v4 => {
                assert_eq!((old.public_ip, new.public_ip), (node_ip(3), node_ip(33)));
                updated = true;
            }
            other => panic!("unexpected event after compaction: {other:?}"),
        }
    }
    assert!(removed && joined && updated, "{relist:?}");
    drop(own_tx);
    stop.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

async fn recv(events: &mut mpsc::Receiver<Vec<PeerEvent>>) -> Vec<PeerEvent> {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("peer events in time")
        .expect("watch alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_leases_are_skipped_by_the_watch_and_never_crash_the_keeper() {
    let etcd = Etcd::start().await;
    let store = Arc::new(etcd.store("/hostile").await);
    let c = cfg(r#"{"Network":"10.7.0.0/16"}"#);
    let mut raw = etcd.raw_client().await;
    let good = |ip: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    let hostile: Vec<(String, Vec<u8>)> = vec![
        ("10.7.1.0-24".into(), b"{not json".to_vec()),
        ("10.7.2.0-24".into(), Vec::new()),
        ("10.8.3.0-24".into(), good("198.18.0.3", "aa:00:00:00:00:03").into()),
        ("10.7.4.0-24".into(), good("127.0.0.1", "aa:00:00:00:00:04").into()),
        ("10.7.5.0-24".into(), good("224.0.0.5", "aa:00:00:00:00:05").into()),
        ("10.7.6.0-24".into(), br#"{"PublicIP":"198.18.0.6","BackendType":"vxlan","BackendData":{"VNI":99,"VtepMAC":"aa:00:00:00:00:06"}}"#.to_vec()),
        ("10.7.7.0-24".into(), good("198.18.0.7", "01:00:5e:00:00:07").into()),
        ("10.7.8.0-25".into(), good("198.18.0.8", "aa:00:00:00:00:08").into()),
        ("../../../etc/passwd".into(), good("198.18.0.9", "aa:00:00:00:00:09").into()),
        ("10.7.10.0-24".into(), format!(r#"{{"PublicIP":"198.18.0.10","X":"{}"}}"#, "A".repeat(100_000)).into()),
        ("10.7.11.0-24".into(), vec![0, 1, 2, 0xff]),
    ];
    for (k, v) in &hostile {
        raw.put(format!("/hostile/subnets/{k}"), v.clone(), None)
            .await
            .unwrap();
    }
    // Two keys claiming one subnet: the older one is used, once.
    raw.put(
        "/hostile/subnets/10.7.20.0-24",
        good("198.18.0.20", "aa:00:00:00:00:20"),
        None,
    )
    .await
    .unwrap();
    raw.put(
        "/hostile/subnets/10.7.20.0-24&fc00::-64",
        good("198.18.0.21", "aa:00:00:00:00:21"),
        None,
    )
    .await
    .unwrap();
    raw.put(
        "/hostile/subnets/10.7.30.0-24",
        good("198.18.0.30", "aa:00:00:00:00:30"),
        None,
    )
    .await
    .unwrap();

    let mut node = Node::spawn(store.clone(), c.clone(), settings("me", node_ip(1), DAY));
    let mine = node.held("a lease despite the garbage").await;
    for (k, _) in &hostile {
        if let Ok(key) = k.parse::<SubnetKey>() {
            assert_ne!(key.v4, mine, "picked a subnet that has a (garbage) key");
        }
    }
    let mut peers = BTreeSet::new();
    while peers.len() < 2 {
        for ev in recv(&mut node.events).await {
            match ev {
                PeerEvent::Added(p) => {
                    if p.subnet.to_string() == "10.7.20.0/24" {
                        assert_eq!(
                            p.public_ip.to_string(),
                            "198.18.0.20",
                            "the older claim wins"
                        );
                    }
                    peers.insert(p.subnet);
                }
                other => panic!("only additions expected, got {other:?}"),
            }
        }
    }
    let expect: BTreeSet<Ipv4Network> = ["10.7.20.0/24", "10.7.30.0/24"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(peers, expect);
    // A hostile write while running removes that peer and changes nothing else.
    raw.put("/hostile/subnets/10.7.30.0-24", "garbage now", None)
        .await
        .unwrap();
    let batch = recv(&mut node.events).await;
    assert!(
        matches!(&batch[..], [PeerEvent::Removed(p)] if p.subnet.to_string() == "10.7.30.0/24"),
        "{batch:?}"
    );
    assert!(
        node.status.borrow().held().is_some(),
        "keeper still holds its lease"
    );
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn keeper_renews_at_half_ttl_under_paused_time() {
    let store = Arc::new(MemoryStore::new());
    let c = cfg(NET16);
    let node = Node::spawn(store.clone(), c, settings("n1", node_ip(1), DAY));
    let mut st = node.status.clone();
    let first = wait_for("lease", Duration::from_secs(5), || {
        let v = st.borrow_and_update().held().cloned();
        async move { v }
    })
    .await;
    let name = first.entry.name.clone();
    tokio::time::sleep(Duration::from_secs(11 * 3600)).await;
    assert_eq!(
        store.get(&name).await.unwrap().unwrap().mod_revision,
        first.entry.mod_revision,
        "no renewal before half the TTL"
    );
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let renewed = store.get(&name).await.unwrap().unwrap();
    assert!(
        renewed.mod_revision > first.entry.mod_revision,
        "renewed after half the TTL"
    );
    // Three days on, renewals kept it alive; the old TTL lease was revoked.
    tokio::time::sleep(Duration::from_secs(3 * 86_400)).await;
    assert!(store.get(&name).await.unwrap().is_some());
    if let Some(old) = first.entry.ttl_lease {
        assert_eq!(store.time_to_live(old).await.unwrap(), None);
    }
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn keeper_survives_a_store_outage_longer_than_the_ttl_and_keeps_its_subnet() {
    let store = Arc::new(MemoryStore::new());
    let c = cfg(NET16);
    let mut node = Node::spawn(
        store.clone(),
        c,
        settings("n1", node_ip(1), Duration::from_secs(60)),
    );
    let subnet = node.held("lease").await;
    store.set_down(true);
    tokio::time::sleep(Duration::from_secs(120)).await;
    store.set_down(false);
    let name = SubnetKey::v4(subnet).to_string();
    wait_for("the lease to exist again", Duration::from_secs(300), || {
        let store = store.clone();
        let name = name.clone();
        async move { store.get(&name).await.ok()?.map(|_| ()) }
    })
    .await;
    assert_eq!(
        node.held("same subnet").await,
        subnet,
        "the previous subnet is taken back"
    );
    node.stop().await;
}

fn dual_settings(name: &str, i: u32) -> KeeperSettings {
    let ip6: std::net::Ipv6Addr = format!("2001:db8::{:x}", i + 1).parse().unwrap();
    let mut s = settings(name, node_ip(i), DAY);
    s.identity.public_ip_v6 = Some(ip6);
    s.attrs = LeaseAttrs::for_node(
        name,
        BackendKind::Vxlan,
        Some(Endpoint {
            public_ip: node_ip(i),
            data: Some(BackendData::Vxlan(VxlanData {
                vni: 1,
                vtep_mac: MacAddr::derive_from(name),
            })),
        }),
        Some(Endpoint {
            public_ip: ip6,
            data: Some(BackendData::Vxlan(VxlanData {
                vni: 1,
                vtep_mac: MacAddr::derive_from(&format!("{name}/ipv6")),
            })),
        }),
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_dual_stack_keepers_get_distinct_subnets_of_both_families() {
    let etcd = Etcd::start().await;
    let c = cfg(DUAL);
    let stores: Vec<Arc<EtcdStore>> =
        futures::future::join_all((0..4).map(|_| etcd.store("/race6")))
            .await
            .into_iter()
            .map(Arc::new)
            .collect();
    let results = futures::future::join_all((0..100u32).map(|i| {
        let store = stores[i as usize % stores.len()].clone();
        let c = c.clone();
        tokio::spawn(async move {
            LeaseKeeper::new(store, c, dual_settings(&format!("d{i}"), i))
                .acquire(None)
                .await
        })
    }))
    .await;
    let keys: Vec<SubnetKey> = results
        .into_iter()
        .map(|r| r.unwrap().expect("acquire").key)
        .collect();
    let v4: BTreeSet<_> = keys.iter().map(|k| k.v4).collect();
    let v6: BTreeSet<_> = keys.iter().map(|k| k.v6.expect("dual-stack key")).collect();
    assert_eq!(
        (v4.len(), v6.len()),
        (100, 100),
        "distinct subnets in both families"
    );
    let listed = stores[0].snapshot(false).await.unwrap();
    assert_eq!(listed.entries.len(), 100, "one key per keeper");
    for e in &listed.entries {
        assert!(
            e.name.contains("&fc00:"),
            "flannel's dual-stack key form: {}",
            e.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_ipv6_keeps_the_nodes_ipv4_subnet_and_replaces_its_key() {
    let etcd = Etcd::start().await;
    let store = Arc::new(etcd.store("/upgrade6").await);
    let before = LeaseKeeper::new(store.clone(), cfg(NET16), settings("n1", node_ip(1), DAY))
        .acquire(None)
        .await
        .unwrap();
    assert_eq!(before.key.v6, None);
    let after = LeaseKeeper::new(store.clone(), cfg(DUAL), dual_settings("n1", 1))
        .acquire(None)
        .await
        .unwrap();
    assert_eq!(
        after.key.v4, before.key.v4,
        "the IPv4 subnet (and so pod addresses) stays"
    );
    assert!(after.key.v6.is_some());
    let names: Vec<String> = store
        .snapshot(false)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        vec![after.key.to_string()],
        "the old single-stack key is gone"
    );
}

/// A [`MemoryStore`] whose renewals (`replace`) hang while `hang` is true, as a request
/// to an etcd that never answers would without its timeout.
#[derive(Clone, Debug)]
struct HangingStore {
    inner: MemoryStore,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl LeaseStore for HangingStore {
    async fn snapshot(
        &self,
        with_config: bool,
    ) -> Result<weft_agent::store::Snapshot, weft_agent::store::StoreError> {
        self.inner.snapshot(with_config).await
    }
    async fn put_config(&self, value: &[u8]) -> Result<(), weft_agent::store::StoreError> {
        self.inner.put_config(value).await
    }
    async fn get(
        &self,
        name: &str,
    ) -> Result<Option<weft_agent::store::StoredEntry>, weft_agent::store::StoreError> {
        self.inner.get(name).await
    }
    async fn create_unless_prefixed(
        &self,
        name: &str,
        guard: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<CreateOutcome, weft_agent::store::StoreError> {
        self.inner
            .create_unless_prefixed(name, guard, value, ttl)
            .await
    }
    async fn replace(
        &self,
        name: &str,
        value: &[u8],
        expected: weft_agent::store::Revision,
        ttl: Option<Duration>,
    ) -> Result<weft_agent::store::ReplaceOutcome, weft_agent::store::StoreError> {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.replace(name, value, expected, ttl).await
    }
    async fn delete(
        &self,
        name: &str,
        expected: Option<weft_agent::store::Revision>,
    ) -> Result<bool, weft_agent::store::StoreError> {
        self.inner.delete(name, expected).await
    }
    async fn time_to_live(
        &self,
        lease: weft_agent::store::TtlLeaseId,
    ) -> Result<Option<Duration>, weft_agent::store::StoreError> {
        self.inner.time_to_live(lease).await
    }
    async fn revoke(
        &self,
        lease: weft_agent::store::TtlLeaseId,
    ) -> Result<(), weft_agent::store::StoreError> {
        self.inner.revoke(lease).await
    }
    async fn watch(
        &self,
        from: weft_agent::store::Revision,
    ) -> Result<weft_agent::store::WatchStream, weft_agent::store::StoreError> {
        self.inner.watch(from).await
    }
    fn request_count(&self) -> u64 {
        self.inner.request_count()
    }
}

/// `/healthz` follows the keeper's attempts: an etcd outage (requests fail and are retried)
/// is not "stuck", a renewal that never returns is, once it is late by the grace (half the
/// TTL, at least a minute).
#[tokio::test(start_paused = true)]
async fn the_keeper_is_stuck_for_health_only_when_its_renewal_attempt_is_overdue() {
    use futures::FutureExt;
    use weft_agent::health::Readiness;
    use weft_agent::supervisor::{Progress, Supervisor, Task, TaskBoard};
    let store = HangingStore {
        inner: MemoryStore::new(),
        hang: Default::default(),
    };
    let ttl = Duration::from_secs(120);
    let progress = Progress::default();
    let keeper = LeaseKeeper::new(
        Arc::new(store.clone()),
        cfg(NET16),
        settings("n1", node_ip(1), ttl),
    )
    .with_progress(progress.clone());
    assert_eq!(keeper.grace(), Duration::from_secs(60));
    let (status_tx, mut status) = watch::channel(LeaseStatus::Acquiring);
    let (_notice_tx, notice_rx) = mpsc::channel(8);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let (_ready_tx, ready_rx) = watch::channel(Readiness::Ready);
    let board = TaskBoard::default();
    let mut sup = Supervisor::new(board.clone(), Default::default(), ready_rx, stop_rx.clone());
    let run = keeper.run(None, status_tx, notice_rx, stop_rx).map(Ok);
    sup.spawn(Task::fatal("keeper", run).with_progress(progress));
    status.wait_for(|s| s.held().is_some()).await.unwrap();

    // Ten minutes of etcd outage: renewals fail and are retried; never stuck.
    store.inner.set_down(true);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(board.problem(), None);
    }
    store.inner.set_down(false);
    // The next attempt renews or re-acquires; the one after it is due within TTL/2.
    status.changed().await.unwrap();
    status.wait_for(|s| s.held().is_some()).await.unwrap();
    assert_eq!(board.problem(), None);

    // The next renewal (within TTL/2 = 60 s) hangs: stuck once it is a minute late.
    store.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(board.problem(), None, "not yet a minute late");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let problem = board.problem().expect("the keeper is stuck");
    assert!(
        problem.starts_with("task keeper has made no progress for "),
        "{problem}"
    );
}
