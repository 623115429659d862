//! Login rate limiting, in memory on each control: at most [`MAX_FAILURES`] failed logins
//! per [`WINDOW`] for one username and for one client address. A key over the limit is
//! refused (429) until its oldest failure leaves the window — even with the right
//! password, so guessing cannot go on at full speed. A successful login clears the
//! username's failures. Each control counts for itself; with three controls behind a
//! balancer an attacker gets at most three times the budget, which is still slow. The
//! JSON login (`sessions.rs`) and the login form (`web/account.rs`) share one limiter.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// Failed attempts allowed per key within [`WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// The sliding window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked at most; past this, expired keys are dropped, then new keys are not
/// tracked (the other key of an attempt still limits it).
const MAX_KEYS: usize = 100_000;

/// Failure times per key (`user:NAME`, `addr:IP`). A std mutex: never held across an await.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// The keys one login attempt is counted under.
pub fn keys(username: &str, addr: Option<IpAddr>) -> Vec<String> {
    let mut keys = vec![format!("user:{}", username.to_ascii_lowercase())];
    keys.extend(addr.map(|addr| format!("addr:{addr}")));
    keys
}

/// The client's address: the peer, or — when the peer is a proxy on this host — the last
/// hop the proxy recorded in `X-Forwarded-For`.
pub fn client_addr(peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = peer.map(|addr| addr.ip());
    if peer.is_some_and(|ip| ip.is_loopback()) {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer
}

impl LoginLimiter {
    /// `Err(wait)` when any of `keys` is over the limit at `now`.
    pub fn check(&self, keys: &[String], now: Instant) -> Result<(), Duration> {
        let mut failures = self.lock();
        let mut wait = Duration::ZERO;
        for key in keys {
            if let Some(times) = failures.get_mut(key) {
                expire(times, now);
                if times.len() >= MAX_FAILURES {
                    let oldest = times.front().copied().unwrap_or(now);
                    wait = wait.max((oldest + WINDOW).saturating_duration_since(now));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait.max(Duration::from_secs(1)))
        }
    }

    /// Counts a failed attempt under every key.
    pub fn failed(&self, keys: &[String], now: Instant) {
        let mut failures = self.lock();
        if failures.len() >= MAX_KEYS {
            failures.retain(|_, times| {
                expire(times, now);
                !times.is_empty()
            });
        }
        for key in keys {
            if failures.len() >= MAX_KEYS && !failures.contains_key(key) {
                continue;
            }
            let times = failures.entry(key.clone()).or_default();
            expire(times, now);
            times.push_back(now);
            // Only the newest MAX_FAILURES matter for the decision.
            while times.len() > MAX_FAILURES {
                times.pop_front();
            }
        }
    }

    /// Forgets the failures of `key` (after a successful login).
    pub fn clear(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn expire(times: &mut VecDeque<Instant>, now: Instant) {
    while times.front().is_some_and(|first| now.saturating_duration_since(*first) >= WINDOW) {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn five_failures_lock_a_key_for_the_rest_of_the_minute() {
        let limiter = LoginLimiter::default();
        let start = Instant::now();
        let alice = keys("Alice", Some("10.0.0.1".parse().unwrap()));
        for i in 0..MAX_FAILURES {
            assert!(limiter.check(&alice, start).is_ok(), "attempt {i}");
            limiter.failed(&alice, start + Duration::from_secs(i as u64));
        }
        let wait = limiter.check(&alice, start + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        // The same address is locked for another username too, and the username from
        // another address.
        assert!(limiter.check(&keys("bob", Some("10.0.0.1".parse().unwrap())), start).is_err());
        assert!(limiter.check(&keys("alice", Some("10.0.0.2".parse().unwrap())), start).is_err());
        assert!(limiter.check(&keys("bob", Some("10.0.0.2".parse().unwrap())), start).is_ok());
        // The oldest failure leaves the window after a minute.
        assert!(limiter.check(&alice, start + WINDOW).is_ok());
        limiter.clear("user:alice");
        assert!(limiter.check(&keys("alice", None), start).is_ok());
    }

    #[test]
    fn forwarded_addresses_are_trusted_from_a_local_proxy_only() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1, 2.2.2.2"));
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "3.3.3.3:5000".parse().unwrap();
        assert_eq!(client_addr(Some(local), &headers), Some("2.2.2.2".parse().unwrap()));
        assert_eq!(client_addr(Some(remote), &headers), Some("3.3.3.3".parse().unwrap()));
        assert_eq!(client_addr(None, &headers), None);
    }
}
