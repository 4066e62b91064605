//! `[satellite.orbit]`: the bridge predicts the satellite's passes over its ground stations
//! from the element set, tells the link (its next pass is the earliest station's), shows
//! every station's next passes in `satellite.info`, and reports old elements as stale in
//! `satellite.info` and `/health`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonrpsee::core::client::ClientT as _;
use jsonrpsee::http_client::HttpClientBuilder;
use jsonrpsee::rpc_params;
use serde_json::Value;

use satcosign_bridge::config::{Config, Network};
use satcosign_bridge::passes::{OrbitConfig, StationConfig};
use satcosign_bridge::SatelliteLink;
use satcosign_link::crypto::Identity;
use satcosign_link::transport::sim::{SimChannel, SimConfig};

/// ISS (ZARYA) elements of 2008, with their epoch moved to `days_ago` days before now (the
/// orbit's shape is what matters here), checksums recomputed.
fn elements(days_ago: u64) -> Vec<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - days_ago * 86_400;
    let (mut year, mut day) = (1970u64, now / 86_400);
    loop {
        let len = if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) {
            366
        } else {
            365
        };
        if day < len {
            break;
        }
        day -= len;
        year += 1;
    }
    let fraction = (now % 86_400) as f64 / 86_400.0;
    let epoch = format!(
        "{:02}{:03}.{:08}",
        year % 100,
        day + 1,
        (fraction * 1e8) as u64
    );
    let line1 = format!("1 25544U 98067A   {epoch} -.00002182  00000-0 -11606-4 0  292");
    let line2 = "2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.7212539156353".to_owned();
    [line1, line2]
        .into_iter()
        .map(|l| {
            let sum: u32 = l
                .chars()
                .map(|c| match c {
                    '-' => 1,
                    c => c.to_digit(10).unwrap_or(0),
                })
                .sum();
            format!("{l}{}", sum % 10)
        })
        .collect()
}

fn orbit(days_ago: u64) -> OrbitConfig {
    let station = |name: &str, lat: f64, lon: f64| StationConfig {
        name: name.into(),
        latitude_deg: lat,
        longitude_deg: lon,
        altitude_m: 100.0,
        min_elevation_deg: 10.0,
        ..StationConfig::default()
    };
    OrbitConfig {
        tle: elements(days_ago),
        stations: vec![
            station("turin", 45.07, 7.69),
            station("perth", -31.95, 115.86),
        ],
        ..OrbitConfig::default()
    }
}

async fn start(orbit: OrbitConfig) -> (satcosign_bridge::RunningBridge, tempfile::TempDir) {
    start_with_status_page(orbit, None).await
}

async fn start_with_status_page(
    orbit: OrbitConfig,
    status_page: Option<bool>,
) -> (satcosign_bridge::RunningBridge, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bridge = start_in(&dir.path().join("data"), orbit, status_page).await;
    (bridge, dir)
}

/// A bridge on data folder `data` whose passes come from `orbit`, with nobody on the other
/// side of its channel (this is about the schedule).
async fn start_in(
    data: &std::path::Path,
    orbit: OrbitConfig,
    status_page: Option<bool>,
) -> satcosign_bridge::RunningBridge {
    let mut config = Config {
        data_dir: data.to_owned(),
        network: Network::Regtest,
        ..Config::default()
    };
    config.electrum.tcp = String::new();
    config.nostr.listen = String::new();
    config.http.listen = "127.0.0.1:0".into();
    config.http.status_page = status_page;
    config.satellite.account_key =
        satcosign_cosigner::keys::CosignerKey::from_seed(&[7; 32], bitcoin::NetworkKind::Test)
            .expect("key")
            .descriptor_key();
    config.satellite.orbit = orbit;
    let channel = SimChannel::new(SimConfig::default());
    let link = SatelliteLink::new(
        channel.attach(0),
        Identity::from_bytes([1; 32]),
        Identity::from_bytes([2; 32]).public(),
    );
    satcosign_bridge::start_with(&config, Some(link))
        .await
        .expect("bridge starts")
}

