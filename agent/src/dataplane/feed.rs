//! The peer feed: hands the peer watch's events to every data-plane reconciler, and keeps the
//! peer set they were told, so that either side can be restarted on its own. A restarted
//! reconciler is told the whole set first; a restarted watch's first listing is turned into
//! the difference from what the reconcilers know.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, Mutex};
use weft_backends::{Peer, PeerEvent};

/// Batches a reconciler may have queued before the feed waits for it.
const QUEUE: usize = 64;

#[derive(Debug, Default)]
struct FeedState {
    /// The peer set as the reconcilers were told it, by identifying subnet.
    peers: BTreeMap<IpNetwork, Peer>,
    /// A first listing has been passed on.
    listed: bool,
    /// Each reconciler's queue, by its task name.
    sinks: BTreeMap<&'static str, mpsc::Sender<Vec<PeerEvent>>>,
}

/// The feed. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct PeerFeed(Arc<Mutex<FeedState>>);

impl PeerFeed {
    /// A queue for reconciler `name` (replacing an earlier one of that name): the whole peer
    /// set first when it is known, then every change.
    pub async fn subscribe(&self, name: &'static str) -> mpsc::Receiver<Vec<PeerEvent>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut state = self.0.lock().await;
        if state.listed {
            let all = state
                .peers
                .values()
                .cloned()
                .map(PeerEvent::Added)
                .collect();
            // A new queue has room.
            let _ = tx.try_send(all);
        }
        state.sinks.insert(name, tx);
        rx
    }

    /// Pass on one run of the peer watch: its first batch is its full listing, the rest are
    /// changes. Returns when the run's sender is gone.
    pub async fn forward(&self, mut run: mpsc::Receiver<Vec<PeerEvent>>) {
        let Some(listing) = run.recv().await else {
            return;
        };
        self.take_listing(listing).await;
        while let Some(batch) = run.recv().await {
            let mut state = self.0.lock().await;
            for ev in &batch {
                match ev {
                    PeerEvent::Added(p) => {
                        state.peers.insert(p.id(), p.clone());
                    }
                    PeerEvent::Updated { old, new } => {
                        state.peers.remove(&old.id());
                        state.peers.insert(new.id(), new.clone());
                    }
                    PeerEvent::Removed(p) => {
                        state.peers.remove(&p.id());
                    }
                }
            }
            send(&mut state, batch).await;
        }
    }

    /// A full listing (every peer as `Added`): what the reconcilers know is brought to it.
    async fn take_listing(&self, listing: Vec<PeerEvent>) {
        let mut fresh: BTreeMap<IpNetwork, Peer> = BTreeMap::new();
        for ev in listing {
            if let PeerEvent::Added(p) | PeerEvent::Updated { new: p, .. } = ev {
                fresh.insert(p.id(), p);
            }
        }
        let mut state = self.0.lock().await;
        let mut events = Vec::new();
        for (id, old) in &state.peers {
            match fresh.get(id) {
                None => events.push(PeerEvent::Removed(old.clone())),
                Some(new) if new != old => events.push(PeerEvent::Updated {
                    old: old.clone(),
                    new: new.clone(),
                }),
                Some(_) => {}
            }
        }
        for (id, new) in &fresh {
            if !state.peers.contains_key(id) {
                events.push(PeerEvent::Added(new.clone()));
            }
        }
        state.peers = fresh;
        // The first listing goes out even empty: it tells the reconcilers the set is known.
        if !events.is_empty() || !state.listed {
            state.listed = true;
            send(&mut state, events).await;
        }
    }
}

/// Send `batch` to every reconciler; a queue whose reconciler is gone is dropped (its
/// restart subscribes again).
async fn send(state: &mut FeedState, batch: Vec<PeerEvent>) {
    let mut gone = Vec::new();
    for (name, tx) in &state.sinks {
        if tx.send(batch.clone()).await.is_err() {
            gone.push(*name);
        }
    }
    for name in gone {
        state.sinks.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_backends::BackendKind;

    fn peer(n: u8, ip: u8) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: std::net::Ipv4Addr::new(192, 0, 2, ip),
            subnet_v6: None,
            public_ip_v6: None,
            backend: BackendKind::Vxlan,
            data: None,
            data_v6: None,
            node_name: None,
        }
    }

    fn text(events: &[PeerEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                PeerEvent::Added(p) => format!("+{}", p.id()),
                PeerEvent::Removed(p) => format!("-{}", p.id()),
                PeerEvent::Updated { new, .. } => format!("~{}", new.id()),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_restarted_watch_gives_the_difference_and_a_restarted_reconciler_everything() {
        let feed = PeerFeed::default();
        let mut dp = feed.subscribe("dataplane-ipv4").await;
        let (tx, rx) = mpsc::channel(8);
        let run = tokio::spawn({
            let feed = feed.clone();
            async move { feed.forward(rx).await }
        });
        tx.send(vec![]).await.unwrap();
        assert!(
            dp.recv().await.unwrap().is_empty(),
            "an empty first listing"
        );
        tx.send(vec![
            PeerEvent::Added(peer(1, 1)),
            PeerEvent::Added(peer(2, 2)),
        ])
        .await
        .unwrap();
        assert_eq!(
            text(&dp.recv().await.unwrap()),
            ["+10.244.1.0/24", "+10.244.2.0/24"]
        );
        // The watch dies; the next run lists 2 (changed) and 3 (new), not 1 (gone).
        drop(tx);
        run.await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        let run = tokio::spawn({
            let feed = feed.clone();
            async move { feed.forward(rx).await }
        });
        tx.send(vec![
            PeerEvent::Added(peer(2, 20)),
            PeerEvent::Added(peer(3, 3)),
        ])
        .await
        .unwrap();
        assert_eq!(
            text(&dp.recv().await.unwrap()),
            ["-10.244.1.0/24", "~10.244.2.0/24", "+10.244.3.0/24"]
        );
        // A reconciler restarts: it is told the whole set, then changes.
        drop(dp);
        let mut dp = feed.subscribe("dataplane-ipv4").await;
        assert_eq!(
            text(&dp.recv().await.unwrap()),
            ["+10.244.2.0/24", "+10.244.3.0/24"]
        );
        tx.send(vec![PeerEvent::Removed(peer(3, 3))]).await.unwrap();
        assert_eq!(text(&dp.recv().await.unwrap()), ["-10.244.3.0/24"]);
        drop(tx);
        run.await.unwrap();
    }
}
