//! Hostile input against a control member: floods it must meet with a bound, answering
//! or refusing each request, instead of growing until the process dies.
//!
//! The test process hosts the member, so the process's RSS is the member's. It runs with
//! the binary's allocator (mimalloc, `src/main.rs`): with glibc malloc the freed argon2
//! buffers of a burst stayed in the process (docs/OPERATIONS.md, "Bounds").

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{rss_bytes, tuning, wait_for, Api, TestCluster};
use reqwest::header::{CONTENT_TYPE, COOKIE, RETRY_AFTER, SET_COOKIE};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Accounts the flood registers and logs in with (each one until it succeeds).
const USERS: usize = 500;
/// Requests in flight at once.
const CLIENTS: usize = 32;
/// A refused client asks again this soon: a flood, not a polite client (which would wait
/// the second `Retry-After` asks for).
const BACKOFF: Duration = Duration::from_millis(50);
/// How long one account may keep being refused before the test calls it starved.
const PATIENCE: Duration = Duration::from_secs(120);
/// The member's hashing slots and queue: fixed, so the test does not depend on the cores
/// of the machine (the default is one slot per core).
const SLOTS: usize = 2;
const QUEUE: usize = 8;
/// Bound on the growth of the process's RSS during the flood. The hashes running at once
/// hold SLOTS × 19 MiB; this test grew by about 50 MB. It grew by 456 MB with 64 slots
/// (no bound for 32 clients) and by 518 MB with glibc malloc instead of mimalloc.
const MAX_GROWTH_MB: u64 = 200;
/// After the flood the RSS must come back within this much of where it started.
const MAX_KEPT_MB: u64 = 64;
const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_and_login_flood_is_served_or_refused_busy_within_bounded_memory() {
    let cluster = TestCluster::start_with(1, tuning(), |config| {
        config.password_hashing_concurrency = SLOTS;
        config.password_hashing_queue = QUEUE;
    })
    .await;
    let base = cluster.url(0);
    // One account first, so one-time allocations (pools, caches) are in the baseline.
    Api::logged_in(&base, "warmup").await;
    let rest = rss_bytes() >> 20;
    let peak = Arc::new(AtomicU64::new(rest));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (peak, sampling) = (peak.clone(), sampling.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            while sampling.load(Ordering::Relaxed) {
                every.tick().await;
                peak.fetch_max(rss_bytes() >> 20, Ordering::Relaxed);
            }
        }
    });

    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (http, base, next, tally) = (http.clone(), base.clone(), next.clone(), tally.clone());
        clients.push(tokio::spawn(async move {
            // Every fourth client uses the HTML forms, the others the JSON API.
            let form = if client % 4 == 0 { Some(FormVisitor::new(&http, &base).await) } else { None };
            let client = Client { http, base, form, tally };
            loop {
                let user = next.fetch_add(1, Ordering::Relaxed);
                if user >= USERS {
                    return;
                }
                let username = format!("flood-{user}");
                if client.until_served(Step::Register, &username).await {
                    client.until_served(Step::Login, &username).await;
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client task");
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let tally = tally.lock().expect("tally").clone();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("{tally:?}; RSS {rest} MB at rest, {peak} MB at the peak");

    assert!(tally.other.is_empty(), "answers other than success or `503 busy` with Retry-After: {:?}", tally.other);
    assert_eq!((tally.ok(Step::Register), tally.ok(Step::Login)), (USERS, USERS), "{tally:?}");
    assert!(peak.saturating_sub(rest) <= MAX_GROWTH_MB, "RSS grew from {rest} MB to {peak} MB during the flood");
    let settled = wait_for("RSS to come back after the flood", Duration::from_secs(30), || async {
        let now = rss_bytes() >> 20;
        (now <= rest + MAX_KEPT_MB).then_some(now)
    })
    .await;
    eprintln!("RSS {settled} MB after the flood");
    // The member still serves: the refusals were no failed logins (no lockout).
    let (status, body) = Api::new()
        .post(&format!("{base}/api/sessions"), json!({"username": "warmup", "password": PASSWORD}))
        .await
        .expect("login after the flood");
    assert_eq!(status, 200, "{body}");
}

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Register,
    Login,
}

/// One of the flood's clients: the JSON API, or the HTML forms when it has a visitor.
struct Client {
    http: reqwest::Client,
    base: String,
    form: Option<FormVisitor>,
    tally: Arc<Mutex<Tally>>,
}

impl Client {
    /// Asks for `step` until it succeeds, asking again after [`BACKOFF`] when refused
    /// `busy`; whether it succeeded (anything else is recorded and ends the account).
    async fn until_served(&self, step: Step, username: &str) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = self.ask(step, username).await;
            if let Some(served) = self.record(step, username, answer, Instant::now() < deadline) {
                return served;
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }

    /// Counts `answer`; `None` when the client should ask again.
    fn record(&self, step: Step, username: &str, answer: Answer, patient: bool) -> Option<bool> {
        let mut tally = self.tally.lock().expect("tally");
        match answer {
            Answer::Ok => {
                *tally.ok.entry(step).or_default() += 1;
                Some(true)
            }
            Answer::Busy if patient => {
                *tally.busy.entry(step).or_default() += 1;
                None
            }
            Answer::Busy => {
                tally.other.push(format!("{step:?} {username}: still refused after {PATIENCE:?}"));
                Some(false)
            }
            Answer::Other(what) => {
                tally.other.push(format!("{step:?} {username}: {what}"));
                Some(false)
            }
        }
    }

    async fn ask(&self, step: Step, username: &str) -> Answer {
        let (http, base) = (&self.http, &self.base);
        match (&self.form, step) {
            (Some(form), Step::Register) => form.register(http, base, username).await,
            (Some(form), Step::Login) => form.login(http, base, username).await,
            (None, Step::Register) => api_call(http, &format!("{base}/api/users"), username, 201).await,
            (None, Step::Login) => api_call(http, &format!("{base}/api/sessions"), username, 200).await,
        }
    }
}

/// Answers per step.
#[derive(Debug, Default, Clone)]
struct Tally {
    ok: BTreeMap<Step, usize>,
    busy: BTreeMap<Step, usize>,
    /// Anything else, described: each one fails the test.
    other: Vec<String>,
}

impl Tally {
    fn ok(&self, step: Step) -> usize {
        self.ok.get(&step).copied().unwrap_or(0)
    }
}

/// One request's outcome.
enum Answer {
    Ok,
    Busy,
    Other(String),
}

/// A JSON API call with the flood's credentials; `ok` is the success status.
async fn api_call(http: &reqwest::Client, url: &str, username: &str, ok: u16) -> Answer {
    let sent = http.post(url).json(&json!({"username": username, "password": PASSWORD})).send().await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Answer::Other(format!("transport error: {e}")),
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().get(RETRY_AFTER).and_then(|value| value.to_str().ok()).map(str::to_string);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        _ if status == ok => Answer::Ok,
        503 if body["code"] == "busy" && retry_after.as_deref() == Some("1") => Answer::Busy,
        _ => Answer::Other(format!("{status} (Retry-After {retry_after:?}): {body}")),
    }
}

/// A browser-like visitor of the HTML forms: its anonymous CSRF cookie and token.
struct FormVisitor {
    cookie: String,
    csrf: String,
}

impl FormVisitor {
    async fn new(http: &reqwest::Client, base: &str) -> Self {
        let page = http.get(format!("{base}/register")).send().await.expect("register page");
        let cookie = page
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find(|value| value.starts_with("districhat_csrf="))
            .and_then(|value| value.split(';').next())
            .expect("an anonymous csrf cookie")
            .to_string();
        let html = page.text().await.expect("html");
        let csrf = html.split("name=\"csrf\" value=\"").nth(1).and_then(|rest| rest.split('"').next());
        Self { cookie, csrf: csrf.expect("csrf field").to_string() }
    }

    async fn register(&self, http: &reqwest::Client, base: &str, username: &str) -> Answer {
        let password = PASSWORD.replace(' ', "+");
        self.post(
            http,
            &format!("{base}/register"),
            format!("username={username}&password={password}&confirm={password}"),
        )
        .await
    }

    async fn login(&self, http: &reqwest::Client, base: &str, username: &str) -> Answer {
        let password = PASSWORD.replace(' ', "+");
        self.post(http, &format!("{base}/login"), format!("username={username}&password={password}")).await
    }

    /// A form POST: success is the redirect (303); a refusal is the form again with 503,
    /// `Retry-After: 1` and a message saying so.
    async fn post(&self, http: &reqwest::Client, url: &str, fields: String) -> Answer {
        let sent = http
            .post(url)
            .header(COOKIE, &self.cookie)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!("{fields}&csrf={}", self.csrf))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Answer::Other(format!("transport error: {e}")),
        };
        let status = response.status().as_u16();
        let retry_after = response.headers().get(RETRY_AFTER).and_then(|value| value.to_str().ok()).map(str::to_string);
        let html = response.text().await.unwrap_or_default();
        match status {
            303 => Answer::Ok,
            503 if retry_after.as_deref() == Some("1") && html.contains("The server is busy") => Answer::Busy,
            _ => Answer::Other(format!(
                "form {status} (Retry-After {retry_after:?}): {}",
                html.chars().take(300).collect::<String>()
            )),
        }
    }
}

