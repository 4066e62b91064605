//! Headless Chromium driven over the DevTools protocol: open a page, evaluate in it, wait
//! for a condition, take a screenshot. The process is killed when the value is dropped.

use std::time::Duration;

use serde_json::{json, Value};

/// Drives headless Chromium over the DevTools protocol.
pub struct Browser {
    child: std::process::Child,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn launch() -> Browser {
        use std::io::BufRead as _;
        let profile = tempfile::tempdir().expect("profile");
        let mut child = std::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("chromium is installed (scripts/test installs it)");
        let stderr = child.stderr.take().expect("stderr");
        let url = std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split("DevTools listening on ").nth(1).map(str::to_owned))
            .expect("chromium prints its DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(url.trim())
            .await
            .expect("devtools");
        Browser {
            child,
            ws,
            next: 1,
            session: None,
            _profile: profile,
        }
    }

    pub async fn send(&mut self, method: &str, params: Value) -> Value {
        use futures::{SinkExt as _, StreamExt as _};
        let id = self.next;
        self.next += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                msg.to_string(),
            ))
            .await
            .expect("send");
        loop {
            let frame = self.ws.next().await.expect("open").expect("frame");
            if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    pub async fn open(&mut self, url: &str) {
        let target = self.send("Target.createTarget", json!({"url": url})).await;
        let attached = self
            .send(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        self.session = attached["sessionId"].as_str().map(str::to_owned);
    }

    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// A PNG of the page as it is drawn now.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self
            .send("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("data"))
            .expect("base64 PNG")
    }

    pub async fn wait_for(&mut self, expression: &str) -> Value {
        for _ in 0..200 {
            let v = self.eval(expression).await;
            if !v.is_null() && v != json!(false) && v != json!("") {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("page never satisfied {expression}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
