//! Real headless Chromium for browser tests, driven with the `thirtyfour` WebDriver crate.
//!
//! This module owns only what the crate does not: [`Driver`] starts `chromedriver` as a
//! child process (in its own process group, so every Chromium it launches goes away with
//! it) on a port it picks itself (`--port=0`; the port is read from its banner, so there
//! is no window in which another process could take a port we chose; it is started again
//! when its IPv6 half collides, see [`Driver::start`]); [`Driver::session`] opens one
//! browser per simulated person, each with its own profile directory (separate cookies
//! and storage) and a window size. [`Browser`] derefs to `thirtyfour::WebDriver` and adds
//! the few conveniences these tests share: bounded waiting on a JavaScript condition
//! ([`Browser::wait_js`], the one way to wait), viewport emulation, and screenshots to
//! files.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use thirtyfour::common::capabilities::chromium::ChromiumLikeCapabilities;
use thirtyfour::{By, DesiredCapabilities, Key, WebDriver, WebElement};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a wait polls by default.
pub const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";
/// How many times [`Driver::start`] starts chromedriver when its port collides.
const START_ATTEMPTS: usize = 5;
/// A desktop window, in CSS pixels.
pub const DESKTOP: (u32, u32) = (1280, 800);

/// The key that ends a line typed with [`Browser::type_into`].
pub fn enter() -> char {
    Key::Enter.value()
}

/// Shift+Enter as typed by [`Browser::type_into`] (Shift is released after it).
pub fn shift_enter() -> String {
    [Key::Shift.value(), Key::Enter.value(), Key::Null.value()].iter().collect()
}

/// A running chromedriver.
pub struct Driver {
    child: Child,
    url: String,
    profiles: TempDir,
}