/// One user cannot create rooms without end: past `max_rooms_per_user` the member answers
/// `403 quota_exceeded` (through the API and the form alike) and creates nothing; other
/// users are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_the_room_quota_is_refused_and_others_are_not() {
    let cluster = TestCluster::start_with(1, tuning(), |config| config.max_rooms_per_user = 5).await;
    let base = cluster.url(0);
    let hoarder = Api::logged_in(&base, "hoarder").await;
    for i in 0..5 {
        let (status, body) =
            hoarder.post(&format!("{base}/api/rooms"), json!({"name": format!("h{i}")})).await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = hoarder.post(&format!("{base}/api/rooms"), json!({"name": "h5"})).await.unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("quota_exceeded")), "{body}");
    let rooms = hoarder.get(&format!("{base}/api/rooms")).await.unwrap();
    let names: Vec<&str> = rooms["rooms"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(!names.contains(&"h5"), "nothing was created: {names:?}");
    let other = Api::logged_in(&base, "other").await;
    let (status, body) = other.post(&format!("{base}/api/rooms"), json!({"name": "o1"})).await.unwrap();
    assert_eq!(status, 201, "{body}");
}

/// Tokens that are garbage, forged (a valid token with one character changed) or missing
/// are refused with `unauthorized` and the connection lives on; a foreign Origin, and the
/// mesh and internal routes without the cluster secret, are refused before any work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_foreign_origins_and_missing_secrets_are_refused_with_their_codes() {
    use common::chat::{token, ChatCluster, WsClient};
    use districhat::protocol::ConnectionClaims;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "intruder").await;
    let room = cluster.create_room(&api, "guarded", false).await["id"].as_u64().unwrap();
    let (valid, _) = token(&api, &cluster.url()).await;
    let node = cluster.node(0);

    let (socket, _) = tokio_tungstenite::connect_async(node.ws_url()).await.expect("connect");
    let mut ws = WsClient::from_socket(socket);
    let mut forged = valid.clone().into_bytes();
    let middle = forged.len() / 2;
    forged[middle] = if forged[middle] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    // A token of this cluster that has expired, and one signed by another cluster.
    let key = node.node.token_key.read().unwrap().clone();
    let claims = districhat::token::verify(&key, &valid, districhat::now_ms()).expect("a valid token");
    let expired =
        districhat::token::sign(&key, &ConnectionClaims { expires_ms: districhat::now_ms() - 1, ..claims.clone() });
    let other_key = districhat::token::derive_token_key(b"another cluster's signing key");
    let other_cluster = districhat::token::sign(&other_key, &claims);
    for bad in ["", "garbage", forged.as_str(), expired.as_str(), other_cluster.as_str()] {
        ws.send(json!({"type": "hello", "token": bad})).await;
        assert_eq!(ws.expect("error").await["code"], "unauthorized", "token {bad:?}");
    }
    ws.send(json!({"type": "send", "room": room, "client_id": "sneak", "text": "no hello"})).await;
    assert_eq!(ws.expect("error").await["code"], "unauthorized", "a send before a valid hello");
    ws.send(json!({"type": "hello", "token": valid})).await;
    ws.expect("welcome").await;
    ws.send(json!({"type": "send", "room": room, "client_id": "fine", "text": "after all that"})).await;
    assert_eq!(ws.expect("ack").await["seq"], 1, "the same connection serves once it said a valid hello");

    let mut request = node.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await.expect_err("a foreign origin is refused");
    assert!(refused.to_string().contains("403"), "{refused}");

    let base = format!("http://{}", node.node.addr);
    let mesh = tokio_tungstenite::connect_async(format!("ws://{}/mesh", node.node.addr)).await;
    assert!(mesh.expect_err("no secret, no mesh").to_string().contains("401"));
    let internal = api.http.get(format!("{base}/internal/rooms/{room}/messages")).send().await.unwrap();
    assert_eq!(internal.status().as_u16(), 401);
    let backup = api.http.post(format!("{base}/api/admin/backup")).body("{}").send().await.unwrap();
    assert_eq!(backup.status().as_u16(), 401);
}

