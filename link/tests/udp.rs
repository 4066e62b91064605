//! Two link endpoints over real UDP sockets on loopback exchange messages both ways,
//! exactly once.

use std::time::Duration;

use satcosign_link::crypto::{Cipher, Identity};
use satcosign_link::engine::{Engine, EngineConfig};
use satcosign_link::link::LinkHandle;
use satcosign_link::store::MemStore;
use satcosign_link::transport::udp::UdpTransport;

fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

#[tokio::test]
async fn messages_cross_udp_both_ways_exactly_once() {
    let (a_addr, b_addr) = (free_udp(), free_udp());
    let cfg = EngineConfig {
        bitrate: 1_000_000,
        preamble: Duration::from_millis(5),
        latency: Duration::from_millis(1),
        ..EngineConfig::default()
    };
    let mk = |me: u8, peer: u8| {
        Cipher::new(
            &Identity::from_bytes([me; 32]),
            &Identity::from_bytes([peer; 32]).public(),
        )
    };
    let a = LinkHandle::spawn(
        Engine::new(cfg.clone(), mk(1, 2), MemStore::new(), 1.0).expect("engine"),
        UdpTransport::connect(a_addr, b_addr).await.expect("udp"),
    );
    let b = LinkHandle::spawn(
        Engine::new(cfg, mk(2, 1), MemStore::new(), 1.37).expect("engine"),
        UdpTransport::connect(b_addr, a_addr).await.expect("udp"),
    );
    let mut acknowledged = a.acknowledged();
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let first = a.send(big.clone()).await.expect("send");
    let second = a.send(b"second".to_vec()).await.expect("send");
    b.send(b"from b".to_vec()).await.expect("send");
    let mut at_b = Vec::new();
    while at_b.len() < 2 {
        let (id, m) = tokio::time::timeout(Duration::from_secs(20), b.recv())
            .await
            .expect("delivered in time")
            .expect("recv");
        b.ack(id).expect("ack");
        at_b.push(m);
    }
    assert_eq!(at_b, vec![big, b"second".to_vec()]);
    // A learns from the link itself that both reached B, each once.
    let mut acked = Vec::new();
    while acked.len() < 2 {
        acked.push(
            tokio::time::timeout(Duration::from_secs(20), acknowledged.recv())
                .await
                .expect("acknowledged in time")
                .expect("ack id"),
        );
    }
    acked.sort_unstable();
    assert_eq!(acked, vec![first, second]);
    assert!(a.is_running());
    let (id, m) = tokio::time::timeout(Duration::from_secs(20), a.recv())
        .await
        .expect("delivered in time")
        .expect("recv");
    a.ack(id).expect("ack");
    assert_eq!(m, b"from b");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.recv())
            .await
            .is_err(),
        "nothing is delivered twice"
    );
    assert!(
        acknowledged.try_recv().is_err(),
        "no acknowledgement is told twice"
    );
}
