//! Taking a message back: one queued while the satellite is out of view can be withdrawn,
//! and the satellite never receives it, and asking again (after a restart too) answers the
//! same; one that went on the air cannot, and arrives. The bridge withdraws the queued
//! requests of a wallet that is locked down.

mod common;

use std::time::Duration;

use satcosign_link::store::{LinkStore, MemStore};
use satcosign_link::transport::sim::{Passes, SimChannel, SimConfig};

#[test]
fn a_message_not_yet_on_the_air_is_withdrawn_and_never_arrives() {
    common::runtime().block_on(async {
        let sim = SimConfig {
            passes: Some(Passes {
                up: Duration::from_secs(120),
                period: Duration::from_secs(3600),
            }),
            first_pass_in: Duration::from_secs(600),
            ..SimConfig::default()
        };
        let channel = SimChannel::new(sim.clone());
        let (ground_store, sat_store) = (MemStore::new(), MemStore::new());
        let ground = common::start(0, &channel, &ground_store, &sim);
        let sat = common::start(1, &channel, &sat_store, &sim);

        let sign = ground.send(b"sign request".to_vec()).await.expect("queued");
        let lock = ground.send(b"lockdown".to_vec()).await.expect("queued");
        assert!(
            ground.withdraw(sign).await.expect("link runs"),
            "out of view: withdrawn"
        );
        assert!(
            !ground_store.is_queued(sign).expect("store"),
            "gone from the persisted outbox too"
        );
        // Asked again, after a crash too, the answer stands: the bridge may have crashed
        // between taking it back and recording so.
        assert!(
            ground.withdraw(sign).await.expect("link runs"),
            "asked again"
        );
        ground.stop();
        let ground = common::start(0, &channel, &ground_store, &sim);
        assert!(
            ground.withdraw(sign).await.expect("link runs"),
            "asked again after a restart"
        );
        assert!(
            !ground.withdraw(lock + 100).await.expect("link runs"),
            "a message never queued is not one taken back"
        );

        // The pass: only the lockdown crosses.
        let (id, got) = sat.recv().await.expect("delivered");
        assert_eq!(got, b"lockdown");
        sat.ack(id).expect("ack");
        let mut acked = ground.acknowledged();
        while ground_store.is_queued(lock).expect("store") {
            acked.recv().await.expect("acknowledged");
        }
        assert!(
            !ground.withdraw(lock).await.expect("link runs"),
            "a message that crossed is not taken back"
        );
        // Nothing else arrives, however long the passes go on.
        tokio::time::sleep(Duration::from_secs(4 * 3600)).await;
        assert_eq!(sat_store.inbox_first().expect("store"), None);
    });
}
