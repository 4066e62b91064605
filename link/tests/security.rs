//! Frames with a wrong key, a flipped bit, a replayed capture (also after a restart), a
//! truncated body, or reflected back to their sender are rejected and counted; none reaches
//! the application. The frame decoder takes any bytes without panicking.

use std::sync::Arc;

use proptest::prelude::*;
use satcosign_link::crypto::{Cipher, Identity};
use satcosign_link::engine::{Engine, EngineConfig};
use satcosign_link::store::{LinkStore, MemStore, RedbStore};
use tokio::time::Instant;

fn cipher(me: u8, peer: u8) -> Cipher {
    Cipher::new(
        &Identity::from_bytes([me; 32]),
        &Identity::from_bytes([peer; 32]).public(),
    )
}

fn engine<S: LinkStore + Clone>(me: u8, peer: u8, store: S) -> Engine<S> {
    Engine::new(EngineConfig::default(), cipher(me, peer), store, 1.0).expect("engine")
}

/// A message of several frames from ground (1) to satellite (2).
fn captured_frames(msg: &[u8]) -> Vec<Vec<u8>> {
    let mut ground = engine(1, 2, MemStore::new());
    ground.send(msg).expect("send");
    ground
        .poll_transmit(Instant::now())
        .expect("store")
        .expect("a transmission")
}

/// The next transmission of `e` from `t` on, stepping the clock to each of its wake-ups (a
/// restarted engine listens first).
fn next_burst<S: LinkStore>(e: &mut Engine<S>, t: &mut Instant) -> Option<Vec<Vec<u8>>> {
    for _ in 0..100 {
        if let Some(frames) = e.poll_transmit(*t).expect("store") {
            return Some(frames);
        }
        *t = e.next_wakeup(*t)?.max(*t);
    }
    None
}

fn inbox(store: &impl LinkStore) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((id, m)) = store.inbox_first().expect("inbox") {
        store.inbox_remove(id).expect("remove");
        out.push(m);
    }
    out
}

#[tokio::test]
async fn forged_damaged_truncated_and_reflected_frames_are_rejected_and_counted() {
    let msg = vec![0x5a; 1000];
    let frames = captured_frames(&msg);
    assert!(frames.len() >= 5);
    let store = MemStore::new();
    let mut sat = engine(2, 1, store.clone());
    let now = Instant::now();

    // Sealed with another key pair (a stranger posing as the ground station).
    let mut stranger = engine(3, 2, MemStore::new());
    stranger.send(&msg).expect("send");
    for f in stranger.poll_transmit(now).expect("store").expect("frames") {
        sat.on_frame(&f, now).expect("store");
    }
    // Every single-bit flip of every frame.
    for f in &frames {
        for bit in (0..f.len() * 8).step_by(7) {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            sat.on_frame(&g, now).expect("store");
        }
        // Truncated.
        sat.on_frame(&f[..f.len() / 2], now).expect("store");
    }
    // Reflected: the satellite's own frame sent back to it.
    let mut sat_twin = engine(2, 1, MemStore::new());
    sat_twin.send(b"reflected").expect("send");
    for f in sat_twin.poll_transmit(now).expect("store").expect("frames") {
        sat.on_frame(&f, now).expect("store");
    }
    let s = sat.stats().clone();
    assert!(s.rejected_forged >= 2, "{s:?}");
    assert!(s.rejected_damaged > 100, "{s:?}");
    assert_eq!(s.frames_received, 0, "nothing was accepted: {s:?}");
    assert!(inbox(&store).is_empty(), "nothing reached the application");

    // The genuine frames still deliver the message, once.
    for f in &frames {
        sat.on_frame(f, now).expect("store");
    }
    assert_eq!(inbox(&store), vec![msg]);
}

