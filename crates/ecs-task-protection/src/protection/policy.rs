//! The pure decision of *when* to call ECS.
//!
//! [`decide`] looks at what the program wants, what ECS last said, the settings and the clock, and
//! answers with one [`Decision`]. It does no I/O and reads no clock, which is what lets every rule
//! below be tested on its own (see the tests at the end of this file):
//!
//! * **Acquire**: protection is wanted and ECS does not have it → call to protect.
//! * **Refresh**: protection is wanted and ECS has it → call again at the refresh mark,
//!   `refresh_percent` of the duration into the protection period that ECS reported
//!   (`expires_at − (100 − refresh_percent)% × duration`).
//! * **Hold-over**: protection is no longer wanted, but it was set less than `maintain_percent` of
//!   the duration ago → keep it until that mark, then release. This absorbs connect/disconnect churn.
//!   While draining, the hold-over is skipped.
//! * **Release**: protection is not wanted and the hold-over is over → call to release.
//! * **Lapse**: ECS's expiry has passed without a refresh → protection is gone; record it.
//! * **Deadline**: while a deadline is set (a draining server's drain deadline), protection is
//!   never asked for past it: a refresh asks only for the minutes left until the deadline
//!   (rounded up: ECS counts whole minutes), protection that already lasts until the deadline is
//!   not refreshed, and at the deadline protection is released whatever is still held.
//! * **Back-off**: after a failed call, no call is made before `retry_at`: exponential from
//!   `backoff_base` to `backoff_max` for faults ([`retry_delay`]), and a slow, steady
//!   `blocked_retry` while ECS answers `DEPLOYMENT_BLOCKED` ([`retry_delay_after`]), a condition
//!   of the whole service that no amount of fast retrying clears.

use std::ops::RangeInclusive;
use std::time::Duration;

use tokio::time::Instant;

use super::backend::ErrorKind;

/// The protection durations ECS accepts, in minutes (`expiresInMinutes`).
pub const DURATION_MINUTES: RangeInclusive<u32> = 1..=2880;

/// What the manager knows of ECS's protection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EcsState {
    /// Not known yet (start-up before the first answer, or the first read failed).
    Unknown,
    /// ECS said the task is not protected.
    Unprotected,
    /// ECS said the task is protected.
    Protected {
        /// When this process last set protection successfully; `None` if it was found already
        /// set at start-up (then no hold-over applies: nothing of ours is held).
        since: Option<Instant>,
        /// When ECS will drop the protection unless it is refreshed.
        expires_at: Instant,
    },
}

/// The protection settings, with the meaning of the Node.js sample's.
///
/// Start from [`Settings::DEFAULT`] (or `Settings::default()`) and change what you need with the
/// `with_*` methods; [`validate`](Self::validate) checks the ranges (so does
/// [`ProtectionManager::start`](super::ProtectionManager::start)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// How long each protect call protects the task for, in minutes ([`DURATION_MINUTES`]).
    pub duration_minutes: u32,
    /// If protection is released less than this share (0..=100 %) of the duration after it was
    /// set, keep it until that mark.
    pub maintain_percent: u8,
    /// At this share (1..=100 %) of the protection period, extend protection while still wanted.
    pub refresh_percent: u8,
    /// The longest the manager waits before re-checking its state.
    pub adjust_interval: Duration,
    /// The longest one call to ECS may take before it counts as failed.
    pub call_timeout: Duration,
    /// The first retry delay after a failed call; doubled for each further failure.
    pub backoff_base: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// The mean delay between tries while ECS answers `DEPLOYMENT_BLOCKED` (each × a random
    /// 0.5–1.5).
    pub blocked_retry: Duration,
}

