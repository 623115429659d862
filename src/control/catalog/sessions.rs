//! Ended sessions: session tokens are stateless (signed, with an expiry), so logging out
//! records the token's (user, expiry) here and every member refuses it from then on. An
//! entry is only needed until the token would have expired anyway, so each logout also
//! forgets the entries that have.

use super::{Catalog, CommandOutput, Touched, UserId};

impl Catalog {
    pub(super) fn end_session(
        &mut self,
        user: UserId,
        expires_ms: u64,
        at_ms: u64,
        touched: &mut Vec<Touched>,
    ) -> CommandOutput {
        let expired: Vec<(UserId, u64)> =
            self.ended_sessions.iter().filter(|(_, expires)| *expires <= at_ms).copied().collect();
        for (user, expires) in expired {
            self.ended_sessions.remove(&(user, expires));
            touched.push(Touched::EndedSession(user, expires));
        }
        if expires_ms > at_ms && self.ended_sessions.insert((user, expires_ms)) {
            touched.push(Touched::EndedSession(user, expires_ms));
        }
        CommandOutput::Done
    }

    /// Whether the session of `user` whose token expires at `expires_ms` was logged out.
    pub fn session_ended(&self, user: UserId, expires_ms: u64) -> bool {
        self.ended_sessions.contains(&(user, expires_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::*;

    #[test]
    fn ended_sessions_are_refused_until_they_expire_then_forgotten() {
        let mut catalog = Catalog::default();
        let (result, touched) = catalog.apply(Command::EndSession { user: 1, expires_ms: 1_000, at_ms: 10 });
        assert!(result.is_ok());
        assert_eq!(touched, vec![Touched::EndedSession(1, 1_000)]);
        assert!(catalog.session_ended(1, 1_000));
        assert!(!catalog.session_ended(1, 2_000), "another session of the same user still counts");
        assert!(!catalog.session_ended(2, 1_000));

        let (_, touched) = catalog.apply(Command::EndSession { user: 2, expires_ms: 5_000, at_ms: 1_000 });
        assert_eq!(touched, vec![Touched::EndedSession(1, 1_000), Touched::EndedSession(2, 5_000)]);
        assert!(!catalog.session_ended(1, 1_000), "expired entries are forgotten");
        assert!(catalog.session_ended(2, 5_000));

        let (_, touched) = catalog.apply(Command::EndSession { user: 3, expires_ms: 900, at_ms: 1_000 });
        assert!(touched.is_empty(), "an already expired token needs no entry");
        assert_eq!(catalog.ended_sessions.len(), 1);
    }
}
