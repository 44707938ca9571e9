//! One contract suite for `LeaseStore`, run against the in-memory store and a real etcd.

use std::time::Duration;

use futures::StreamExt;
use weft_agent::store::{
    CreateOutcome, LeaseStore, MemoryStore, ReplaceOutcome, Revision, StoreError, WatchEvent,
};
use weft_tests::etcd::Etcd;
use weft_tests::wait_for;

const T: Duration = Duration::from_secs(10);

async fn create_is_exclusive<S: LeaseStore>(s: &S) {
    let CreateOutcome::Created(a) = s.create("10.5.1.0-24", b"first", None).await.unwrap() else {
        panic!("first create must succeed")
    };
    assert_eq!(a.value, b"first");
    assert_eq!(a.create_revision, a.mod_revision);
    assert_eq!(a.ttl_lease, None, "no TTL means a reservation");
    match s.create("10.5.1.0-24", b"second", None).await.unwrap() {
        CreateOutcome::Exists(Some(cur)) => assert_eq!(cur.value, b"first"),
        other => panic!("second create: {other:?}"),
    }
    assert_eq!(s.get("10.5.1.0-24").await.unwrap().unwrap().value, b"first");
    assert_eq!(s.get("10.5.2.0-24").await.unwrap(), None);
}

async fn a_guarded_create_fails_while_any_key_starts_with_the_guard<S: LeaseStore>(s: &S) {
    // A single-stack key blocks a dual-stack key for the same IPv4 subnet, and back.
    assert!(matches!(
        s.create("10.5.1.0-24", b"single", None).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    match s
        .create_unless_prefixed("10.5.1.0-24&fc00:0:0:1::-64", "10.5.1.0-24", b"dual", None)
        .await
        .unwrap()
    {
        CreateOutcome::Exists(Some(cur)) => assert_eq!(cur.name, "10.5.1.0-24"),
        other => panic!("dual-stack create over a single-stack key: {other:?}"),
    }
    assert!(matches!(
        s.create_unless_prefixed("10.5.2.0-24&fc00:0:0:2::-64", "10.5.2.0-24", b"dual", None)
            .await
            .unwrap(),
        CreateOutcome::Created(_)
    ));
    match s
        .create_unless_prefixed("10.5.2.0-24&fc00:0:0:9::-64", "10.5.2.0-24", b"other", None)
        .await
        .unwrap()
    {
        CreateOutcome::Exists(Some(cur)) => assert_eq!(cur.value, b"dual"),
        other => panic!("a second dual-stack key for one IPv4 subnet: {other:?}"),
    }
    // A neighbour whose name merely sorts nearby does not block.
    assert!(matches!(
        s.create_unless_prefixed("10.5.20.0-24", "10.5.20.0-24", b"x", None)
            .await
            .unwrap(),
        CreateOutcome::Created(_)
    ));
    let names: Vec<String> = s
        .snapshot(false)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

async fn ttl_leases_count_down_and_revoke_deletes<S: LeaseStore>(s: &S) {
    let CreateOutcome::Created(e) = s
        .create("10.5.3.0-24", b"v", Some(Duration::from_secs(60)))
        .await
        .unwrap()
    else {
        panic!("create")
    };
    let lease = e.ttl_lease.expect("a TTL lease");
    let left = s.time_to_live(lease).await.unwrap().expect("lease alive");
    assert!(
        left <= Duration::from_secs(60) && left >= Duration::from_secs(50),
        "{left:?}"
    );
    s.revoke(lease).await.unwrap();
    assert_eq!(
        s.get("10.5.3.0-24").await.unwrap(),
        None,
        "revoking deletes the key"
    );
    assert_eq!(s.time_to_live(lease).await.unwrap(), None);
    s.revoke(lease).await.expect("revoking twice is fine");
}

async fn replace_is_compare_and_swap<S: LeaseStore>(s: &S) {
    let CreateOutcome::Created(e) = s
        .create("10.5.4.0-24", b"v1", Some(Duration::from_secs(60)))
        .await
        .unwrap()
    else {
        panic!("create")
    };
    let ReplaceOutcome::Replaced(e2) = s
        .replace(
            "10.5.4.0-24",
            b"v2",
            e.mod_revision,
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap()
    else {
        panic!("replace at the right revision must succeed")
    };
    assert!(e2.mod_revision > e.mod_revision);
    assert_eq!(e2.create_revision, e.create_revision);
    assert_ne!(e2.ttl_lease, e.ttl_lease, "a fresh TTL lease");
    match s
        .replace("10.5.4.0-24", b"v3", e.mod_revision, None)
        .await
        .unwrap()
    {
        ReplaceOutcome::Conflict(Some(cur)) => assert_eq!(cur.value, b"v2"),
        other => panic!("stale replace: {other:?}"),
    }
    match s
        .replace("10.5.99.0-24", b"v", Revision(1), None)
        .await
        .unwrap()
    {
        ReplaceOutcome::Conflict(None) => {}
        other => panic!("replace of a missing key: {other:?}"),
    }
    assert_eq!(s.get("10.5.4.0-24").await.unwrap().unwrap().value, b"v2");
}

async fn delete_checks_revision<S: LeaseStore>(s: &S) {
    let CreateOutcome::Created(e) = s.create("10.5.5.0-24", b"v", None).await.unwrap() else {
        panic!()
    };
    assert!(!s
        .delete("10.5.5.0-24", Some(Revision(e.mod_revision.0 + 1000)))
        .await
        .unwrap());
    assert!(s.get("10.5.5.0-24").await.unwrap().is_some());
    assert!(s.delete("10.5.5.0-24", Some(e.mod_revision)).await.unwrap());
    assert!(
        !s.delete("10.5.5.0-24", None).await.unwrap(),
        "deleting a missing key reports false"
    );
}

async fn snapshot_lists_everything_at_one_revision<S: LeaseStore>(s: &S) {
    let empty = s.snapshot(true).await.unwrap();
    assert!(empty.entries.is_empty());
    assert_eq!(empty.config, None);
    s.put_config(br#"{"Network":"10.5.0.0/16"}"#).await.unwrap();
    for i in 1..=5 {
        s.create(&format!("10.5.{i}.0-24"), b"x", None)
            .await
            .unwrap();
    }
    let snap = s.snapshot(true).await.unwrap();
    assert_eq!(
        snap.config.as_deref(),
        Some(&br#"{"Network":"10.5.0.0/16"}"#[..])
    );
    assert_eq!(snap.entries.len(), 5, "config is not an entry");
    let max = snap.entries.iter().map(|e| e.mod_revision).max().unwrap();
    assert!(snap.revision >= max);
    assert_eq!(s.snapshot(false).await.unwrap().config, None);
}

async fn watch_from_revision_sees_changes_in_order<S: LeaseStore>(s: &S) {
    s.create("10.5.1.0-24", b"before", None).await.unwrap();
    let snap = s.snapshot(false).await.unwrap();
    let mut w = s.watch(Revision(snap.revision.0 + 1)).await.unwrap();
    let CreateOutcome::Created(a) = s.create("10.5.2.0-24", b"a", None).await.unwrap() else {
        panic!()
    };
    s.replace("10.5.2.0-24", b"b", a.mod_revision, None)
        .await
        .unwrap();
    s.delete("10.5.1.0-24", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = tokio::time::timeout(T, w.next())
            .await
            .expect("watch event in time")
            .expect("stream open")
            .unwrap();
        seen.extend(batch);
    }
    match (&seen[0], &seen[1], &seen[2]) {
        (WatchEvent::Put(x), WatchEvent::Put(y), WatchEvent::Delete { name, .. }) => {
            assert_eq!(
                (x.name.as_str(), x.value.as_slice()),
                ("10.5.2.0-24", &b"a"[..])
            );
            assert_eq!(y.value, b"b");
            assert_eq!(name, "10.5.1.0-24");
        }
        other => panic!("unexpected events {other:?}"),
    }
    // A watch from an old revision replays history.
    let mut w = s.watch(snap.revision).await.unwrap();
    let first = tokio::time::timeout(T, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first[0], WatchEvent::Put(e) if e.name == "10.5.1.0-24" || e.name == "10.5.2.0-24")
    );
}

async fn watch_from_compacted_revision_reports_compaction<S: LeaseStore>(
    s: &S,
    compact: impl std::future::Future<Output = ()>,
) {
    let start = s.snapshot(false).await.unwrap().revision;
    for i in 1..=3 {
        s.create(&format!("10.5.{i}.0-24"), b"x", None)
            .await
            .unwrap();
    }
    compact.await;
    let err = match s.watch(Revision(start.0 + 1)).await {
        Err(e) => e,
        Ok(mut w) => tokio::time::timeout(T, w.next())
            .await
            .expect("an answer")
            .expect("an item")
            .expect_err("must not replay compacted history"),
    };
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    assert!(err.needs_relist());
}

async fn expired_ttl_deletes_the_key<S: LeaseStore>(s: &S) {
    s.create("10.5.6.0-24", b"short", Some(Duration::from_secs(2)))
        .await
        .unwrap();
    wait_for(
        "the 2 s lease to expire",
        Duration::from_secs(15),
        || async { s.get("10.5.6.0-24").await.unwrap().is_none().then_some(()) },
    )
    .await;
}

async fn counts_requests<S: LeaseStore>(s: &S) {
    let before = s.request_count();
    s.snapshot(true).await.unwrap();
    assert_eq!(s.request_count(), before + 1, "a snapshot is one request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_memory_store() {
    create_is_exclusive(&MemoryStore::new()).await;
    a_guarded_create_fails_while_any_key_starts_with_the_guard(&MemoryStore::new()).await;
    ttl_leases_count_down_and_revoke_deletes(&MemoryStore::new()).await;
    replace_is_compare_and_swap(&MemoryStore::new()).await;
    delete_checks_revision(&MemoryStore::new()).await;
    snapshot_lists_everything_at_one_revision(&MemoryStore::new()).await;
    watch_from_revision_sees_changes_in_order(&MemoryStore::new()).await;
    let m = MemoryStore::new();
    watch_from_compacted_revision_reports_compaction(&m, async { m.compact(m.revision()) }).await;
    expired_ttl_deletes_the_key(&MemoryStore::new()).await;
    counts_requests(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_etcd_store() {
    let etcd = Etcd::start().await;
    create_is_exclusive(&etcd.store("/c1").await).await;
    a_guarded_create_fails_while_any_key_starts_with_the_guard(&etcd.store("/c10").await).await;
    ttl_leases_count_down_and_revoke_deletes(&etcd.store("/c2").await).await;
    replace_is_compare_and_swap(&etcd.store("/c3").await).await;
    delete_checks_revision(&etcd.store("/c4").await).await;
    snapshot_lists_everything_at_one_revision(&etcd.store("/c5").await).await;
    watch_from_revision_sees_changes_in_order(&etcd.store("/c6").await).await;
    watch_from_compacted_revision_reports_compaction(&etcd.store("/c7").await, etcd.compact_now())
        .await;
    expired_ttl_deletes_the_key(&etcd.store("/c8").await).await;
    counts_requests(&etcd.store("/c9").await).await;
}