async fn info_when(
    bridge: &satcosign_bridge::RunningBridge,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("http://{}", bridge.http.expect("http"));
    let client = HttpClientBuilder::default().build(url).expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info: Value = client
            .request("satellite.info", rpc_params![])
            .await
            .expect("satellite.info");
        common::contract().check_result("satellite.info", &info);
        if done(&info) {
            return info;
        }
        assert!(std::time::Instant::now() < deadline, "never: {info}");
        // Polling a condition with a deadline, not a sleep standing in for one.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_come_from_the_elements_for_every_station_and_drive_the_link() {
    let (bridge, _dir) = start(orbit(1)).await;
    let info = info_when(&bridge, |i| {
        i["orbit"]["stations"].as_array().is_some_and(|s| {
            s.iter()
                .all(|s| !s["next_passes"].as_array().expect("list").is_empty())
        })
    })
    .await;
    let orbit = &info["orbit"];
    assert_eq!(orbit["elements_stale"], false, "{info}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut earliest = u64::MAX;
    for station in orbit["stations"].as_array().expect("stations") {
        for p in station["next_passes"].as_array().expect("passes") {
            let (start, top, end) = (
                p["start"].as_u64().expect("start"),
                p["culmination"].as_u64().expect("top"),
                p["end"].as_u64().expect("end"),
            );
            assert!(start <= top && top <= end && end > now, "{p}");
            assert!(
                end - start <= 15 * 60,
                "a low orbit's pass lasts minutes: {p}"
            );
            assert!(p["max_elevation_deg"].as_f64().expect("el") >= 10.0, "{p}");
            if start > now {
                earliest = earliest.min(start);
            }
        }
    }
    // The link transmits only in those windows: its next pass is the earliest of them.
    let link_next = info["next_pass"]["start"].as_u64();
    let in_view = info["link"]["in_view"].as_bool().expect("in_view");
    assert!(
        in_view || link_next == Some(earliest),
        "link's next pass {link_next:?}, earliest station pass {earliest}: {info}"
    );
    assert_eq!(info["link"]["passes_known"], true, "{info}");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_elements_are_reported_stale_in_satellite_info_and_health() {
    let (bridge, _dir) = start(orbit(30)).await;
    let info = info_when(&bridge, |i| i["orbit"].is_object()).await;
    assert_eq!(info["orbit"]["elements_stale"], true, "{info}");
    assert!(info["orbit"]["elements_age_secs"].as_u64().expect("age") >= 29 * 86_400);
    let (status, text) = common::flow::http_raw(
        bridge.http.expect("http"),
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let body: Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).expect("body")).expect("json");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["orbit"]["state"], "stale", "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    let (_, metrics) = common::flow::http_raw(
        bridge.http.expect("http"),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        metrics.contains("satcosign_orbit_elements_stale 1"),
        "{metrics}"
    );
    let age: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("satcosign_orbit_elements_age_seconds "))
        .expect("age gauge")
        .trim()
        .parse()
        .expect("seconds");
    assert!(age >= 29 * 86_400, "{age}");
    bridge.stop().await;

    // A configuration with stations and no elements, or one line, is refused by name.
    let mut bad = orbit(1);
    bad.tle.pop();
    let e = bad.check().expect_err("one line");
    assert!(e.to_string().contains("satellite.orbit.tle"), "{e}");
    let mut bad = orbit(1);
    bad.stations[1].name = "turin".into();
    let e = bad.check().expect_err("two stations named alike");
    assert!(e.to_string().contains("turin"), "{e}");
}

