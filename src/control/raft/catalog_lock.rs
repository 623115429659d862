//! The lock around a member's applied catalog, timed: [`read`] and [`write`] hand out
//! guards that record how long the caller waited for the lock and how long it held it
//! (`districhat_catalog_lock_seconds{mode, phase}`), and log the place in the code (the
//! caller's file and line) of every wait or hold over [`SLOW`]. The lock is a blocking
//! one: while a reader holds it, the state machine's apply waits, and so does every
//! runtime thread that asks for it after the apply did. A slow holder stalls commits.

use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::state_machine::CatalogState;

/// A wait for the catalog lock, or a hold of it, at least this long is logged with its place.
pub const SLOW: Duration = Duration::from_millis(20);

/// The catalog locked for reading; see the module comment.
pub struct CatalogRead<'a> {
    guard: RwLockReadGuard<'a, CatalogState>,
    _held: Held,
}

/// The catalog locked for writing; see the module comment.
pub struct CatalogWrite<'a> {
    guard: RwLockWriteGuard<'a, CatalogState>,
    _held: Held,
}

/// Locks the catalog for reading. A poisoned lock is still consistent: `Catalog::apply`
/// validates before it mutates and never panics in between.
#[track_caller]
pub fn read(lock: &RwLock<CatalogState>) -> CatalogRead<'_> {
    let (at, asked) = (Location::caller(), Instant::now());
    let guard = lock.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    CatalogRead { guard, _held: Held::after_wait("read", at, asked) }
}

/// Locks the catalog for writing (poisoning as in [`read`]).
#[track_caller]
pub fn write(lock: &RwLock<CatalogState>) -> CatalogWrite<'_> {
    let (at, asked) = (Location::caller(), Instant::now());
    let guard = lock.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    CatalogWrite { guard, _held: Held::after_wait("write", at, asked) }
}

impl Deref for CatalogRead<'_> {
    type Target = CatalogState;
    fn deref(&self) -> &CatalogState {
        &self.guard
    }
}

impl Deref for CatalogWrite<'_> {
    type Target = CatalogState;
    fn deref(&self) -> &CatalogState {
        &self.guard
    }
}

impl DerefMut for CatalogWrite<'_> {
    fn deref_mut(&mut self) -> &mut CatalogState {
        &mut self.guard
    }
}

/// A hold of the lock, timed from the moment it was granted; recorded when dropped, just
/// after the guard declared before it in the guard structs released the lock.
struct Held {
    mode: &'static str,
    at: &'static Location<'static>,
    since: Instant,
}

impl Held {
    fn after_wait(mode: &'static str, at: &'static Location<'static>, asked: Instant) -> Self {
        let since = Instant::now();
        record(mode, "wait", at, since - asked);
        Held { mode, at, since }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        record(self.mode, "held", self.at, self.since.elapsed());
    }
}

fn record(mode: &'static str, phase: &'static str, at: &Location<'_>, took: Duration) {
    metrics::histogram!("districhat_catalog_lock_seconds", "mode" => mode, "phase" => phase).record(took.as_secs_f64());
    if took >= SLOW {
        tracing::warn!(mode, phase, ms = took.as_millis() as u64, at = %at, "slow catalog lock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_give_the_state_and_release_the_lock() {
        let lock = RwLock::new(CatalogState::default());
        {
            let mut state = write(&lock);
            state.applied.last_applied = None;
            assert!(lock.try_read().is_err(), "held while the write guard lives");
        }
        let first = read(&lock);
        let second = read(&lock);
        assert_eq!(first.applied.last_applied, second.applied.last_applied);
        assert!(lock.try_write().is_err(), "held while read guards live");
        drop((first, second));
        assert!(lock.try_write().is_ok(), "released when the guards are dropped");
    }
}