impl Driver {
    /// Starts chromedriver on a port of its choosing and waits until it says which.
    ///
    /// With `--port=0` chromedriver binds an IPv4 port the kernel picks and then wants the
    /// same port on IPv6 (`::1`); when another socket holds that one it prints "IPv6 port
    /// not available. Exiting..." and exits with 1. (Reproduced here: holding `[::1]:P`
    /// and starting `chromedriver --port=P`; and with `--port=0` in a network namespace
    /// whose two ephemeral ports were both held on `::1`.) That is a collision of
    /// chromedriver's own choosing, so it is started again, up to [`START_ATTEMPTS`] times; any other exit
    /// fails the test with what chromedriver printed.
    pub async fn start() -> Self {
        let mut last_exit = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start().await {
                Ok(driver) => return driver,
                Err(printed) if printed.contains("port not available") => {
                    eprintln!("chromedriver's port collided, starting it again: {printed}");
                    last_exit = printed;
                }
                Err(printed) => panic!("chromedriver exited before it said which port it uses: {printed}"),
            }
        }
        panic!("chromedriver found no free port in {START_ATTEMPTS} starts; the last said: {last_exit}");
    }

    /// One start of chromedriver: the driver, or how it exited and what it printed.
    async fn try_start() -> Result<Self, String> {
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver is installed (apt-get install chromium chromium-driver)");
        let mut lines = BufReader::new(child.stdout.take().expect("chromedriver stdout")).lines();
        let mut stderr = child.stderr.take().expect("chromedriver stderr");
        // Keep reading stderr so chromedriver never blocks on a full pipe.
        let printed = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        // Its stdout carries the banner, or the reason it gives up ("IPv6 port not
        // available. Exiting..."); stderr carries the failed bind.
        let mut stdout_seen = String::new();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read chromedriver output") {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return Some(rest.trim_end_matches('.').trim().parse::<u16>().expect("chromedriver port"));
                }
                stdout_seen.push_str(&line);
                stdout_seen.push('\n');
            }
            None
        })
        .await
        .expect("chromedriver started within 30 s");
        let Some(port) = port else {
            let status = child.wait().await;
            let stderr_seen = printed.await.unwrap_or_default();
            return Err(format!("{status:?}\n{stdout_seen}{stderr_seen}"));
        };
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profiles: tempfile::tempdir().expect("profiles dir"),
        })
    }

    /// A new headless browser named `name`, with its own profile and a `width` × `height`
    /// window.
    pub async fn session(&self, name: &str, (width, height): (u32, u32)) -> Browser {
        let profile = self.profiles.path().join(name);
        let mut capabilities = DesiredCapabilities::chrome();
        capabilities.set_binary(CHROMIUM).expect("binary capability");
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
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        for arg in &args {
            capabilities.add_arg(arg).expect("chromium argument");
        }
        let driver = WebDriver::builder(&self.url, capabilities)
            .request_timeout(Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{name}: no browser session: {e}"));
        Browser { driver, name: name.to_string() }
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

/// One browser session, playing one person.
pub struct Browser {
    pub driver: WebDriver,
    /// Who this browser plays (for failure messages and screenshot names).
    pub name: String,
}

impl Deref for Browser {
    type Target = WebDriver;

    fn deref(&self) -> &WebDriver {
        &self.driver
    }
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        self.driver.goto(url).await.unwrap_or_else(|e| panic!("{}: cannot open {url}: {e}", self.name));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.try_js(script, args).await.unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    async fn try_js(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        let script = script.to_string();
        match self.driver.execute(script, args).await {
            Ok(value) => Ok(value.json().clone()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Polls `expression` (a JS expression) every 50 ms until it is truthy, for up to
    /// `timeout`; returns its value. On timeout, panics with the page's state and a
    /// screenshot (`failed-NAME.png`).
    pub async fn wait_js_for(&self, what: &str, expression: &str, timeout: Duration) -> Value {
        let script = format!("return ({expression});");
        let deadline = Instant::now() + timeout;
        loop {
            // While a form submission navigates, scripts may fail: that is "not yet".
            let value = self.try_js(&script, Vec::new()).await;
            if let Ok(value) = &value {
                if truthy(value) {
                    return value.clone();
                }
            }
            if Instant::now() >= deadline {
                let state = self
                    .js(
                        "const text = id => { const e = document.getElementById(id); return e && e.textContent; }; \
                         return [location.href, text('conn-state'), text('flash'), document.body.innerText.slice(0, 600)];",
                        Vec::new(),
                    )
                    .await;
                let shot = screenshot_dir().join(format!("failed-{}.png", self.name));
                self.screenshot(&shot).await;
                panic!(
                    "{}: timed out after {timeout:?} waiting for {what} (`{expression}` was {value:?}); \
                     [page, connection, flash, text] = {state}; screenshot {}",
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

    /// The element matching `css`, once it exists.
    pub async fn find(&self, css: &str) -> WebElement {
        self.wait_js(&format!("an element matching {css}"), &format!("document.querySelector({})", json!(css))).await;
        self.driver.find(By::Css(css)).await.unwrap_or_else(|e| panic!("{}: {css}: {e}", self.name))
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        element.click().await.unwrap_or_else(|e| panic!("{}: cannot click {css}: {e}", self.name));
    }

    /// Clears the element and types `text` into it, as keystrokes ([`enter`] presses Enter).
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element.clear().await.unwrap_or_else(|e| panic!("{}: cannot clear {css}: {e}", self.name));
        element.send_keys(text).await.unwrap_or_else(|e| panic!("{}: cannot type into {css}: {e}", self.name));
    }

    /// The text of the element matching `css` (`None` if there is none).
    pub async fn text(&self, css: &str) -> Option<String> {
        let value = self
            .js("const e = document.querySelector(arguments[0]); return e && e.textContent;", vec![json!(css)])
            .await;
        value.as_str().map(str::to_string)
    }

    /// `location.pathname + location.search`.
    pub async fn path(&self) -> String {
        self.js("return location.pathname + location.search", Vec::new()).await.as_str().unwrap_or_default().to_string()
    }

    /// Whether a JavaScript dialog (alert, confirm) is open.
    pub async fn alert_open(&self) -> bool {
        self.driver.get_alert_text().await.is_ok()
    }

    /// Emulates a viewport of `width` × `height` CSS pixels (mobile: touch, meta viewport).
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.driver
            .cdp()
            .emulation()
            .set_device_metrics_override(width, height, 1.0, mobile)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot emulate {width}×{height}: {e}", self.name));
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.driver.screenshot_as_png().await.unwrap_or_else(|e| panic!("{}: no screenshot: {e}", self.name));
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("screenshot dir");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Ends the session (closes the browser).
    pub async fn close(self) {
        let _ = self.driver.quit().await;
    }
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

// ---- Pages of the chat, shared by the browser tests -----------------------------------

/// The password every browser test account uses.
pub const PASSWORD: &str = "correct horse battery";

/// Registers `name` through the form; the page lands on the dashboard, logged in.
pub async fn register(page: &Browser, base: &str, name: &str) {
    page.goto(&format!("{base}/register")).await;
    page.type_into("#username", name).await;
    page.type_into("#password", PASSWORD).await;
    page.type_into("#confirm", PASSWORD).await;
    page.click("#register-form button[type=submit]").await;
    page.wait_js("the dashboard after registering", "location.pathname === '/app'").await;
}

/// Creates a room from the dashboard form; returns its id.
pub async fn create_room(page: &Browser, base: &str, name: &str) -> u64 {
    page.goto(&format!("{base}/app")).await;
    page.type_into("#room-name", name).await;
    page.click("#create-room-form button[type=submit]").await;
    page.wait_js("the new room's page", "location.pathname.startsWith('/rooms/')").await;
    room_id(&page.path().await)
}

/// The room id in a `/rooms/{id}…` path.
pub fn room_id(path: &str) -> u64 {
    path.trim_start_matches("/rooms/").split(['?', '/']).next().and_then(|id| id.parse().ok()).expect("a room path")
}

/// Opens the room page preferring `node`, and waits until it is connected there and the
/// first page of history is shown.
pub async fn open_room(page: &Browser, base: &str, room: u64, node: u64) {
    page.goto(&format!("{base}/rooms/{room}?node={node}")).await;
    page.wait_js(
        &format!("a connection to node {node}"),
        &format!(
            "(s => s.dataset.state === 'connected' && s.dataset.node === '{node}')(document.getElementById('conn-state'))"
        ),
    )
    .await;
    page.wait_js(
        "the room to be loaded",
        "document.getElementById('history-state').textContent !== 'Loading messages…'",
    )
    .await;
}

/// Waits until the page's connection is up.
pub async fn connected(page: &Browser) {
    page.wait_js("a connection", "document.getElementById('conn-state').dataset.state === 'connected'").await;
}

/// Types `text` into the room's composer and presses Enter.
pub async fn send_message(page: &Browser, text: &str) {
    page.type_into("#message-input", &format!("{text}{}", enter())).await;
    page.wait_js("the composer to be cleared", "document.getElementById('message-input').value === ''").await;
}

/// Lets layout and paint catch up after a viewport change (two animation frames).
pub async fn settle(page: &Browser) {
    let script = "window.__settled = false; \
                  requestAnimationFrame(() => requestAnimationFrame(() => { window.__settled = true; }));";
    page.js(script, vec![]).await;
    page.wait_js("a repaint", "window.__settled === true").await;
}

/// Nothing on the page — the page itself or any element that clips or scrolls — has
/// content wider than itself (tables scroll on purpose; visually hidden labels clip on
/// purpose).
pub async fn no_sideways_scrolling(page: &Browser, what: &str) {
    let script = "const wide = [document.documentElement, ...document.querySelectorAll('body *')] \
                    .filter(e => getComputedStyle(e).overflowX !== 'visible' || e === document.documentElement) \
                    .filter(e => e.scrollWidth > e.clientWidth + 1 \
                            && !e.closest('.table-wrap, .visually-hidden')); \
                  return wide.map(e => e.tagName + (e.id ? '#' + e.id : '') + ' ' + e.scrollWidth + '>' + e.clientWidth);";
    let wide = page.js(script, vec![]).await;
    assert_eq!(wide, json!([]), "{what} scrolls sideways at 375 px");
}

/// Accepts the JavaScript dialog (a `confirm`) the last action opened, once it is open.
pub async fn accept_dialog(page: &Browser) {
    let deadline = Instant::now() + WAIT;
    loop {
        if page.driver.accept_alert().await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{}: no dialog opened within {WAIT:?}", page.name);
        tokio::time::sleep(POLL).await;
    }
}

impl Browser {
    /// Touches the viewport at (`x`, `y`) CSS pixels and keeps the finger down until
    /// [`Self::touch_end`] (touch emulation is turned on first).
    pub async fn touch_start(&self, x: f64, y: f64) {
        let cdp = self.driver.cdp();
        cdp.send_raw("Emulation.setTouchEmulationEnabled", json!({"enabled": true, "maxTouchPoints": 1}))
            .await
            .unwrap_or_else(|e| panic!("{}: no touch emulation: {e}", self.name));
        cdp.send_raw("Input.dispatchTouchEvent", json!({"type": "touchStart", "touchPoints": [{"x": x, "y": y}]}))
            .await
            .unwrap_or_else(|e| panic!("{}: cannot touch: {e}", self.name));
    }

    /// Lifts the finger of [`Self::touch_start`].
    pub async fn touch_end(&self) {
        self.driver
            .cdp()
            .send_raw("Input.dispatchTouchEvent", json!({"type": "touchEnd", "touchPoints": []}))
            .await
            .unwrap_or_else(|e| panic!("{}: cannot lift the touch: {e}", self.name));
    }
}