/// A confirmed request waiting for a pass tells its owner when: `request.status` carries
/// the start of the link's next pass, and the confirmation page says it in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_pass_shows_when_the_next_one_starts() {
    use common::flow::{test_wallet, Flow};
    use serde_json::json;
    // The satellite comes into view in 20 minutes, for one minute an hour.
    let sky = satcosign_bridge::dev::Sky {
        pass_up: Duration::from_secs(60),
        pass_period: Duration::from_secs(3600),
        first_pass_in: Duration::from_secs(1200),
        ..satcosign_bridge::dev::Sky::default()
    };
    let flow = Flow::start(sky, |_| {}).await;
    let w = test_wallet(&flow).await;
    let r = flow
        .ok(
            "wallet.register",
            vec![json!(w.descriptor), json!("alice@example.org"), json!("A")],
        )
        .await;
    let id = r["request_id"].as_str().expect("id").to_owned();
    let before = flow.status(&id).await;
    assert!(before["expected"].is_null(), "not confirmed yet: {before}");
    let code = flow.inbox.code(&id).await;
    // The email says when a confirmation would reach the satellite.
    let mail = flow.inbox.to("alice@example.org").pop().expect("the email");
    assert!(
        mail.contains("Once confirmed, it goes to the satellite: next pass at"),
        "{mail}"
    );
    assert!(mail.contains("in about 2"), "about twenty minutes: {mail}");
    // Confirmed on the page, as the owner would.
    let form = format!("t={code}&action=confirm");
    let (status, page) = common::flow::http_raw(
        flow.http_addr(),
        &format!(
            "POST /confirm/{id} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("next pass at"), "{page}");
    assert!(page.contains("in about 2"), "about twenty minutes: {page}");
    let queued = flow.wait_state(&id, "queued", 30).await;
    let expected = &queued["expected"];
    let info = flow.ok("satellite.info", vec![]).await;
    assert_eq!(
        expected["at"], info["next_pass"]["start"],
        "{queued} {info}"
    );
    assert_eq!(expected["in_view"], false);
    let in_secs = expected["in_secs"].as_u64().expect("in_secs");
    assert!((1000..=1200).contains(&in_secs), "{expected}");
    common::contract().check_result("request.status", &queued);
    flow.system.stop().await;
}

/// The operator's page, in Chromium: a row per station with its passes of the next day
/// drawn in SVG, the link's counters and the requests by state; its screenshot is a real
/// picture. A listener configured without it does not serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_draws_each_stations_passes_in_chromium() {
    let (bridge, dir) = start(orbit(1)).await;
    // Predicted before the page is drawn.
    info_when(&bridge, |i| {
        i["orbit"]["stations"].as_array().is_some_and(|s| {
            s.iter()
                .all(|s| !s["next_passes"].as_array().expect("list").is_empty())
        })
    })
    .await;
    let mut browser = common::browser::Browser::launch().await;
    browser
        .open(&format!("http://{}/status", bridge.http.expect("http")))
        .await;
    // The page is whole once its last table is there.
    browser
        .wait_for("!!document.querySelector('#requests')")
        .await;
    let passes = browser
        .eval("document.querySelectorAll('#timeline rect.pass').length")
        .await;
    assert!(passes.as_u64().expect("count") >= 4, "{passes}");
    let names = browser
        .eval("[...document.querySelectorAll('#timeline text.station')].map(t => t.textContent).join(',')")
        .await;
    assert_eq!(names, "turin,perth");
    // Every pass is drawn inside the timeline, after the names.
    let inside = browser
        .eval(
            "[...document.querySelectorAll('#timeline rect.pass')]\
             .every(r => r.x.baseVal.value >= 120 && r.x.baseVal.value <= 960)",
        )
        .await;
    assert_eq!(inside, true);
    let link = browser
        .eval("document.querySelector('#link').innerText")
        .await;
    assert!(
        link.as_str().is_some_and(|t| t.contains("frames sent")),
        "{link}"
    );
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 5_000,
        "a drawn page, not a blank one: {} bytes",
        png.len()
    );
    std::fs::write(dir.path().join("status.png"), &png).expect("saved");
    drop(browser);
    bridge.stop().await;

    // Off: not served.
    let (bridge, _dir) = start_with_status_page(orbit(1), Some(false)).await;
    let (status, _) = common::flow::http_raw(
        bridge.http.expect("http"),
        "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(status, 200);
    bridge.stop().await;
}