/// Mutated browser frames (a small deterministic fuzzer: byte flips, truncations, swapped
/// types, out-of-range and wrongly typed numbers, deep nesting) against one live session:
/// every answer is a documented frame or error code, the connection stays open, and a
/// valid send after each batch is acknowledged. Not a substitute for cargo-fuzz (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_frames_get_typed_errors_and_the_session_lives_on() {
    use common::chat::{token, ChatCluster, WsClient};

    const KNOWN_CODES: [&str; 16] = [
        "bad_frame",
        "forbidden",
        "frame_too_large",
        "internal",
        "invalid_json",
        "not_subscribed",
        "rate_limited",
        "stale_epoch",
        "text_too_long",
        "too_many_subscriptions",
        "unauthorized",
        "unavailable",
        "unknown_room",
        "unknown_type",
        "isolated",
        "lagging",
    ];
    let cluster = ChatCluster::start(2).await;
    let api = Api::logged_in(&cluster.url(), "mutant").await;
    let room = cluster.create_room(&api, "mutations", false).await["id"].as_u64().unwrap();
    let (valid, _) = token(&api, &cluster.url()).await;
    let mut ws = WsClient::connect(&cluster.node(0).ws_url(), &valid).await;
    let seeds = [
        json!({"type": "send", "room": room, "client_id": "c", "text": "hello"}).to_string(),
        json!({"type": "subscribe", "room": room, "since": 3}).to_string(),
        json!({"type": "history", "room": room, "before": 10, "limit": 20}).to_string(),
        json!({"type": "typing", "room": room}).to_string(),
        json!({"type": "unsubscribe", "room": room}).to_string(),
        json!({"type": "hello", "token": "x"}).to_string(),
    ];
    let replacements = ["-1", "18446744073709551616", "\"x\"", "null", "[]", "{}", "1e308", "[[[[[[[[[[]]]]]]]]]]"];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for batch in 0..20 {
        for _ in 0..50 {
            let mut frame = seeds[(next() % seeds.len() as u64) as usize].clone().into_bytes();
            match next() % 4 {
                0 => {
                    let at = (next() % frame.len() as u64) as usize;
                    frame[at] = (next() % 128) as u8;
                }
                1 => frame.truncate((next() % frame.len() as u64) as usize),
                2 => {
                    let text = String::from_utf8_lossy(&frame).into_owned();
                    let with = replacements[(next() % replacements.len() as u64) as usize];
                    frame = text.replacen(&room.to_string(), with, 1).into_bytes();
                }
                _ => frame = format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
            }
            ws.send_raw(String::from_utf8_lossy(&frame).into_owned()).await;
        }
        let client_id = format!("alive-{batch}");
        ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": "still here"})).await;
        let mut acked = false;
        while !acked {
            let frame = ws.next(Duration::from_secs(15)).await.expect("the session still answers");
            match frame["type"].as_str() {
                Some("ack") if frame["client_id"] == client_id.as_str() => acked = true,
                Some("error") if frame["ref"] == client_id.as_str() && frame["code"] == "rate_limited" => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ws.send(json!({"type": "send", "room": room, "client_id": client_id, "text": "still here"})).await;
                }
                Some("error") => {
                    let code = frame["code"].as_str().unwrap_or_default();
                    assert!(KNOWN_CODES.contains(&code), "an undocumented error code: {frame}");
                }
                Some(_) => {}
                None => panic!("a frame without a type: {frame}"),
            }
        }
    }
}

