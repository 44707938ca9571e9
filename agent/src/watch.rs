//! The peer watch: list once, watch from that revision, turn lease changes into peer events.
//! On compaction or a broken stream it re-lists and emits only the difference.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnetwork::Ipv4Network;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use weft_backends::{Peer, PeerEvent};

use crate::keeper::{sleep_or_shutdown, Backoff, OwnKeyNotice};
use crate::lease::{validate, LeaseRules};
use crate::store::{LeaseStore, Revision, Snapshot, StoredEntry, WatchEvent};

/// One entry as the watch knows it.
#[derive(Clone, Debug)]
struct Known {
    create_revision: Revision,
    mod_revision: Revision,
    peer: Option<Peer>,
}

/// The peer set and the bookkeeping to diff it. Pure: fed entries, returns events.
#[derive(Debug)]
pub struct PeerSet {
    rules: LeaseRules,
    own: Option<Ipv4Network>,
    /// This node's name: a lease carrying it is never a peer, whatever its subnet.
    me: Option<String>,
    entries: BTreeMap<String, Known>,
    by_subnet: BTreeMap<Ipv4Network, BTreeSet<String>>,
    /// Valid entries by the public IP they claim (a second claimant is refused).
    by_ip: BTreeMap<std::net::Ipv4Addr, BTreeSet<String>>,
    /// Subnets whose winner may have changed because a public IP's claimants changed.
    ip_touched: BTreeSet<Ipv4Network>,
    /// Entries refused because an older lease holds their subnet or public IP.
    conflicts: BTreeSet<String>,
    /// What has been emitted: subnet → peer.
    emitted: BTreeMap<Ipv4Network, Peer>,
    warned: HashSet<(String, i64)>,
    invalid: usize,
}

impl PeerSet {
    pub fn new(rules: LeaseRules, me: Option<String>) -> Self {
        PeerSet {
            rules,
            own: None,
            me,
            entries: BTreeMap::new(),
            by_subnet: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            ip_touched: BTreeSet::new(),
            conflicts: BTreeSet::new(),
            emitted: BTreeMap::new(),
            warned: HashSet::new(),
            invalid: 0,
        }
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.emitted.values()
    }

    pub fn len(&self) -> usize {
        self.emitted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.emitted.is_empty()
    }

    /// Entries present that are not used: they failed validation, or an older lease holds
    /// their subnet or public IP.
    pub fn invalid_count(&self) -> usize {
        self.invalid + self.conflicts.len()
    }