/// The operator loads fresh elements with `satellite.set_elements` and the token: only
/// with the token, only newer ones, and they stay in use after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_loads_fresher_elements_with_the_token_and_they_outlive_a_restart() {
    use satcosign_bridge::rpc_error::{INVALID_PARAMS, NOT_OPERATOR, WRONG_STATE};
    let secrets = tempfile::tempdir().expect("tempdir");
    let token_file = secrets.path().join("operator.token");
    std::fs::write(&token_file, "correct horse battery staple\n").expect("token");
    let mut stale = orbit(30);
    stale.operator_token_file = Some(token_file.clone());
    let (bridge, dir) = start(stale.clone()).await;
    let url = format!("http://{}", bridge.http.expect("http"));
    let client = HttpClientBuilder::default().build(&url).expect("client");
    let fresh = elements(1);
    let call = |l1: String, l2: String, token: &'static str| {
        let client = &client;
        async move {
            client
                .request::<Value, _>("satellite.set_elements", rpc_params![l1, l2, token])
                .await
        }
    };
    let code = |r: Result<Value, jsonrpsee::core::ClientError>| match r {
        Err(jsonrpsee::core::ClientError::Call(e)) => e.code(),
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(
        code(call(fresh[0].clone(), fresh[1].clone(), "wrong token here!").await),
        NOT_OPERATOR
    );
    assert_eq!(
        code(
            call(
                "1 garbage".into(),
                fresh[1].clone(),
                "correct horse battery staple"
            )
            .await
        ),
        INVALID_PARAMS
    );
    let older = elements(60);
    assert_eq!(
        code(
            call(
                older[0].clone(),
                older[1].clone(),
                "correct horse battery staple"
            )
            .await
        ),
        WRONG_STATE
    );
    let done = call(
        fresh[0].clone(),
        fresh[1].clone(),
        "correct horse battery staple",
    )
    .await
    .expect("loaded");
    common::contract().check_result("satellite.set_elements", &done);
    assert!(
        done["elements_age_secs"].as_u64().expect("age") < 2 * 86_400,
        "{done}"
    );
    let info = info_when(&bridge, |i| i["orbit"]["elements_stale"] == false).await;
    assert!(info["orbit"]["elements_age_secs"].as_u64().expect("age") < 2 * 86_400);
    bridge.stop().await;

    // Restarted on the same data with the configuration's old elements: the loaded ones
    // are still the ones in use.
    let bridge = start_in(&dir.path().join("data"), stale.clone(), None).await;
    let info = info_when(&bridge, |i| i["orbit"].is_object()).await;
    assert_eq!(info["orbit"]["elements_stale"], false, "{info}");

    // Fresher still, as an OMM in JSON (CelesTrak's FORMAT=json): loaded, and kept as given.
    let url = format!("http://{}", bridge.http.expect("http"));
    let client = HttpClientBuilder::default().build(&url).expect("client");
    let (omm, epoch) = omm(6);
    let token = "correct horse battery staple";
    let refused = client
        .request::<Value, _>("satellite.set_omm", rpc_params![fresh[0].clone(), token])
        .await;
    assert!(
        matches!(&refused, Err(jsonrpsee::core::ClientError::Call(e)) if e.code() == INVALID_PARAMS && e.message().contains("omm")),
        "{refused:?}"
    );
    let done: Value = client
        .request("satellite.set_omm", rpc_params![omm, token])
        .await
        .expect("loaded");
    common::contract().check_result("satellite.set_omm", &done);
    assert_eq!(done["elements_epoch"], epoch, "{done}");
    bridge.stop().await;
    let bridge = start_in(&dir.path().join("data"), stale, None).await;
    let info = info_when(&bridge, |i| i["orbit"].is_object()).await;
    assert_eq!(info["orbit"]["elements_epoch"], epoch, "{info}");
    bridge.stop().await;
}

/// The ISS elements of [`elements`] as an OMM in JSON, its epoch `hours_ago` hours before
/// now (whole seconds); returns it with that epoch in unix seconds.
fn omm(hours_ago: u64) -> (String, u64) {
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - hours_ago * 3600;
    let (year, month, day, hour, minute, second) = satcosign_bridge::notice::civil(epoch);
    let omm = format!(
        r#"[{{"OBJECT_NAME":"ISS (ZARYA)","OBJECT_ID":"1998-067A","EPOCH":"{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}","MEAN_MOTION":15.72125391,"ECCENTRICITY":0.0006703,"INCLINATION":51.6416,"RA_OF_ASC_NODE":247.4627,"ARG_OF_PERICENTER":130.536,"MEAN_ANOMALY":325.0288,"EPHEMERIS_TYPE":0,"CLASSIFICATION_TYPE":"U","NORAD_CAT_ID":25544,"ELEMENT_SET_NO":292,"REV_AT_EPOCH":56353,"BSTAR":-1.1606e-5,"MEAN_MOTION_DOT":-2.182e-5,"MEAN_MOTION_DDOT":0}}]"#,
    );
    (omm, epoch)
}

