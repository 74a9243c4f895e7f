//! The restart decision for one service: its policy, the exponential backoff between restarts
//! and crashloop detection. Pure arithmetic on instants the caller passes in, so the whole
//! curve is tested on a fake clock.
//!
//! Numbers: the first restart waits 100 ms, each following one twice as long, capped at 60 s;
//! every delay is shortened by a jitter of up to 10 % (so the cap is never exceeded and
//! services that die together do not restart in lockstep). A run that lasted 10 s or more
//! counts as stable and resets the curve. Five exits within 30 s mark the service as
//! crashlooping; it is still restarted, at the capped delay, until a stable run clears it.

use keel_bundle::RestartPolicy;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Delay before the first restart.
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between restarts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the backoff and clears a crashloop.
pub const STABLE_RUN: Duration = Duration::from_secs(10);
/// This many exits within [`CRASHLOOP_WINDOW`] make a crashloop.
pub const CRASHLOOP_EXITS: usize = 5;
/// See [`CRASHLOOP_EXITS`].
pub const CRASHLOOP_WINDOW: Duration = Duration::from_secs(30);
/// Largest jitter, in per mille of the delay.
const JITTER_PER_MILLE: u64 = 100;

/// Restart bookkeeping for one service.
#[derive(Debug, Clone)]
pub struct Restarter {
    policy: RestartPolicy,
    /// Restarts since the last stable run (the exponent of the backoff).
    attempt: u32,
    /// When the recent exits happened (within the crashloop window).
    exits: VecDeque<Instant>,
    crashloop: bool,
    /// xorshift64 state for the jitter; never zero.
    rng: u64,
}