    /// Every subnet of a valid entry claiming `ip`.
    fn subnets_claiming(&self, ip: std::net::Ipv4Addr) -> Vec<Ipv4Network> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|n| self.entries.get(n)?.peer.as_ref().map(|p| p.subnet))
            .collect()
    }

    /// Set this node's own subnet (never a peer). Returns the resulting events.
    pub fn set_own(&mut self, own: Option<Ipv4Network>) -> Vec<PeerEvent> {
        let old = std::mem::replace(&mut self.own, own);
        let touched: BTreeSet<Ipv4Network> = old.into_iter().chain(own).collect();
        self.settle(touched)
    }

    /// Replace everything with a fresh listing; emit the difference.
    pub fn reset(&mut self, entries: &[StoredEntry]) -> Vec<PeerEvent> {
        let mut touched: BTreeSet<Ipv4Network> = self.emitted.keys().copied().collect();
        let fresh: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !fresh.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(s) = self.forget(&name) {
                touched.insert(s);
            }
        }
        for e in entries {
            let unchanged = self
                .entries
                .get(&e.name)
                .is_some_and(|k| k.mod_revision == e.mod_revision);
            if !unchanged {
                if let Some(s) = self.learn(e) {
                    touched.insert(s);
                }
            }
        }
        self.settle(touched)
    }

    /// Apply a batch of watch events; emit the difference.
    pub fn apply(&mut self, events: &[WatchEvent]) -> Vec<PeerEvent> {
        let mut touched = BTreeSet::new();
        for ev in events {
            match ev {
                WatchEvent::Put(e) => {
                    if self
                        .entries
                        .get(&e.name)
                        .is_some_and(|k| k.mod_revision >= e.mod_revision)
                    {
                        continue; // replayed
                    }
                    if let Some(old) = self.forget(&e.name) {
                        touched.insert(old);
                    }
                    if let Some(s) = self.learn(e) {
                        touched.insert(s);
                    }
                }
                WatchEvent::Delete { name, .. } => {
                    if let Some(s) = self.forget(name) {
                        touched.insert(s);
                    }
                }
            }
        }
        self.settle(touched)
    }

    /// Record an entry; returns its subnet if it names one.
    fn learn(&mut self, e: &StoredEntry) -> Option<Ipv4Network> {
        self.forget(&e.name);
        // This node's own lease carries its own public IP; only peers may not.
        let own_key = self.own.is_some_and(|own| {
            e.name
                .parse::<crate::lease::SubnetKey>()
                .is_ok_and(|k| k.v4 == own)
        });
        let rules = if own_key {
            LeaseRules {
                own_public_ip: None,
                ..self.rules.clone()
            }
        } else {
            self.rules.clone()
        };
        let peer = match validate(&rules, &e.name, &e.value) {
            Ok(p) => Some(p),
            Err(err) => {
                self.invalid += 1;
                if self.warned.insert((e.name.clone(), e.mod_revision.0)) {
                    warn!(key = %e.name.escape_debug(), revision = e.mod_revision.0, error = %err, "skipping invalid lease");
                }
                None
            }
        };
        let subnet = peer.as_ref().map(|p| p.subnet);
        self.entries.insert(
            e.name.clone(),
            Known {
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
                peer,
            },
        );
        if let Some(s) = subnet {
            self.by_subnet.entry(s).or_default().insert(e.name.clone());
        }
        if let Some(ip) = self.entries[&e.name].peer.as_ref().map(|p| p.public_ip) {
            self.by_ip.entry(ip).or_default().insert(e.name.clone());
            let others = self.subnets_claiming(ip);
            self.ip_touched.extend(others);
        }
        subnet
    }

    fn forget(&mut self, name: &str) -> Option<Ipv4Network> {
        let known = self.entries.remove(name)?;
        match known.peer {
            None => {
                self.invalid = self.invalid.saturating_sub(1);
                None
            }
            Some(p) => {
                if let Some(set) = self.by_subnet.get_mut(&p.subnet) {
                    set.remove(name);
                    if set.is_empty() {
                        self.by_subnet.remove(&p.subnet);
                    }
                }
                if let Some(set) = self.by_ip.get_mut(&p.public_ip) {
                    set.remove(name);
                    if set.is_empty() {
                        self.by_ip.remove(&p.public_ip);
                    }
                }
                self.conflicts.remove(name);
                let others = self.subnets_claiming(p.public_ip);
                self.ip_touched.extend(others);
                Some(p.subnet)
            }
        }
    }

    /// Recompute the winner for each touched subnet and emit what changed.
    fn settle(&mut self, mut touched: BTreeSet<Ipv4Network>) -> Vec<PeerEvent> {
        touched.append(&mut self.ip_touched);
        let mut out = Vec::new();
        for subnet in touched {
            let winner = if Some(subnet) == self.own {
                // Any other key for this node's own subnet is somebody else's claim on it.
                let mine = crate::lease::SubnetKey::v4(subnet).to_string();
                let intruders: Vec<String> = self
                    .by_subnet
                    .get(&subnet)
                    .into_iter()
                    .flatten()
                    .filter(|n| **n != mine)
                    .cloned()
                    .collect();
                for n in intruders {
                    let rev = self.entries.get(&n).map_or(0, |k| k.mod_revision.0);
                    if self.warned.insert((format!("own:{n}"), rev)) {
                        warn!(key = %n.escape_debug(), subnet = %subnet, "refusing a lease that claims this node's own subnet");
                    }
                    self.conflicts.insert(n);
                }
                None
            } else {
                self.winner(subnet)
                    .filter(|p| p.node_name.is_none() || p.node_name != self.me)
            };
            match (self.emitted.get(&subnet).cloned(), winner) {
                (None, None) => {}
                (None, Some(p)) => {
                    self.emitted.insert(subnet, p.clone());
                    out.push(PeerEvent::Added(p));
                }
                (Some(old), None) => {
                    self.emitted.remove(&subnet);
                    out.push(PeerEvent::Removed(old));
                }
                (Some(old), Some(new)) if old != new => {
                    self.emitted.insert(subnet, new.clone());
                    out.push(PeerEvent::Updated { old, new });
                }
                _ => {}
            }
        }
        out
    }

    /// Two keys claiming one subnet (e.g. a single-stack and a dual-stack key): the one
    /// created first wins, the other is reported.
    fn winner(&mut self, subnet: Ipv4Network) -> Option<Peer> {
        let names = self.by_subnet.get(&subnet)?;
        let mut best: Option<(&String, &Known)> = None;
        for n in names {
            let k = &self.entries[n];
            if best.is_none_or(|(_, b)| k.create_revision < b.create_revision) {
                best = Some((n, k));
            }
        }
        let (name, known) = best?;
        if names.len() > 1 {
            let others: Vec<&String> = names.iter().filter(|n| *n != name).collect();
            let key = (format!("dup:{subnet}"), known.mod_revision.0);
            if self.warned.insert(key) {
                warn!(subnet = %subnet, chosen = %name, ignored = ?others, "several leases claim one subnet; using the oldest");
            }
        }
        let name = name.clone();
        let peer = known.peer.clone()?;
        let created = known.create_revision;
        for n in names.iter().filter(|n| **n != name) {
            self.conflicts.insert(n.clone());
        }
        self.conflicts.remove(&name);
        // A public IP claimed by an older lease for another subnet: this one is refused, so
        // that a copied or mistyped address cannot pull a live node's traffic elsewhere.
        let older = self.by_ip.get(&peer.public_ip).and_then(|holders| {
            holders
                .iter()
                .filter(|n| **n != name)
                .filter_map(|n| Some((n, self.entries.get(n)?)))
                .filter(|(_, k)| k.peer.as_ref().is_some_and(|p| p.subnet != subnet))
                .filter(|(n, k)| (k.create_revision, n.as_str()) < (created, name.as_str()))
                .map(|(n, _)| n.clone())
                .next()
        });
        if let Some(holder) = older {
            self.conflicts.insert(name.clone());
            let key = (format!("ip:{name}"), known.mod_revision.0);
            if self.warned.insert(key) {
                warn!(key = %name.escape_debug(), public_ip = %peer.public_ip, held_by = %holder.escape_debug(), "refusing a lease whose PublicIP an older lease already holds");
            }
            return None;
        }
        Some(peer)
    }
}

