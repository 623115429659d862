//! Bounded password hashing. Every registration hashes a password and every login
//! verifies one with argon2id ([`auth`](super::auth)): about 19 MiB of memory and tens of
//! milliseconds of CPU each. Unbounded, a burst of logins ran one blocking thread per
//! request and took a control from 23 MB to 2.5 GB of RSS, kept after the burst.
//!
//! [`PasswordHashing`] runs at most `concurrency` of them at once (one per core by
//! default) and lets at most `queue` more wait for a slot. A request beyond that is
//! refused at once with [`HashingError::Busy`] (HTTP `503` with the code `busy` and
//! `Retry-After: 1`): under a flood, clients are told to come back instead of piling up
//! memory and threads. A refusal is not a failed login, so it never counts towards the
//! login lockout. Nothing here knows HTTP.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth;

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashingError {
    /// Every slot is taken and the queue is full: retry in a second.
    #[error("the server is busy checking passwords; retry in a second")]
    Busy,
    /// The hash could not be computed (a bug or a panic in the hashing thread).
    #[error("password hashing failed: {0}")]
    Failed(String),
}

impl HashingError {
    /// The stable code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Failed(_) => "internal",
        }
    }
}

/// The hashing slots of one control member; cheap to clone (all clones share them).
#[derive(Clone)]
pub struct PasswordHashing {
    /// One permit per hash allowed to run; a hash holds it until its thread is done,
    /// even when the request that wanted it is gone.
    running: Arc<Semaphore>,
    /// One permit per hash running or waiting (`concurrency + queue`): taken without
    /// waiting, so that a request finding none is refused instead of queued.
    admitted: Arc<Semaphore>,
    /// The member's id, for the refusal counter.
    member: String,
}

impl PasswordHashing {
    /// At most `concurrency` hashes at once (at least one) and `queue` waiting.
    pub fn new(concurrency: usize, queue: usize, member: u64) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            running: Arc::new(Semaphore::new(concurrency)),
            admitted: Arc::new(Semaphore::new(concurrency.saturating_add(queue))),
            member: member.to_string(),
        }
    }

    /// An argon2id hash (PHC string) of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, HashingError> {
        self.run(move || auth::hash_password(&password)).await?.map_err(|e| HashingError::Failed(e.to_string()))
    }

    /// Whether `password` matches the stored `hash`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, HashingError> {
        self.run(move || auth::verify_password(&password, &hash)).await
    }

    /// Runs `work` on a blocking thread once a slot is free; refuses at once when the
    /// queue is full.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, HashingError> {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            metrics::counter!("districhat_password_busy_total", "member" => self.member.clone()).increment(1);
            return Err(HashingError::Busy);
        };
        // The semaphores are never closed, so this waits until a slot is free. A request
        // dropped while waiting gives its place in the queue back.
        let running = self.running.clone().acquire_owned().await.map_err(|_| HashingError::Busy)?;
        let permits: (OwnedSemaphorePermit, OwnedSemaphorePermit) = (admitted, running);
        tokio::task::spawn_blocking(move || {
            let _permits = permits;
            work()
        })
        .await
        .map_err(|e| HashingError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_its_place_after() {
        let hashing = PasswordHashing::new(1, 1, 1);
        // One job runs (held until released) and one waits: a third is refused.
        let (release, held) = mpsc::channel::<()>();
        let running = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.run(move || held.recv().is_ok()).await }
        });
        until("the first job to run", || hashing.running.available_permits() == 0).await;
        let waiting = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.run(|| 7).await }
        });
        until("the second job to wait", || hashing.admitted.available_permits() == 0).await;
        assert!(matches!(hashing.run(|| 0).await, Err(HashingError::Busy)));
        release.send(()).unwrap();
        assert!(running.await.unwrap().unwrap());
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
        assert_eq!(hashing.run(|| 8).await.unwrap(), 8);
        assert_eq!(hashing.admitted.available_permits(), 2, "every place is given back");
    }

    #[tokio::test]
    async fn hashes_verify() {
        let hashing = PasswordHashing::new(0, 0, 1);
        let hash = hashing.hash("correct horse".into()).await.unwrap();
        assert!(hashing.verify("correct horse".into(), hash.clone()).await.unwrap());
        assert!(!hashing.verify("wrong horse".into(), hash).await.unwrap());
    }

    /// Waits (10 s at most) until `check` holds.
    async fn until(what: &str, check: impl Fn() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        waited.await.unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }
}