/// Where the satellite is over the ground at `t` (spherical Earth: enough to put a station
/// right under it).
fn sub_point(orbit: &satcosign_link::orbit::Orbit, t: SystemTime) -> (f64, f64) {
    let [x, y, z] = orbit.earth_fixed_at(t).expect("position");
    let r = (x * x + y * y + z * z).sqrt();
    ((z / r).asin().to_degrees(), y.atan2(x).to_degrees())
}

/// Two ground stations, each with its own radio (a KISS TNC over TCP, and UDP): the link
/// sends through the one that has the satellite in view (the TNC's station, right under it
/// now) and not through the other (under the satellite's track only later);
/// `satellite.info` and `/metrics` show each station's transport and counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_sends_through_the_station_that_has_the_satellite_in_view() {
    use satcosign_link::transport::kiss::{Callsign, KissTransport};
    use satcosign_link::transport::stations::GroundStations;
    use satcosign_link::transport::udp::UdpTransport;
    use satcosign_link::transport::Transport as _;

    let tle = elements(1);
    let elements = satcosign_link::orbit::Orbit::from_tle(&tle[0], &tle[1]).expect("elements");
    let now = SystemTime::now();
    let (here_lat, here_lon) = sub_point(&elements, now + Duration::from_secs(60));
    // A quarter of an orbit later the satellite is thousands of kilometres away.
    let (later_lat, later_lon) = sub_point(&elements, now + Duration::from_secs(25 * 60));
    let free = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .expect("udp")
            .local_addr()
            .expect("addr")
    };
    let (later_ground, later_sky) = (free(), free());
    // The overhead station's TNC: a KISS port over TCP, as Dire Wolf's 8001.
    let tnc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("tnc");
    let overhead = StationConfig {
        name: "overhead".into(),
        latitude_deg: here_lat,
        longitude_deg: here_lon,
        min_elevation_deg: 5.0,
        transport: Some("kiss-tcp".into()),
        kiss_tcp: Some(tnc.local_addr().expect("addr").to_string()),
        ..StationConfig::default()
    };
    let downtrack = StationConfig {
        name: "downtrack".into(),
        latitude_deg: later_lat,
        longitude_deg: later_lon,
        min_elevation_deg: 5.0,
        transport: Some("udp".into()),
        udp_bind: Some(later_ground.to_string()),
        udp_peer: Some(later_sky.to_string()),
        ..StationConfig::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = radio_config(&dir);
    config.satellite.orbit = OrbitConfig {
        tle,
        stations: vec![overhead, downtrack],
        ..OrbitConfig::default()
    };
    let bridge = satcosign_bridge::start(&config)
        .await
        .expect("bridge starts");
    // The satellite's side of both stations' radios: what each station puts on the air.
    let (tnc_side, _) = tnc.accept().await.expect("the bridge connects to the TNC");
    let (read, write) = tnc_side.into_split();
    let mut sky = GroundStations::new();
    sky.add(
        "overhead",
        "kiss-tcp",
        KissTransport::new(
            read,
            write,
            Callsign::new("SAT", 0).expect("call"),
            Callsign::new("GROUND", 0).expect("call"),
        ),
    );
    sky.add(
        "downtrack",
        "udp",
        UdpTransport::connect(later_sky, later_ground)
            .await
            .expect("udp"),
    );
    let heard = sky.view();
    // The link's pass begins with a beacon; it reaches the satellite over one station.
    tokio::time::timeout(Duration::from_secs(30), sky.recv())
        .await
        .expect("the link calls the satellite within its pass")
        .expect("a frame");
    let info = info_when(&bridge, |i| {
        i["orbit"]["stations"][0]["radio"]["frames_sent"]
            .as_u64()
            .is_some_and(|n| n > 0)
    })
    .await;
    let stations = info["orbit"]["stations"].as_array().expect("stations");
    assert_eq!(stations[0]["radio"]["transport"], "kiss-tcp", "{info}");
    assert_eq!(stations[1]["radio"]["transport"], "udp", "{info}");
    assert_eq!(stations[0]["radio"]["carrying"], true, "{info}");
    assert_eq!(stations[0]["radio"]["up"], true, "{info}");
    assert_eq!(
        stations[1]["radio"]["frames_sent"], 0,
        "nothing goes through a station without the satellite in view: {info}"
    );
    let by_station = heard.stats();
    assert!(
        by_station[0].frames_heard > 0 && by_station[1].frames_heard == 0,
        "{by_station:?}"
    );
    let (_, metrics) = common::flow::http_raw(
        bridge.http.expect("http"),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let sent = |station: &str, transport: &str| -> u64 {
        let prefix = format!(
            "satcosign_station_frames_sent_total{{station=\"{station}\",transport=\"{transport}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
            .parse()
            .expect("a count")
    };
    assert!(sent("overhead", "kiss-tcp") > 0, "{metrics}");
    assert_eq!(sent("downtrack", "udp"), 0, "{metrics}");
    assert!(
        metrics
            .contains("satcosign_station_carrying{station=\"overhead\",transport=\"kiss-tcp\"} 1"),
        "{metrics}"
    );
    bridge.stop().await;
}

/// A station's TNC that is down when the bridge starts, or restarts later, is connected
/// again by itself; `satellite.info` says whether it is up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stations_tnc_down_at_start_or_restarted_is_connected_again() {
    let tle = elements(1);
    // A port where no TNC listens yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr");
    let later = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("udp")
        .local_addr()
        .expect("addr");
    let peer = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("udp")
        .local_addr()
        .expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = radio_config(&dir);
    config.satellite.orbit = OrbitConfig {
        tle,
        stations: vec![
            StationConfig {
                name: "turin".into(),
                latitude_deg: 45.07,
                longitude_deg: 7.69,
                transport: Some("kiss-tcp".into()),
                kiss_tcp: Some(port.to_string()),
                ..StationConfig::default()
            },
            StationConfig {
                name: "perth".into(),
                latitude_deg: -31.95,
                longitude_deg: 115.86,
                transport: Some("udp".into()),
                udp_bind: Some(later.to_string()),
                udp_peer: Some(peer.to_string()),
                ..StationConfig::default()
            },
        ],
        ..OrbitConfig::default()
    };
    let bridge = satcosign_bridge::start(&config)
        .await
        .expect("the bridge starts without the TNC");
    let up = |want: bool| move |i: &Value| i["orbit"]["stations"][0]["radio"]["up"] == want;
    info_when(&bridge, up(false)).await;
    // /health says the bridge is degraded and names the station.
    let (status, body) = common::flow::http_raw(
        bridge.http.expect("http"),
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"degraded\"") && body.contains("\"stations_down\":[\"turin\"]"),
        "{body}"
    );
    for round in 0..2 {
        // The TNC (re)starts: the station connects to it within its retry time.
        let tnc = tokio::net::TcpListener::bind(port).await.expect("tnc");
        let (connection, _) = tokio::time::timeout(Duration::from_secs(20), tnc.accept())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the station connects"))
            .expect("accepted");
        info_when(&bridge, up(true)).await;
        // And goes away again.
        drop(connection);
        drop(tnc);
        info_when(&bridge, up(false)).await;
    }
    bridge.stop().await;
}

/// A bridge's configuration for `satcosign_bridge::start` (its link from `[satellite]`),
/// with the test satellite's keys and only the HTTP listener; the orbit is the caller's.
fn radio_config(dir: &tempfile::TempDir) -> Config {
    let mut config = Config {
        data_dir: dir.path().join("data"),
        network: Network::Regtest,
        ..Config::default()
    };
    config.electrum.tcp = String::new();
    config.nostr.listen = String::new();
    config.http.listen = "127.0.0.1:0".into();
    config.satellite.account_key =
        satcosign_cosigner::keys::CosignerKey::from_seed(&[7; 32], bitcoin::NetworkKind::Test)
            .expect("key")
            .descriptor_key();
    config.satellite.link_public_key = hex::encode(Identity::from_bytes([2; 32]).public());
    config
}