/// Password guessing is slowed per username and per client address: after 5 failures in
/// a minute the next attempt is refused with `429 rate_limited` even with the right
/// password, for that user and for anyone else from that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_guessing_is_limited_per_user_and_per_address() {
    let cluster = TestCluster::start_with(1, tuning(), |_| {}).await;
    let base = cluster.url(0);
    Api::logged_in(&base, "victim").await;
    Api::logged_in(&base, "bystander").await;
    let api = Api::new();
    let login = |username: &str, password: &str| json!({"username": username, "password": password});
    for guess in 0..5 {
        let (status, body) =
            api.post(&format!("{base}/api/sessions"), login("victim", &format!("guess-{guess}"))).await.unwrap();
        assert_eq!((status, body["code"].as_str()), (401, Some("invalid_credentials")), "{body}");
    }
    let (status, body) =
        api.post(&format!("{base}/api/sessions"), login("victim", "correct horse battery")).await.unwrap();
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")), "the right password waits too: {body}");
    let (status, body) =
        api.post(&format!("{base}/api/sessions"), login("bystander", "correct horse battery")).await.unwrap();
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")), "the same address is limited: {body}");
}

/// Positions and page sizes out of range, over the WebSocket and REST: each gets a typed
/// error or a documented clamp, and the same connection then serves a normal send. A
/// `since` past any seq used to be taken as it was: the subscription then waited for seqs
/// that never come, muted without a word (and `last + 1` overflowed in a debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_positions_get_typed_errors_and_the_connection_serves_on() {
    use common::chat::{fill, send_acked, token, ChatCluster, WsClient};

    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let api = Api::logged_in(&base, "ranger").await;
    let room = cluster.create_room(&api, "ranges", false).await["id"].as_u64().unwrap();
    let (valid, _) = token(&api, &base).await;
    let mut ws = WsClient::connect(&cluster.node(0).ws_url(), &valid).await;
    fill(&mut ws, room, 3).await;

    for since in [json!(u64::MAX), json!(1_u64 << 53), json!(-1), json!("2"), json!(1.5)] {
        ws.send(json!({"type": "subscribe", "room": room, "since": since})).await;
        let answer = first_answer(&mut ws).await;
        assert_eq!((answer["type"].as_str(), answer["code"].as_str()), (Some("error"), Some("bad_frame")), "{since}");
    }
    let (missed, at) = ws.subscribe(room, Some(0)).await;
    let seqs: Vec<u64> = missed.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!((seqs, at), (vec![1, 2, 3], 3), "since 0 resumes from the first message");
    ws.send(json!({"type": "send", "room": room, "client_id": "live", "text": "live"})).await;
    let (mut acked, mut delivered) = (None, None);
    while acked.is_none() || delivered.is_none() {
        let frame = first_answer(&mut ws).await;
        match frame["type"].as_str() {
            Some("ack") => acked = frame["seq"].as_u64(),
            Some("message") => delivered = frame["seq"].as_u64(),
            _ => panic!("a send gets its ack and its message: {frame}"),
        }
    }
    assert_eq!((acked, delivered), (Some(4), Some(4)), "the subscription is live, not muted");

    for (frame, expected) in [
        (json!({"type": "history", "room": room, "before": 0}), Ok(0)),
        (json!({"type": "history", "room": room, "limit": 0}), Ok(1)),
        (json!({"type": "history", "room": room, "before": u64::MAX, "limit": 500}), Ok(4)),
        (json!({"type": "history", "room": room, "limit": -1}), Err("bad_frame")),
        (json!({"type": "history", "room": room, "limit": u64::MAX}), Err("bad_frame")),
        (json!({"type": "history", "room": room, "before": "x"}), Err("bad_frame")),
    ] {
        ws.send(frame.clone()).await;
        let answer = first_answer(&mut ws).await;
        let got = match answer["type"].as_str() {
            Some("history") => Ok(answer["messages"].as_array().map_or(0, Vec::len)),
            _ => Err(answer["code"].as_str().unwrap_or("no code").to_string()),
        };
        assert_eq!(got, expected.map_err(str::to_string), "{frame}: {answer}");
    }

    for (query, expected) in [
        ("before=0", Ok(0)),
        ("limit=0", Ok(1)),
        ("before=18446744073709551615&limit=999", Ok(4)),
        ("before=-1", Err("invalid_query")),
        ("before=18446744073709551616", Err("invalid_query")),
        ("limit=x", Err("invalid_query")),
    ] {
        let response = api
            .http
            .get(format!("{base}/api/rooms/{room}/messages?{query}"))
            .bearer_auth(api.token.as_deref().unwrap())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        let got = match status {
            200 => Ok(body["messages"].as_array().map_or(0, Vec::len)),
            _ => Err(format!("{status} {}", body["code"].as_str().unwrap_or("no code"))),
        };
        assert_eq!(got, expected.map_err(|code| format!("400 {code}")), "?{query}: {body}");
    }
    send_acked(&mut ws, room, "after", Duration::from_secs(10)).await;
}