impl Settings {
    /// The defaults: the Node.js sample's WebSocket server settings (30 minutes, refresh at 80 %,
    /// re-check every 10 s), except a 10 % hold-over instead of 0 % (README, "Why the default
    /// hold-over is 10 %"), plus a 10 s call timeout and a 1 s to 15 s back-off.
    pub const DEFAULT: Settings = Settings {
        duration_minutes: 30,
        maintain_percent: 10,
        refresh_percent: 80,
        adjust_interval: Duration::from_secs(10),
        call_timeout: Duration::from_secs(10),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(15),
        blocked_retry: Duration::from_secs(30),
    };
}

impl Settings {
    /// With `minutes` of protection per protect call ([`DURATION_MINUTES`]).
    pub const fn with_duration_minutes(mut self, minutes: u32) -> Self {
        self.duration_minutes = minutes;
        self
    }

    /// With a hold-over of `percent` (0..=100) of the duration.
    pub const fn with_maintain_percent(mut self, percent: u8) -> Self {
        self.maintain_percent = percent;
        self
    }

    /// With the refresh mark at `percent` (1..=100) of the protection period.
    pub const fn with_refresh_percent(mut self, percent: u8) -> Self {
        self.refresh_percent = percent;
        self
    }

    /// With the longest wait between two checks of the state.
    pub const fn with_adjust_interval(mut self, interval: Duration) -> Self {
        self.adjust_interval = interval;
        self
    }

    /// With the longest one call to ECS may take.
    pub const fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// With the retry back-off: `base` for the first retry, doubled each time, at most `max`.
    pub const fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// With the mean delay between tries while ECS answers `DEPLOYMENT_BLOCKED`.
    pub const fn with_blocked_retry(mut self, retry: Duration) -> Self {
        self.blocked_retry = retry;
        self
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A setting outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} must be in {range}, got {value}")]
pub struct SettingsError {
    /// The setting's name.
    pub name: &'static str,
    /// The allowed range, as text.
    pub range: String,
    /// The value given.
    pub value: String,
}

impl Settings {
    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<(), SettingsError> {
        fn check(
            ok: bool,
            name: &'static str,
            range: impl Into<String>,
            value: String,
        ) -> Result<(), SettingsError> {
            if ok {
                Ok(())
            } else {
                Err(SettingsError {
                    name,
                    range: range.into(),
                    value,
                })
            }
        }
        check(
            DURATION_MINUTES.contains(&self.duration_minutes),
            "duration_minutes",
            format!("{DURATION_MINUTES:?}"),
            self.duration_minutes.to_string(),
        )?;
        check(
            self.maintain_percent <= 100,
            "maintain_percent",
            "0..=100",
            self.maintain_percent.to_string(),
        )?;
        check(
            (1..=100).contains(&self.refresh_percent),
            "refresh_percent",
            "1..=100",
            self.refresh_percent.to_string(),
        )?;
        check(
            !self.adjust_interval.is_zero(),
            "adjust_interval",
            "> 0",
            format!("{:?}", self.adjust_interval),
        )?;
        check(
            !self.call_timeout.is_zero(),
            "call_timeout",
            "> 0",
            format!("{:?}", self.call_timeout),
        )?;
        check(
            !self.backoff_base.is_zero() && self.backoff_base <= self.backoff_max,
            "backoff_base",
            "> 0 and <= backoff_max",
            format!("{:?}", self.backoff_base),
        )?;
        check(
            !self.blocked_retry.is_zero(),
            "blocked_retry",
            "> 0",
            format!("{:?}", self.blocked_retry),
        )
    }

    /// The protection duration.
    pub fn duration(&self) -> Duration {
        super::backend::minutes(self.duration_minutes)
    }

