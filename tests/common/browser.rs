//! Real headless Chromium for browser tests, driven over the W3C WebDriver protocol.
//!
//! [`Driver`] starts `chromedriver --port=0` as a child process (in its own process group,
//! so every Chromium it launches goes away with it) and reads the port it picked;
//! [`Driver::session`] opens one browser per simulated person, each with its own profile
//! directory, so cookies are separate. [`Browser`] is a small WebDriver client over
//! reqwest (the handful of commands these tests use), and [`Browser::wait_js`] is the one
//! way to wait: it polls a JavaScript expression every 50 ms until it is truthy, bounded.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a wait polls by default.
pub const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";
/// The W3C WebDriver key for Enter.
pub const ENTER: &str = "\u{E007}";

/// A running chromedriver.
pub struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
    profiles: TempDir,
}

impl Driver {
    /// Starts chromedriver on a port of its choosing and waits until it serves.
    pub async fn start() -> Self {
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver is installed (apt-get install chromium chromium-driver)");
        let stdout = child.stdout.take().expect("chromedriver stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read chromedriver output") {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().parse::<u16>().expect("chromedriver port");
                }
            }
            panic!("chromedriver exited before it said which port it uses");
        })
        .await
        .expect("chromedriver started within 30 s");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().expect("http client");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http,
            profiles: tempfile::tempdir().expect("profiles dir"),
        };
        let status = format!("{}/status", driver.url);
        super::wait_for("chromedriver to be ready", Duration::from_secs(30), || {
            let request = driver.http.get(&status);
            async move {
                let status: Value = request.send().await.ok()?.json().await.ok()?;
                status["value"]["ready"].as_bool().filter(|ready| *ready)
            }
        })
        .await;
        driver
    }

    /// A new headless browser with its own profile (cookies, storage) named `name`.
    pub async fn session(&self, name: &str) -> Browser {
        let profile = self.profiles.path().join(name);
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-features=Translate,MediaRouter,OptimizationHints".into(),
            "--window-size=1280,800".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                }
            }
        });
        let reply = send(self.http.post(format!("{}/session", self.url)).json(&capabilities)).await;
        let id = reply["sessionId"].as_str().expect("a session id").to_string();
        Browser { http: self.http.clone(), base: format!("{}/session/{id}", self.url), name: name.to_string() }
    }
}

impl Drop for Driver {
    /// Kills chromedriver's process group: chromedriver and every browser it started.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
    }
}

/// One browser session.
pub struct Browser {
    http: reqwest::Client,
    /// `http://driver/session/ID`.
    base: String,
    /// Who this browser plays (for messages).
    pub name: String,
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args })).await
    }

    /// [`Self::js`], with a failure (say, the page is navigating) as an `Err`.
    async fn try_js(&self, script: &str) -> Result<Value, String> {
        let request =
            self.http.post(format!("{}/execute/sync", self.base)).json(&json!({ "script": script, "args": [] }));
        try_send(request).await
    }

    /// Polls `expression` (a JS expression) every 50 ms until it is truthy, for up to
    /// `timeout`; returns its value.
    pub async fn wait_js_for(&self, what: &str, expression: &str, timeout: Duration) -> Value {
        let script = format!("return ({expression});");
        let deadline = Instant::now() + timeout;
        loop {
            // While a form submission navigates, scripts may fail: that is "not yet".
            let value = self.try_js(&script).await;
            if let Ok(value) = &value {
                if truthy(value) {
                    return value.clone();
                }
            }
            if Instant::now() >= deadline {
                let url = self.js("return location.href", Vec::new()).await;
                let state =
                    self.js("const s = document.getElementById('conn-state'); return s && s.textContent", vec![]).await;
                let flash =
                    self.js("const f = document.getElementById('flash'); return f && f.textContent", vec![]).await;
                let text = self.js("return document.body.innerText.slice(0, 600)", vec![]).await;
                let shot = screenshot_dir().join(format!("failed-{}.png", self.name));
                self.screenshot(&shot).await;
                panic!(
                    "{}: timed out after {timeout:?} waiting for {what} (`{expression}` was {value:?}); page {url}, \
                     connection {state}, flash {flash}, screenshot {}, text: {text}",
                    self.name,
                    shot.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`Self::wait_js_for`] with the default 15 s.
    pub async fn wait_js(&self, what: &str, expression: &str) -> Value {
        self.wait_js_for(what, expression, WAIT).await
    }

    /// The element matching `css` (waits for it to exist).
    pub async fn find(&self, css: &str) -> String {
        let expression = format!("document.querySelector({})", json!(css));
        self.wait_js(&format!("an element matching {css}"), &expression).await;
        let element = self.post("/element", json!({ "using": "css selector", "value": css })).await;
        element.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("element id").to_string()
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({})).await;
    }

    /// Types `text` into the element (after clearing it); [`ENTER`] presses Enter.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/clear"), json!({})).await;
        self.post(&format!("/element/{element}/value"), json!({ "text": text })).await;
    }

    /// The text of the element matching `css` (`None` if there is none).
    pub async fn text(&self, css: &str) -> Option<String> {
        let value = self
            .js("const e = document.querySelector(arguments[0]); return e && e.textContent;", vec![json!(css)])
            .await;
        value.as_str().map(str::to_string)
    }

    pub async fn path(&self) -> String {
        self.js("return location.pathname + location.search", Vec::new()).await.as_str().unwrap_or_default().to_string()
    }

    /// Whether a JavaScript dialog (alert, confirm) is open.
    pub async fn alert_open(&self) -> bool {
        let response = self.http.get(format!("{}/alert/text", self.base)).send().await.expect("webdriver");
        response.status().is_success()
    }

    /// Emulates a viewport of `width` × `height` CSS pixels (mobile: touch, meta viewport).
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        let params = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile });
        self.post("/goog/cdp/execute", json!({ "cmd": "Emulation.setDeviceMetricsOverride", "params": params })).await;
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let value = self.get("/screenshot").await;
        let png = base64::engine::general_purpose::STANDARD.decode(value.as_str().expect("base64 png")).expect("png");
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("screenshot dir");
        std::fs::write(path, png).expect("write screenshot");
    }

    pub async fn close(self) {
        let _ = self.http.delete(&self.base).send().await;
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        send(self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }

    async fn get(&self, path: &str) -> Value {
        send(self.http.get(format!("{}{path}", self.base))).await
    }
}

/// Sends a WebDriver command; panics with the driver's error if it failed.
async fn send(request: reqwest::RequestBuilder) -> Value {
    try_send(request).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn try_send(request: reqwest::RequestBuilder) -> Result<Value, String> {
    let response = request.send().await.map_err(|e| format!("webdriver request failed: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("webdriver answered no json: {e}"))?;
    if !status.is_success() {
        return Err(format!("webdriver answered {status}: {body}"));
    }
    Ok(body.get("value").cloned().unwrap_or(Value::Null))
}

/// JavaScript truthiness of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `$CARGO_TARGET_DIR/screenshots` (or `./target/screenshots`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("screenshots")
}