#[tokio::test]
async fn replays_are_rejected_also_after_a_restart_on_a_real_store() {
    let msg = b"approve request 7".repeat(40);
    let frames = captured_frames(&msg);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sat.redb");
    let now = Instant::now();
    {
        let store = Arc::new(RedbStore::open(&path).expect("store"));
        let mut sat = engine(2, 1, store.clone());
        for f in &frames {
            sat.on_frame(f, now).expect("store");
        }
        assert_eq!(inbox(&store), vec![msg.clone()]);
        // Replayed at once: each frame is refused.
        for f in &frames {
            sat.on_frame(f, now).expect("store");
        }
        assert_eq!(sat.stats().rejected_replayed, frames.len() as u64);
        assert!(inbox(&store).is_empty());
    }
    // The satellite restarts; the captured frames are replayed again.
    let store = Arc::new(RedbStore::open(&path).expect("reopen"));
    let mut sat = engine(2, 1, store.clone());
    for f in &frames {
        sat.on_frame(f, now).expect("store");
    }
    assert_eq!(
        sat.stats().rejected_replayed,
        frames.len() as u64,
        "stale after restart"
    );
    assert_eq!(sat.stats().frames_received, 0);
    assert!(
        inbox(&store).is_empty(),
        "a replay never reaches the application"
    );
}

#[tokio::test]
async fn counters_are_never_reused_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ground.redb");
    let now = Instant::now();
    let mut counters = std::collections::HashSet::new();
    let receiver = cipher(2, 1);
    for _ in 0..3 {
        let store = Arc::new(RedbStore::open(&path).expect("store"));
        let mut ground = engine(1, 2, store);
        ground.send(b"hello").expect("send");
        let mut t = now;
        for f in next_burst(&mut ground, &mut t).expect("frames") {
            let (c, _) = receiver.open(&f).expect("authentic");
            assert!(counters.insert(c), "counter {c} reused after a restart");
        }
    }
}

#[tokio::test]
async fn a_sender_restarted_mid_transfer_resumes_from_its_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ground.redb");
    let msg = vec![7u8; 3000];
    let sat_store = MemStore::new();
    let mut sat = engine(2, 1, sat_store.clone());
    let now = Instant::now();
    {
        let mut ground = engine(1, 2, Arc::new(RedbStore::open(&path).expect("store")));
        ground.send(&msg).expect("send");
        let frames = ground.poll_transmit(now).expect("store").expect("frames");
        // Only half the transmission gets through before the ground station dies.
        for f in &frames[..frames.len() / 2] {
            sat.on_frame(f, now).expect("store");
        }
    }
    let mut ground = engine(1, 2, Arc::new(RedbStore::open(&path).expect("reopen")));
    assert_eq!(
        ground.queue_depth(),
        1,
        "the unacknowledged message survived"
    );
    // The restarted ground listens first, then sends in short bursts, each answered by the
    // satellite's report, until the message is whole.
    let mut t = now;
    for _ in 0..20 {
        if sat_store.inbox_first().expect("inbox").is_some() {
            break;
        }
        let frames = next_burst(&mut ground, &mut t).expect("frames");
        assert!(
            frames.len() <= 8,
            "a restarted side starts with a short burst, not its whole outbox: {}",
            frames.len()
        );
        for f in &frames {
            sat.on_frame(f, t).expect("store");
        }
        let mut ts = t;
        if let Some(answer) = next_burst(&mut sat, &mut ts) {
            for f in &answer {
                ground.on_frame(f, ts).expect("store");
            }
        }
        t = t.max(ts);
    }
    assert_eq!(inbox(&sat_store), vec![msg]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, .. ProptestConfig::default() })]

    #[test]
    fn any_bytes_are_rejected_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let sat = cipher(2, 1);
        prop_assert!(sat.open(&bytes).is_err());
        let _ = satcosign_link::frame::Plain::decode(&bytes);
    }

    #[test]
    fn a_mutated_frame_is_never_accepted(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let frames = captured_frames(&[9u8; 600]);
        let f = &frames[at.index(frames.len())];
        let mut g = f.clone();
        let i = at.index(g.len());
        g[i] ^= xor;
        prop_assert!(cipher(2, 1).open(&g).is_err());
    }
}
