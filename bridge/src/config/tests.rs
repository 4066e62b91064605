//! The configuration's checks, key by key.

use super::*;

#[test]
fn empty_file_gives_safe_defaults() {
    let c = Config::from_toml("").expect("defaults are valid");
    let l = c.listeners().expect("default listeners parse");
    assert!(l.electrum_tcp.expect("tcp on").ip().is_loopback());
    assert!(l.http.expect("http on").ip().is_loopback());
    assert_eq!(l.electrum_tls, None);
    assert_eq!(c.electrum.max_line_bytes, 1_000_000);
}

#[test]
fn nostr_limits_are_checked_and_named() {
    let c = Config::from_toml("").expect("defaults");
    assert!(c
        .listeners()
        .expect("parse")
        .nostr
        .expect("relay on")
        .ip()
        .is_loopback());
    for (toml, key) in [
        (
            "[nostr]\nmax_event_bytes = 2000000\n",
            "nostr.max_event_bytes",
        ),
        ("[nostr]\nmax_filters = 0\n", "nostr.max_filters"),
        (
            "[nostr]\nmessages_per_minute = 0\n",
            "nostr.messages_per_minute",
        ),
        ("[nostr]\nlisten = \"nowhere\"\n", "nostr.listen"),
        ("[upstream]\npoll_secs = 0\n", "upstream.poll_secs"),
        (
            "[email]\nsmtp_host = \"mail.example.org\"\nsmtp_security = \"plain\"\n",
            "email.smtp_security",
        ),
        ("[upstream]\nconfirmations = 0\n", "upstream.confirmations"),
        (
            "[upstream]\npoll_secs = 60\nwatch_secs = 5\n",
            "upstream.watch_secs",
        ),
    ] {
        let err = Config::from_toml(toml)
            .and_then(|c| c.check().map(|_| c))
            .expect_err(toml);
        assert!(err.to_string().contains(key), "{toml}: {err}");
    }
}

#[test]
fn unknown_key_is_named() {
    let err = Config::from_toml("[mailbox]\nttl_sec = 5\n").expect_err("typo refused");
    assert!(err.to_string().contains("ttl_sec"), "{err}");
}

#[test]
fn wrong_type_is_named() {
    let err = Config::from_toml("[mailbox]\nttl_secs = \"long\"\n").expect_err("type");
    assert!(err.to_string().contains("ttl_secs"), "{err}");
}

#[test]
fn bad_values_name_their_key() {
    for (toml, key) in [
        ("[mailbox]\nttl_secs = 0\n", "mailbox.ttl_secs"),
        (
            "[mailbox]\nput_bytes_per_minute_per_peer = 1000\n",
            "mailbox.put_bytes_per_minute_per_peer",
        ),
        (
            "[limits]\nread_bytes_per_second_per_peer = 10\n",
            "limits.read_bytes_per_second_per_peer",
        ),
        (
            "[limits]\nread_burst_bytes_per_peer = 100000\n",
            "limits.read_burst_bytes_per_peer",
        ),
        ("[electrum]\ntcp = \"localhost\"\n", "electrum.tcp"),
        ("[electrum]\ntls = \"127.0.0.1:1\"\n", "electrum.tls"),
        (
            "[electrum]\nmax_line_bytes = 10\n",
            "electrum.max_line_bytes",
        ),
        ("network = \"mars\"\n", "network"),
        (
            "[electrum]\ntcp = \"\"\n[http]\nlisten = \"\"\n",
            "electrum.tcp",
        ),
    ] {
        let err = Config::from_toml(toml).expect_err(toml);
        assert!(err.to_string().contains(key), "{toml}: {err}");
    }
}