    /// `percent` % of the duration.
    fn share(&self, percent: u8) -> Duration {
        self.duration() * u32::from(percent) / 100
    }
}

/// The inputs of one decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Input<'a> {
    /// Whether the program wants protection now (some work is in hand).
    pub wanted: bool,
    /// What ECS last said.
    pub ecs: EcsState,
    /// No call before this instant (back-off after a failure).
    pub retry_at: Option<Instant>,
    /// Skip the hold-over: release as soon as protection is no longer wanted (draining).
    pub skip_hold: bool,
    /// No protection past this instant (a drain deadline), whatever is wanted.
    pub deadline: Option<Instant>,
    /// The settings.
    pub settings: &'a Settings,
    /// The current instant.
    pub now: Instant,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Call ECS to protect the task (first time or refresh) for this many minutes.
    Protect {
        /// `expiresInMinutes`: the setting's duration, or less before a deadline.
        minutes: u32,
    },
    /// Call ECS to release protection.
    Release,
    /// ECS's protection has expired without a refresh: record the task as unprotected.
    Lapsed,
    /// Nothing to do before this instant (unless the wanted state changes).
    WaitUntil(Instant),
    /// Nothing to do until the wanted state changes.
    Idle,
}

/// Decides what to do next. Pure: same input, same answer.
pub(crate) fn decide(input: Input<'_>) -> Decision {
    let Input {
        wanted,
        ecs,
        retry_at,
        skip_hold,
        deadline,
        settings,
        now,
    } = input;
    // Past the deadline nothing is wanted any more, and nothing is held over.
    let past_deadline = deadline.is_some_and(|d| now >= d);
    let (wanted, skip_hold) = if past_deadline {
        (false, true)
    } else {
        (wanted, skip_hold)
    };
    // A call is allowed only once any back-off has passed.
    let call = |d: Decision| match retry_at {
        Some(t) if now < t => Decision::WaitUntil(t),
        _ => d,
    };
    let protect = Decision::Protect {
        minutes: protect_minutes(settings, deadline, now),
    };
    match ecs {
        EcsState::Protected { expires_at, .. } if now >= expires_at => Decision::Lapsed,
        EcsState::Unknown | EcsState::Unprotected if wanted => call(protect),
        EcsState::Unknown | EcsState::Unprotected => Decision::Idle,
        EcsState::Protected { expires_at, .. } if wanted => {
            // Protection that lasts until the deadline (to within ECS's one-minute unit) is not
            // refreshed: the deadline releases it.
            if let Some(d) = deadline {
                if expires_at + MINUTE >= d {
                    return Decision::WaitUntil(d.min(expires_at));
                }
            }
            let refresh_at = expires_at
                .checked_sub(settings.duration() - settings.share(settings.refresh_percent))
                .unwrap_or(now);
            if now >= refresh_at {
                match call(protect) {
                    // While backing off, still note the expiry.
                    Decision::WaitUntil(t) => Decision::WaitUntil(t.min(expires_at)),
                    d => d,
                }
            } else {
                Decision::WaitUntil(refresh_at)
            }
        }
        EcsState::Protected { since, expires_at } => {
            let hold_until = since.map(|s| s + settings.share(settings.maintain_percent));
            match hold_until {
                Some(t) if !skip_hold && now < t => {
                    let t = deadline.map_or(t, |d| t.min(d));
                    Decision::WaitUntil(t.min(expires_at))
                }
                _ => match call(Decision::Release) {
                    Decision::WaitUntil(t) => Decision::WaitUntil(t.min(expires_at)),
                    d => d,
                },
            }
        }
    }
}

/// One minute, ECS's unit of protection.
const MINUTE: Duration = Duration::from_secs(60);

/// The minutes to ask for: the setting's duration, or fewer when a deadline comes sooner (the
/// minutes left, rounded up, and at least 1, the least ECS accepts).
fn protect_minutes(settings: &Settings, deadline: Option<Instant>, now: Instant) -> u32 {
    let full = settings.duration_minutes;
    match deadline {
        Some(d) => {
            let left = d.saturating_duration_since(now).as_secs();
            let minutes = u32::try_from(left.div_ceil(60)).unwrap_or(u32::MAX);
            minutes.clamp(1, full.max(1))
        }
        None => full,
    }
}