impl Restarter {
    /// A restarter for `policy`; `seed` makes the jitter reproducible (any value, 0 included).
    pub fn new(policy: RestartPolicy, seed: u64) -> Self {
        Restarter {
            policy,
            attempt: 0,
            exits: VecDeque::new(),
            crashloop: false,
            // Spread small seeds over the state space; xorshift must not start at zero.
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// Whether the service exits in a loop (see the module documentation).
    pub fn crashloop(&self) -> bool {
        self.crashloop
    }

    /// Forgets the backoff and the crashloop, for a restart asked for by hand.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.exits.clear();
        self.crashloop = false;
    }

    /// The service exited with `status` (0: success) at `now` after running for `ran_for`.
    /// Returns how long to wait before starting it again, or `None` if the policy says it
    /// stays down.
    pub fn on_exit(&mut self, status: i32, ran_for: Duration, now: Instant) -> Option<Duration> {
        if ran_for >= STABLE_RUN {
            self.reset();
        }
        self.exits.push_back(now);
        while self
            .exits
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= CRASHLOOP_WINDOW)
        {
            self.exits.pop_front();
        }
        if self.exits.len() >= CRASHLOOP_EXITS {
            self.crashloop = true;
        }
        // Only the window matters: keep the queue bounded.
        while self.exits.len() > CRASHLOOP_EXITS {
            self.exits.pop_front();
        }
        let restart = match self.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => status != 0,
            RestartPolicy::Never => false,
        };
        if !restart {
            return None;
        }
        let nominal = if self.crashloop {
            MAX_DELAY
        } else {
            // 100 ms · 2^attempt, saturating well before overflow.
            let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
            INITIAL_DELAY.saturating_mul(factor).min(MAX_DELAY)
        };
        self.attempt = self.attempt.saturating_add(1);
        Some(nominal - self.jitter(nominal))
    }

    /// A pseudo-random part of `delay`, below [`JITTER_PER_MILLE`] of it.
    fn jitter(&mut self, delay: Duration) -> Duration {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let per_mille = x % JITTER_PER_MILLE;
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(micros / 1000 * per_mille)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn backoff_doubles_from_100ms_to_the_cap_with_small_jitter() {
        let t0 = Instant::now();
        let mut r = Restarter::new(RestartPolicy::Always, 7);
        let mut now = t0;
        for i in 0..20u32 {
            // Exits spread out enough never to count as a crashloop.
            now += CRASHLOOP_WINDOW;
            let d = r.on_exit(1, Duration::from_millis(50), now).unwrap();
            let nominal = (100u128 << i).min(60_000);
            assert!(
                ms(d) <= nominal && ms(d) * 10 >= nominal * 9,
                "restart {i}: {d:?}"
            );
        }
        assert!(!r.crashloop());
    }

    #[test]
    fn the_same_seed_gives_the_same_curve_and_jitter_varies() {
        let t0 = Instant::now();
        let curve = |seed| {
            let mut r = Restarter::new(RestartPolicy::Always, seed);
            (1..8u32)
                .map(|i| {
                    r.on_exit(1, Duration::ZERO, t0 + CRASHLOOP_WINDOW * i)
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(curve(3), curve(3));
        assert_ne!(curve(3), curve(4));
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let t0 = Instant::now();
        let mut r = Restarter::new(RestartPolicy::Always, 1);
        for i in 1..=4u32 {
            r.on_exit(1, Duration::ZERO, t0 + CRASHLOOP_WINDOW * i);
        }
        let late = t0 + CRASHLOOP_WINDOW * 6;
        let d = r.on_exit(1, STABLE_RUN, late).unwrap();
        assert!(ms(d) <= 100, "{d:?}");
        let d = r.on_exit(1, STABLE_RUN - Duration::from_millis(1), late + STABLE_RUN);
        assert!(ms(d.unwrap()) > 100, "a shorter run does not reset");
    }

    #[test]
    fn five_quick_exits_are_a_crashloop_retried_at_the_cap_until_stable() {
        let t0 = Instant::now();
        let mut r = Restarter::new(RestartPolicy::Always, 9);
        let mut now = t0;
        for _ in 0..4 {
            let d = r.on_exit(1, Duration::ZERO, now).unwrap();
            assert!(!r.crashloop());
            now += d;
        }
        let d = r.on_exit(1, Duration::ZERO, now).unwrap();
        assert!(r.crashloop());
        assert!(d >= MAX_DELAY * 9 / 10, "{d:?}");
        // Still retried, still a crashloop, while the runs stay short.
        let d = r.on_exit(1, Duration::ZERO, now + d).unwrap();
        assert!(d >= MAX_DELAY * 9 / 10);
        assert!(r.crashloop());
        let d = r
            .on_exit(1, STABLE_RUN, now + Duration::from_secs(200))
            .unwrap();
        assert!(!r.crashloop());
        assert!(ms(d) <= 100);
    }

    #[test]
    fn exits_outside_the_window_are_no_crashloop() {
        let t0 = Instant::now();
        let mut r = Restarter::new(RestartPolicy::Always, 2);
        for i in 0..10u32 {
            r.on_exit(1, Duration::ZERO, t0 + Duration::from_secs(8) * i);
        }
        assert!(!r.crashloop(), "at most 4 exits in any 30 s");
    }

    #[test]
    fn policies_decide_whether_to_restart() {
        let t0 = Instant::now();
        let mut never = Restarter::new(RestartPolicy::Never, 0);
        assert_eq!(never.on_exit(1, Duration::ZERO, t0), None);
        assert_eq!(never.on_exit(0, Duration::ZERO, t0), None);
        let mut on_failure = Restarter::new(RestartPolicy::OnFailure, 0);
        assert_eq!(on_failure.on_exit(0, Duration::ZERO, t0), None);
        assert!(on_failure.on_exit(137, Duration::ZERO, t0).is_some());
        let mut always = Restarter::new(RestartPolicy::Always, 0);
        assert!(always.on_exit(0, Duration::ZERO, t0).is_some());
    }

    #[test]
    fn reset_forgets_everything() {
        let t0 = Instant::now();
        let mut r = Restarter::new(RestartPolicy::Always, 5);
        for _ in 0..6 {
            r.on_exit(1, Duration::ZERO, t0);
        }
        assert!(r.crashloop());
        r.reset();
        assert!(!r.crashloop());
        assert!(ms(r.on_exit(1, Duration::ZERO, t0).unwrap()) <= 100);
    }
}