#[test]
fn station_radios_are_checked_and_named() {
    let tle = "tle = [\"1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927\", \"2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537\"]";
    let with = |stations: &str| format!("[satellite.orbit]\n{tle}\n{stations}");
    let a =
        "[[satellite.orbit.stations]]\nname = \"a\"\nlatitude_deg = 45.0\nlongitude_deg = 7.0\n";
    let b =
        "[[satellite.orbit.stations]]\nname = \"b\"\nlatitude_deg = -31.0\nlongitude_deg = 115.0\n";
    let udp = "transport = \"udp\"\nudp_bind = \"127.0.0.1:9801\"\nudp_peer = \"127.0.0.1:9802\"\n";
    let kiss = "transport = \"kiss-tcp\"\nkiss_tcp = \"127.0.0.1:8001\"\n";
    let serial =
        "transport = \"kiss-serial\"\nkiss_serial = \"/dev/ttyUSB0\"\nserial_baud = 1200\n";
    for ok in [
        with(&format!("{a}{b}")),
        with(&format!("{a}{udp}{b}{kiss}")),
        with(&format!("{a}{serial}{b}{udp}")),
    ] {
        Config::from_toml(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, says) in [
        (with(&format!("{a}{udp}{b}")), "every station"),
        (with(&format!("{a}transport = \"udp\"\nudp_bind = \"127.0.0.1:1\"\n{b}{udp}")), "udp_peer"),
        (with(&format!("{a}transport = \"kiss-tcp\"\nkiss_tcp = \"nowhere\"\n{b}{udp}")), "host:port"),
        (with(&format!("{a}transport = \"kiss-tcp\"\nkiss_tcp = \"h:1\"\nudp_bind = \"127.0.0.1:1\"\n{b}{udp}")), "`udp_bind` does not belong"),
        (with(&format!("{a}transport = \"ham\"\n{b}{udp}")), "not one of"),
        (with(&format!("{a}transport = \"kiss-serial\"\nkiss_serial = \"/dev/x\"\nserial_baud = 5\n{b}{udp}")), "serial_baud"),
    ] {
        let err = Config::from_toml(&bad).expect_err(&bad);
        let text = err.to_string();
        assert!(
            text.contains("satellite.orbit.stations") && text.contains(says),
            "{bad}: {text}"
        );
    }
}

#[test]
fn the_element_set_is_two_lines_or_an_omm_never_both() {
    let tle = "tle = [\"1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927\", \"2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537\"]";
    let omm = "omm = '{\"EPOCH\":\"2008-09-20T12:25:40.104192\",\"MEAN_MOTION\":15.72125391,\"ECCENTRICITY\":0.0006703,\"INCLINATION\":51.6416,\"RA_OF_ASC_NODE\":247.4627,\"ARG_OF_PERICENTER\":130.536,\"MEAN_ANOMALY\":325.0288,\"EPHEMERIS_TYPE\":0,\"CLASSIFICATION_TYPE\":\"U\",\"NORAD_CAT_ID\":25544,\"ELEMENT_SET_NO\":292,\"REV_AT_EPOCH\":56353,\"BSTAR\":-1.1606e-5,\"MEAN_MOTION_DOT\":-2.182e-5,\"MEAN_MOTION_DDOT\":0}'";
    let station =
        "[[satellite.orbit.stations]]\nname = \"a\"\nlatitude_deg = 45.0\nlongitude_deg = 7.0\n";
    let with = |elements: &str| format!("[satellite.orbit]\n{elements}\n{station}");
    Config::from_toml(&with(omm)).expect("an OMM");
    Config::from_toml(&with(tle)).expect("two lines");
    for (bad, key) in [
        (with(&format!("{tle}\n{omm}")), "satellite.orbit.omm"),
        (with("omm = '{\"EPOCH\": 1}'"), "satellite.orbit.omm"),
        (with("tle = [\"1 x\"]"), "satellite.orbit.tle"),
    ] {
        let err = Config::from_toml(&bad).expect_err(&bad);
        assert!(err.to_string().contains(key), "{bad}: {err}");
    }
}

#[test]
fn genesis_hashes_are_the_real_ones() {
    assert_eq!(
        Network::Bitcoin.genesis_hash(),
        "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
    );
    assert_eq!(
        Network::Testnet.genesis_hash(),
        "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943"
    );
}

#[test]
fn the_store_section_is_checked_and_never_echoes_a_password() {
    let err = |text: &str| Config::from_toml(text).expect_err(text).to_string();
    let e = err("[store]\nbackend = \"postgres\"\n");
    assert!(e.contains("store.url") && e.contains("needs"), "{e}");
    let e = err("[store]\nurl = \"host=db\"\n");
    assert!(e.contains("store.url") && e.contains("only for"), "{e}");
    let e = err("[store]\nbackend = \"mysql\"\n");
    assert!(e.contains("backend"), "{e}");
    let e = err("[store]\nbackend = \"postgres\"\nurl = \"host=db\"\npool_size = 0\n");
    assert!(e.contains("store.pool_size"), "{e}");
    let e = err("[store]\nbackend = \"postgres\"\nurl = \"postgres://u:s3cret@db:notaport/x\"\n");
    assert!(e.contains("store.url"), "{e}");
    assert!(!e.contains("s3cret"), "the password is not echoed: {e}");
    let e = err("[store]\nbackend = \"postgres\"\nurl = \"dbname=x\"\n");
    assert!(e.contains("no host"), "{e}");
    let e = err("[store]\nlease = 3\n");
    assert!(e.contains("lease"), "{e}");
    let e = err("[store]\nbackend = \"postgres\"\nurl = \"host=db\"\nlease_secs = 1\n");
    assert!(
        e.contains("store.lease_secs") && e.contains("2..=300"),
        "{e}"
    );
    let ok = Config::from_toml(
        "[store]\nbackend = \"postgres\"\nurl = \"host=/run/postgresql dbname=s\"\n",
    )
    .expect("valid");
    assert_eq!(ok.store.backend, crate::config::Backend::Postgres);
    assert_eq!(ok.store.pool_size, 16);
    assert_eq!(ok.store.lease_secs, 10);
    let shared =
        Config::from_toml("[mailbox]\nkey_file = \"/etc/satcosign/mailbox.key\"\n").expect("valid");
    assert_eq!(
        shared.mailbox.key_file.as_deref(),
        Some(std::path::Path::new("/etc/satcosign/mailbox.key"))
    );
}