/// The delay before retry number `failures` (1 for the first failure): exponential from `base`,
/// capped at `max`, with "equal jitter" (`jitter` in `0.0..1.0` picks a point in the upper half),
/// so that many tasks rejected at once do not retry in lock-step.
pub fn retry_delay(failures: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    full.mul_f64(0.5 + 0.5 * jitter)
}

/// The delay before the next try after failure number `failures` of a streak, the last one of
/// kind `kind`: [`retry_delay`] for faults; for [`ErrorKind::Blocked`], `blocked_retry` × a random
/// 0.5–1.5 (`jitter` in `0.0..1.0`), however long the streak.
pub(crate) fn retry_delay_after(
    kind: ErrorKind,
    failures: u32,
    settings: &Settings,
    jitter: f64,
) -> Duration {
    match kind {
        ErrorKind::Blocked => settings.blocked_retry.mul_f64(0.5 + jitter.clamp(0.0, 1.0)),
        _ => retry_delay(
            failures,
            settings.backoff_base,
            settings.backoff_max,
            jitter,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn settings() -> Settings {
        Settings {
            duration_minutes: 10,
            maintain_percent: 20,
            refresh_percent: 80,
            ..Settings::default()
        }
    }

    fn input(s: &Settings, now: Instant, wanted: bool, ecs: EcsState) -> Input<'_> {
        Input {
            wanted,
            ecs,
            retry_at: None,
            skip_hold: false,
            deadline: None,
            settings: s,
            now,
        }
    }

    fn protected(t0: Instant) -> EcsState {
        EcsState::Protected {
            since: Some(t0),
            expires_at: t0 + 10 * MIN,
        }
    }

    #[test]
    fn wanted_and_unprotected_protects() {
        let s = settings();
        let now = Instant::now();
        assert_eq!(
            decide(input(&s, now, true, EcsState::Unprotected)),
            Decision::Protect { minutes: 10 }
        );
        assert_eq!(
            decide(input(&s, now, true, EcsState::Unknown)),
            Decision::Protect { minutes: 10 }
        );
    }

    #[test]
    fn not_wanted_and_unprotected_is_idle() {
        let s = settings();
        let now = Instant::now();
        assert_eq!(
            decide(input(&s, now, false, EcsState::Unprotected)),
            Decision::Idle
        );
        assert_eq!(
            decide(input(&s, now, false, EcsState::Unknown)),
            Decision::Idle
        );
    }

    #[test]
    fn wanted_and_protected_waits_for_the_refresh_mark() {
        let s = settings();
        let t0 = Instant::now();
        // 80 % of 10 minutes = 8 minutes after it was set.
        assert_eq!(
            decide(input(&s, t0 + MIN, true, protected(t0))),
            Decision::WaitUntil(t0 + 8 * MIN)
        );
        assert_eq!(
            decide(input(&s, t0 + 8 * MIN, true, protected(t0))),
            Decision::Protect { minutes: 10 }
        );
    }

    #[test]
    fn refresh_mark_follows_the_expiry_ecs_reports() {
        let s = settings();
        let t0 = Instant::now();
        // ECS says it expires after 5 minutes, not 10: refresh 2 minutes (20 %) before that.
        let ecs = EcsState::Protected {
            since: Some(t0),
            expires_at: t0 + 5 * MIN,
        };
        assert_eq!(
            decide(input(&s, t0, true, ecs)),
            Decision::WaitUntil(t0 + 3 * MIN)
        );
    }

    #[test]
    fn refresh_percent_100_refreshes_at_expiry_which_is_a_lapse() {
        let s = Settings {
            refresh_percent: 100,
            ..settings()
        };
        let t0 = Instant::now();
        assert_eq!(
            decide(input(&s, t0, true, protected(t0))),
            Decision::WaitUntil(t0 + 10 * MIN)
        );
        assert_eq!(
            decide(input(&s, t0 + 10 * MIN, true, protected(t0))),
            Decision::Lapsed
        );
    }

    #[test]
    fn release_within_maintain_share_holds_over() {
        let s = settings();
        let t0 = Instant::now();
        // maintain 20 % of 10 minutes = 2 minutes.
        assert_eq!(
            decide(input(&s, t0 + MIN, false, protected(t0))),
            Decision::WaitUntil(t0 + 2 * MIN)
        );
        assert_eq!(
            decide(input(&s, t0 + 2 * MIN, false, protected(t0))),
            Decision::Release
        );
    }

    #[test]
    fn release_after_maintain_share_is_immediate() {
        let s = settings();
        let t0 = Instant::now();
        assert_eq!(
            decide(input(&s, t0 + 5 * MIN, false, protected(t0))),
            Decision::Release
        );
    }

    #[test]
    fn maintain_zero_releases_at_once() {
        let s = Settings {
            maintain_percent: 0,
            ..settings()
        };
        let t0 = Instant::now();
        assert_eq!(
            decide(input(&s, t0, false, protected(t0))),
            Decision::Release
        );
    }

    #[test]
    fn draining_skips_the_hold_over() {
        let s = settings();
        let t0 = Instant::now();
        let mut i = input(&s, t0 + MIN, false, protected(t0));
        i.skip_hold = true;
        assert_eq!(decide(i), Decision::Release);
    }

    #[test]
    fn protection_found_at_start_up_is_released_without_hold_over() {
        let s = settings();
        let t0 = Instant::now();
        let ecs = EcsState::Protected {
            since: None,
            expires_at: t0 + 5 * MIN,
        };
        assert_eq!(decide(input(&s, t0, false, ecs)), Decision::Release);
    }

    #[test]
    fn expired_protection_lapses_whether_wanted_or_not() {
        let s = settings();
        let t0 = Instant::now();
        assert_eq!(
            decide(input(&s, t0 + 10 * MIN, true, protected(t0))),
            Decision::Lapsed
        );
        assert_eq!(
            decide(input(&s, t0 + 11 * MIN, false, protected(t0))),
            Decision::Lapsed
        );
    }

    #[test]
    fn back_off_delays_every_call() {
        let s = settings();
        let t0 = Instant::now();
        let retry = t0 + Duration::from_secs(4);
        let mut i = input(&s, t0, true, EcsState::Unprotected);
        i.retry_at = Some(retry);
        assert_eq!(decide(i), Decision::WaitUntil(retry));
        i.now = retry;
        assert_eq!(decide(i), Decision::Protect { minutes: 10 });

        // Release is backed off too.
        let mut i = input(&s, t0 + 5 * MIN, false, protected(t0));
        i.retry_at = Some(t0 + 5 * MIN + Duration::from_secs(4));
        assert_eq!(
            decide(i),
            Decision::WaitUntil(t0 + 5 * MIN + Duration::from_secs(4))
        );
    }

    #[test]
    fn back_off_never_hides_the_expiry() {
        let s = settings();
        let t0 = Instant::now();
        let mut i = input(&s, t0 + 9 * MIN, true, protected(t0));
        i.retry_at = Some(t0 + 20 * MIN);
        assert_eq!(decide(i), Decision::WaitUntil(t0 + 10 * MIN));
    }

    #[test]
    fn back_off_does_not_hold_an_idle_task() {
        let s = settings();
        let t0 = Instant::now();
        let mut i = input(&s, t0, false, EcsState::Unprotected);
        i.retry_at = Some(t0 + MIN);
        assert_eq!(decide(i), Decision::Idle);
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        assert_eq!(retry_delay(1, base, max, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(2, base, max, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(3, base, max, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(7, base, max, 1.0), Duration::from_secs(60));
        assert_eq!(retry_delay(1000, base, max, 1.0), Duration::from_secs(60));
        assert_eq!(retry_delay(3, base, max, 0.0), Duration::from_secs(2));
        let d = retry_delay(3, base, max, 0.5);
        assert!(d > Duration::from_secs(2) && d < Duration::from_secs(4));
    }

    #[test]
    fn deployment_blocked_is_retried_on_a_slow_steady_cadence_not_the_fault_back_off() {
        let s = Settings::DEFAULT;
        for failures in [1, 2, 10, 1000] {
            assert_eq!(
                retry_delay_after(ErrorKind::Blocked, failures, &s, 0.5),
                Duration::from_secs(30),
                "the cadence does not grow with the streak"
            );
        }
        assert_eq!(
            retry_delay_after(ErrorKind::Blocked, 1, &s, 0.0),
            Duration::from_secs(15)
        );
        assert_eq!(
            retry_delay_after(ErrorKind::Blocked, 1, &s, 1.0),
            Duration::from_secs(45)
        );
        // Faults keep the quick exponential back-off.
        assert_eq!(
            retry_delay_after(ErrorKind::Server, 1, &s, 1.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_delay_after(ErrorKind::Server, 5, &s, 1.0),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn before_a_deadline_a_protect_call_asks_only_for_the_minutes_left() {
        let s = settings();
        let t0 = Instant::now();
        let mut i = input(&s, t0, true, EcsState::Unprotected);
        i.deadline = Some(t0 + 3 * MIN + Duration::from_secs(10));
        assert_eq!(decide(i), Decision::Protect { minutes: 4 });
        // Never more than the setting, never less than ECS's minimum of one minute.
        i.deadline = Some(t0 + 60 * MIN);
        assert_eq!(decide(i), Decision::Protect { minutes: 10 });
        i.deadline = Some(t0 + Duration::from_secs(5));
        assert_eq!(decide(i), Decision::Protect { minutes: 1 });
    }

    #[test]
    fn protection_that_lasts_until_the_deadline_is_not_refreshed() {
        let s = settings();
        let t0 = Instant::now();
        // Refresh is due at 8 min, but the deadline (9 min) comes before the expiry (10 min).
        let mut i = input(&s, t0 + 8 * MIN, true, protected(t0));
        i.deadline = Some(t0 + 9 * MIN);
        assert_eq!(decide(i), Decision::WaitUntil(t0 + 9 * MIN));
        // With a later deadline the refresh asks only for what is left of it (4 min at 8 min).
        i.deadline = Some(t0 + 12 * MIN);
        assert_eq!(decide(i), Decision::Protect { minutes: 4 });
    }

    #[test]
    fn at_the_deadline_protection_is_released_although_still_wanted() {
        let s = settings();
        let t0 = Instant::now();
        let mut i = input(&s, t0 + MIN, true, protected(t0));
        i.deadline = Some(t0 + MIN);
        // Inside the hold-over window too: the deadline skips it.
        assert_eq!(decide(i), Decision::Release);
        // And nothing new is asked for.
        let mut i = input(&s, t0 + 2 * MIN, true, EcsState::Unprotected);
        i.deadline = Some(t0 + MIN);
        assert_eq!(decide(i), Decision::Idle);
    }

    #[test]
    fn a_hold_over_ends_at_the_deadline() {
        let s = settings(); // hold-over: 20 % of 10 min = 2 min
        let t0 = Instant::now();
        let mut i = input(&s, t0 + Duration::from_secs(30), false, protected(t0));
        i.deadline = Some(t0 + MIN);
        assert_eq!(decide(i), Decision::WaitUntil(t0 + MIN));
    }

    #[test]
    fn settings_ranges_are_checked() {
        assert!(Settings::default().validate().is_ok());
        let bad = Settings {
            duration_minutes: 0,
            ..Settings::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.name, "duration_minutes");
        assert_eq!(e.range, "1..=2880");
        assert!(Settings {
            duration_minutes: 2881,
            ..Settings::default()
        }
        .validate()
        .is_err());
        assert!(Settings {
            maintain_percent: 101,
            ..Settings::default()
        }
        .validate()
        .is_err());
        assert!(Settings {
            refresh_percent: 0,
            ..Settings::default()
        }
        .validate()
        .is_err());
    }
}