/// The next frame that answers a request (not presence or typing); panics after 15 s.
async fn first_answer(ws: &mut common::chat::WsClient) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let Some(frame) = ws.next(Duration::from_millis(200)).await else { continue };
        if !matches!(frame["type"].as_str(), Some("presence" | "typing")) {
            return frame;
        }
    }
    panic!("no answer within 15 s");
}

/// Private rooms and DMs stay closed to an outsider on the paths the chat tests do not
/// cover: read marks for them are skipped and never shown, joining answers as if the room
/// did not exist, and a DM is only ever between its caller and the peer (an outsider who
/// opens a DM with one of them gets a room of their own). The member serves on after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_get_nothing_of_private_rooms_and_dms_through_marks_joins_or_dm_creation() {
    use common::chat::{send_acked, token, ChatCluster, WsClient};

    let cluster = ChatCluster::start(2).await;
    let base = cluster.url();
    let alice = Api::logged_in(&base, "alice").await;
    let _bob = Api::logged_in(&base, "bob").await;
    let carol = Api::logged_in(&base, "carol").await;
    let private = cluster.create_room(&alice, "inner", true).await["id"].as_u64().unwrap();
    let (status, dm) = alice.post(&format!("{base}/api/dms"), json!({"username": "bob"})).await.unwrap();
    assert_eq!(status, 201, "{dm}");
    let dm = dm["id"].as_u64().unwrap();

    let marks = json!({"marks": [{"room": private, "seq": 5}, {"room": dm, "seq": 5}]});
    let (status, body) = carol.post(&format!("{base}/api/read-marks"), marks).await.unwrap();
    assert_eq!((status, body["accepted"].as_u64()), (202, Some(0)), "{body}");
    let mut skipped: Vec<u64> = body["skipped"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
    skipped.sort_unstable();
    assert_eq!(skipped, vec![private.min(dm), private.max(dm)]);
    let shown = carol.get(&format!("{base}/api/read-marks")).await.unwrap();
    assert_eq!(shown["marks"], json!({}), "an outsider's marks show no private room");

    for room in [private, dm] {
        for body in [json!({}), json!({"username": "carol"})] {
            let (status, answer) = carol.post(&format!("{base}/api/rooms/{room}/members"), body).await.unwrap();
            assert_eq!((status, answer["code"].as_str()), (404, Some("not_found")), "join {room}: {answer}");
        }
    }
    let (carol_token, _) = token(&carol, &base).await;
    let mut ws = WsClient::connect(&cluster.node(0).ws_url(), &carol_token).await;
    ws.send(json!({"type": "subscribe", "room": dm})).await;
    assert_eq!(first_answer(&mut ws).await["code"], "forbidden");

    let (status, own) = carol.post(&format!("{base}/api/dms"), json!({"username": "bob"})).await.unwrap();
    assert_eq!(status, 201, "{own}");
    let own = own["id"].as_u64().unwrap();
    assert_ne!(own, dm, "carol's DM with bob is not alice's");
    let (alice_token, _) = token(&alice, &base).await;
    let mut alice_ws = WsClient::connect(&cluster.node(1).ws_url(), &alice_token).await;
    alice_ws.send(json!({"type": "subscribe", "room": own})).await;
    assert_eq!(first_answer(&mut alice_ws).await["code"], "forbidden", "alice is not in carol's DM");

    let (_, _) = ws.subscribe(own, None).await;
    send_acked(&mut ws, own, "still-served", Duration::from_secs(10)).await;
}
