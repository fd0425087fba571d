//! Back-off for guests that reboot in a loop: a guest whose kernel panics
//! with `panic=1`, or whose init reboots at once, would otherwise have its
//! VMM restarted as fast as the host can, burning a CPU and flooding the
//! log. EC2 keeps restarting such an instance too, just not in a tight loop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Restarts within [`WINDOW`] that go without delay.
const FREE_RESTARTS: usize = 3;
/// How far back restarts count.
const WINDOW: Duration = Duration::from_secs(60);
/// The longest wait before a restart.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Recent restarts per instance.
#[derive(Debug, Default)]
pub struct RestartBackoff {
    recent: HashMap<String, Vec<Instant>>,
}

impl RestartBackoff {
    /// Records a restart of `id` at `now` and says how long to wait before
    /// it: nothing for the first [`FREE_RESTARTS`] within [`WINDOW`], then
    /// 1 s, 2 s, 4 s… up to [`MAX_DELAY`].
    pub fn next_delay(&mut self, id: &str, now: Instant) -> Duration {
        let times = self.recent.entry(id.to_string()).or_default();
        times.retain(|t| now.saturating_duration_since(*t) < WINDOW);
        times.push(now);
        let excess = times.len().saturating_sub(FREE_RESTARTS);
        if excess == 0 {
            return Duration::ZERO;
        }
        let exponent = u32::try_from(excess - 1).unwrap_or(u32::MAX).min(16);
        Duration::from_secs(1u64 << exponent).min(MAX_DELAY)
    }

    /// Forgets `id` (its instance stopped or terminated).
    pub fn forget(&mut self, id: &str) {
        self.recent.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reboot_loop_waits_longer_each_time_and_a_quiet_minute_resets_it() {
        let mut backoff = RestartBackoff::default();
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..10)
            .map(|i| {
                backoff
                    .next_delay("i-1", t0 + Duration::from_millis(100 * i))
                    .as_secs()
            })
            .collect();
        assert_eq!(delays, [0, 0, 0, 1, 2, 4, 8, 16, 32, 60]);
        assert_eq!(
            backoff.next_delay("i-2", t0),
            Duration::ZERO,
            "instances are counted apart"
        );
        let later = t0 + WINDOW + Duration::from_secs(2);
        assert_eq!(backoff.next_delay("i-1", later), Duration::ZERO);
        backoff.forget("i-1");
        assert!(!backoff.recent.contains_key("i-1"));
    }
}
