//! When to restart the unit behind a failing check: a pure state machine
//! for the health agent, fed with the time and the result of each run.

use maculaos_config::HealthCheck;
use std::time::{Duration, Instant};

/// What to do after a run of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The check failed: restart its unit now.
    Restart,
    /// The check failed and `max_restarts` restarts within `cooldown` did not
    /// help: stop restarting (and alert). Returned once per streak.
    GiveUp,
    /// The check still fails after giving up: wait until `cooldown` has
    /// passed since the last restart ([`RestartPolicy::retry_at`]).
    Wait,
    /// The check passes.
    Nothing,
}

/// Restart on failure up to `max_restarts` times, each within `cooldown` of
/// the one before; then give up until `cooldown` has passed since the last
/// restart, when the count starts again. A passing check resets the count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub cooldown: Duration,
    restarts: u32,
    last_restart: Option<Instant>,
    gave_up: bool,
}

impl RestartPolicy {
    pub fn new(max_restarts: u32, cooldown: Duration) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            cooldown,
            restarts: 0,
            last_restart: None,
            gave_up: false,
        }
    }

    /// The policy of a configured check; `None` unless it has `restart_on_failure`.
    pub fn for_check(check: &HealthCheck) -> Option<RestartPolicy> {
        check
            .restart_on_failure
            .then(|| RestartPolicy::new(check.max_restarts, check.cooldown.get()))
    }

    /// Restarts made in the current window.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// When the last restart of the current window was made.
    pub fn last_restart(&self) -> Option<Instant> {
        self.last_restart
    }

    /// After giving up: when restarting is allowed again.
    pub fn retry_at(&self) -> Option<Instant> {
        if self.restarts < self.max_restarts {
            return None;
        }
        self.last_restart.map(|t| t + self.cooldown)
    }

    /// Record the result of a run at `now` and say what to do.
    pub fn decide(&mut self, now: Instant, failed: bool) -> Decision {
        if !failed {
            self.restarts = 0;
            self.last_restart = None;
            self.gave_up = false;
            return Decision::Nothing;
        }
        if let Some(last) = self.last_restart {
            if now.saturating_duration_since(last) >= self.cooldown {
                self.restarts = 0;
                self.gave_up = false;
            }
        }
        if self.restarts < self.max_restarts {
            self.restarts += 1;
            self.last_restart = Some(now);
            return Decision::Restart;
        }
        if self.gave_up {
            Decision::Wait
        } else {
            self.gave_up = true;
            Decision::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    const MIN: Duration = Duration::from_secs(60);

    /// Feed (seconds since start, failed) and collect the decisions.
    fn run(p: &mut RestartPolicy, t0: Instant, steps: &[(u64, bool)]) -> Vec<Decision> {
        steps
            .iter()
            .map(|&(s, failed)| p.decide(t0 + Duration::from_secs(s), failed))
            .collect()
    }

    #[test]
    fn passing_does_nothing() {
        let mut p = RestartPolicy::new(3, 5 * MIN);
        let t0 = Instant::now();
        assert_eq!(
            run(&mut p, t0, &[(0, false), (30, false)]),
            [Nothing, Nothing]
        );
        assert_eq!(p.restarts(), 0);
    }

    #[test]
    fn restarts_up_to_the_limit_then_gives_up_once_then_waits() {
        let mut p = RestartPolicy::new(3, 5 * MIN);
        let t0 = Instant::now();
        let d = run(
            &mut p,
            t0,
            &[
                (0, true),
                (30, true),
                (60, true),
                (90, true),
                (120, true),
                (150, true),
            ],
        );
        assert_eq!(d, [Restart, Restart, Restart, GiveUp, Wait, Wait]);
        assert_eq!(p.restarts(), 3);
        assert_eq!(p.last_restart(), Some(t0 + Duration::from_secs(60)));
        // The last restart was at 60 s: retry at 60 s + 5 min.
        assert_eq!(p.retry_at(), Some(t0 + Duration::from_secs(360)));
    }

    #[test]
    fn after_the_cooldown_since_the_last_restart_it_tries_again() {
        let mut p = RestartPolicy::new(2, 5 * MIN);
        let t0 = Instant::now();
        let d = run(
            &mut p,
            t0,
            &[(0, true), (30, true), (60, true), (329, true)],
        );
        assert_eq!(d, [Restart, Restart, GiveUp, Wait]);
        // 300 s after the last restart (at 30 s).
        let d = run(
            &mut p,
            t0,
            &[(330, true), (360, true), (390, true), (420, true)],
        );
        assert_eq!(d, [Restart, Restart, GiveUp, Wait]);
    }

    #[test]
    fn restarts_far_apart_do_not_add_up() {
        let mut p = RestartPolicy::new(2, 5 * MIN);
        let t0 = Instant::now();
        // Each failure comes more than the cooldown after the last restart.
        let d = run(
            &mut p,
            t0,
            &[(0, true), (400, true), (800, true), (1200, true)],
        );
        assert_eq!(d, [Restart, Restart, Restart, Restart]);
        assert_eq!(p.restarts(), 1);
    }

    #[test]
    fn a_pass_resets_the_count() {
        let mut p = RestartPolicy::new(2, 5 * MIN);
        let t0 = Instant::now();
        let d = run(
            &mut p,
            t0,
            &[
                (0, true),
                (30, true),
                (60, false),
                (90, true),
                (120, true),
                (150, true),
            ],
        );
        assert_eq!(d, [Restart, Restart, Nothing, Restart, Restart, GiveUp]);
        // After giving up, a pass ends the streak: the next failure restarts.
        let d = run(&mut p, t0, &[(180, false), (210, true)]);
        assert_eq!(d, [Nothing, Restart]);
    }

    #[test]
    fn zero_restarts_never_restarts() {
        let mut p = RestartPolicy::new(0, MIN);
        let t0 = Instant::now();
        let d = run(&mut p, t0, &[(0, true), (30, true), (3600, true)]);
        assert_eq!(d, [GiveUp, Wait, Wait]);
        assert_eq!(p.retry_at(), None);
    }

    #[test]
    fn a_clock_going_backwards_is_not_a_cooldown() {
        let t0 = Instant::now() + Duration::from_secs(3600);
        let mut p = RestartPolicy::new(1, MIN);
        assert_eq!(p.decide(t0, true), Restart);
        assert_eq!(p.decide(t0 - Duration::from_secs(600), true), GiveUp);
    }

    #[test]
    fn from_a_configured_check() {
        let c: maculaos_config::Config = serde_yaml_ng::from_str(
            "maculaos:\n  health:\n    checks:\n      - {name: k3s, type: process, process: k3s, restart_on_failure: true, cooldown: 10m}\n      - {name: x, type: unit, unit: x}\n",
        )
        .unwrap();
        let p = RestartPolicy::for_check(&c.maculaos.health.checks[0]).unwrap();
        assert_eq!((p.max_restarts, p.cooldown), (3, 10 * MIN));
        assert!(RestartPolicy::for_check(&c.maculaos.health.checks[1]).is_none());
    }
}