/// Run the watch until shutdown. Peer events go to `events`; changes to the key named by
/// `own` go to `own_notices` (the keeper decides what they mean).
#[allow(clippy::too_many_arguments)]
pub async fn run_peer_watch<S: LeaseStore>(
    store: Arc<S>,
    rules: LeaseRules,
    initial: Option<Snapshot>,
    me: Option<String>,
    mut own: watch::Receiver<Option<(String, Ipv4Network)>>,
    events: mpsc::Sender<Vec<PeerEvent>>,
    own_notices: mpsc::Sender<OwnKeyNotice>,
    // (valid peers, invalid leases, whether this listing restarted the watch)
    peer_count: impl Fn(usize, usize, bool) + Send,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut set = PeerSet::new(rules, me);
    // Start once this node holds a lease, so its own subnet is never taken for a peer.
    while own.borrow_and_update().is_none() {
        tokio::select! {
            r = own.changed() => if r.is_err() { return },
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
    }
    let mut snapshot = initial;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut first = true;
    let mut first_sent_pending = true;
    let mut own_key = own.borrow().clone();
    // Nothing is known yet, so setting the own subnet emits nothing.
    set.set_own(own_key.as_ref().map(|(_, s)| *s));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let snap = match snapshot.take() {
            Some(s) => s,
            None => match store.snapshot(false).await {
                Ok(s) => s,
                Err(e) => {
                    let d = backoff.next();
                    warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot list leases");
                    if sleep_or_shutdown(d, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let diff = set.reset(&snap.entries);
        let relisted = !first;
        if !first {
            info!(
                revision = snap.revision.0,
                changes = diff.len(),
                "re-listed leases"
            );
        }
        first = false;
        if let Some((name, _)) = &own_key {
            if !snap.entries.iter().any(|e| &e.name == name) {
                let _ = own_notices
                    .send(OwnKeyNotice::Deleted {
                        name: name.clone(),
                        revision: snap.revision.0,
                    })
                    .await;
            }
        }
        peer_count(set.len(), set.invalid_count(), relisted);
        // The first listing is always sent, even empty: it tells the data plane that the
        // peer set is known and stale state may now be removed.
        if (!diff.is_empty() || first_sent_pending) && events.send(diff).await.is_err() {
            return;
        }
        first_sent_pending = false;
        // The listing is not needed any more; holding it while watching would keep every
        // lease value twice.
        let revision = snap.revision.0;
        drop(snap);
        let mut stream = match store.watch(Revision(revision + 1)).await {
            Ok(s) => s,
            Err(e) => {
                let d = backoff.next();
                warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot start lease watch");
                if sleep_or_shutdown(d, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return; }
                }
                changed = own.changed() => {
                    if changed.is_err() { return; }
                    own_key = own.borrow().clone();
                    let diff = set.set_own(own_key.as_ref().map(|(_, s)| *s));
                    peer_count(set.len(), set.invalid_count(), relisted);
                    if !diff.is_empty() && events.send(diff).await.is_err() { return; }
                }
                item = stream.next() => {
                    match item {
                        Some(Ok(batch)) => {
                            if let Some((name, _)) = &own_key {
                                for ev in &batch {
                                    let notice = match ev {
                                        WatchEvent::Put(e) if &e.name == name => Some(OwnKeyNotice::Put { name: e.name.clone(), mod_revision: e.mod_revision.0 }),
                                        WatchEvent::Delete { name: n, revision } if n == name => Some(OwnKeyNotice::Deleted { name: n.clone(), revision: revision.0 }),
                                        _ => None,
                                    };
                                    if let Some(n) = notice {
                                        let _ = own_notices.send(n).await;
                                    }
                                }
                            }
                            let diff = set.apply(&batch);
                            peer_count(set.len(), set.invalid_count(), relisted);
                            if !diff.is_empty() && events.send(diff).await.is_err() { return; }
                        }
                        Some(Err(e)) => {
                            if e.needs_relist() {
                                info!(error = %e, "lease watch interrupted; re-listing");
                            } else {
                                warn!(error = %e, "lease watch failed; re-listing");
                            }
                            break;
                        }
                        None => {
                            debug!("lease watch stream ended; re-listing");
                            break;
                        }
                    }
                }
            }
        }
        if sleep_or_shutdown(backoff.next(), &mut shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Revision;

    fn rules() -> LeaseRules {
        LeaseRules {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            vni: 1,
            own_public_ip: Some("192.0.2.1".parse().unwrap()),
        }
    }

    fn entry(key: &str, ip: &str, rev: i64) -> StoredEntry {
        StoredEntry {
            name: key.into(),
            value: format!(
                r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{rev:02x}"}}}}"#
            )
            .into_bytes(),
            create_revision: Revision(rev),
            mod_revision: Revision(rev),
            ttl_lease: None,
        }
    }

    fn subnets(events: &[PeerEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                PeerEvent::Added(p) => format!("+{}", p.subnet),
                PeerEvent::Removed(p) => format!("-{}", p.subnet),
                PeerEvent::Updated { new, .. } => format!("~{}", new.subnet),
            })
            .collect()
    }

    #[test]
    fn a_second_lease_with_a_taken_public_ip_is_refused_until_the_first_goes() {
        let mut set = PeerSet::new(rules(), None);
        let a = entry("10.244.1.0-24", "192.0.2.10", 5);
        let b = entry("10.244.2.0-24", "192.0.2.10", 7);
        let c = entry("10.244.3.0-24", "192.0.2.11", 8);
        let ev = set.reset(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(subnets(&ev), ["+10.244.1.0/24", "+10.244.3.0/24"]);
        assert_eq!(set.invalid_count(), 1, "the refused lease is counted");
        // The holder leaves: the other claimant is used from now on.
        let ev = set.apply(&[WatchEvent::Delete {
            name: a.name.clone(),
            revision: Revision(9),
        }]);
        assert_eq!(subnets(&ev), ["-10.244.1.0/24", "+10.244.2.0/24"]);
        assert_eq!(set.invalid_count(), 0);
        // A newcomer copying a live node's IP changes nothing.
        let d = entry("10.244.4.0-24", "192.0.2.11", 10);
        assert!(set.apply(&[WatchEvent::Put(d)]).is_empty());
        assert_eq!(set.invalid_count(), 1);
    }

    #[test]
    fn leases_claiming_this_node_or_the_cluster_network_as_public_ip_are_refused() {
        let mut set = PeerSet::new(rules(), None);
        let ev = set.reset(&[
            entry("10.244.1.0-24", "192.0.2.1", 3),
            entry("10.244.2.0-24", "10.244.9.9", 4),
            entry("10.244.3.0-24", "192.0.2.30", 5),
        ]);
        assert_eq!(subnets(&ev), ["+10.244.3.0/24"]);
        assert_eq!(set.invalid_count(), 2);
    }

    #[test]
    fn a_second_key_for_a_held_subnet_is_refused_and_counted() {
        let mut set = PeerSet::new(rules(), None);
        let ev = set.reset(&[
            entry("10.244.1.0-24", "192.0.2.10", 3),
            entry("10.244.1.0-24&fc00::-64", "192.0.2.66", 9),
        ]);
        assert_eq!(ev.len(), 1);
        match &ev[0] {
            PeerEvent::Added(p) => assert_eq!(p.public_ip.to_string(), "192.0.2.10"),
            other => panic!("{other:?}"),
        }
        assert_eq!(set.invalid_count(), 1);
    }
}
