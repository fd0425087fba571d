//! The stall watchdog: notices a guest that has stopped making progress, so
//! that nobody waits forever on a boot that will never finish.
//!
//! Progress is any exit to the VMM (serial output is port I/O, so it counts
//! too). A guest may legitimately make no exit for a long time: an idle one
//! sleeps in HLT with interrupts on, a busy user program runs natively. So
//! when the quiet lasts `timeout`, each vCPU is kicked out of KVM_RUN and
//! sampled, and only a vCPU that is running guest *kernel* code (not halted),
//! or is halted with interrupts off (a dead CPU), is reported as stalled.
//! Seen on hosts that emulate the guest kernel: a guest with no usable TSC
//! frequency spinning at 94% CPU for minutes with frozen exit counters.
//! The watchdog only reports (API `stall`, a log line); what to do is the
//! control plane's decision.

use std::time::{Duration, Instant};

/// The report's types are the contract crate's: `GET /vm` carries them
/// under `stall`, the control plane reads them with the same types, and
/// their `Display` is the VMM's log line.
pub use ec2lab_vmm_api::api::{Stall, StuckVcpu, VcpuSample};

/// Whether this sample means the vCPU is stuck rather than idle or busy in
/// user space.
pub fn is_stuck(sample: &VcpuSample) -> bool {
    if sample.halted {
        !sample.interrupts_enabled
    } else {
        sample.kernel_mode
    }
}

/// What the main loop should do after [`StallWatchdog::observe`].
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing.
    Wait,
    /// Sample every vCPU and call [`StallWatchdog::judge`].
    Sample,
    /// Progress resumed after a reported stall.
    Resumed,
}

/// Stall detection state, fed by the VMM's main loop once a second.
#[derive(Debug)]
pub struct StallWatchdog {
    timeout: Duration,
    last_progress: u64,
    last_change: Instant,
    last_sampled: Option<Instant>,
    stall: Option<Stall>,
}

impl StallWatchdog {
    /// A watchdog reporting after `timeout` of quiet; `Duration::ZERO` is off.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            last_progress: 0,
            last_change: now,
            last_sampled: None,
            stall: None,
        }
    }

    /// The quiet period after which vCPUs are sampled.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The stall being reported, if any.
    pub fn stall(&self) -> Option<&Stall> {
        self.stall.as_ref()
    }

    /// Feeds the total progress count (exits of every vCPU, kicks excluded).
    pub fn observe(&mut self, progress: u64, now: Instant) -> Next {
        if progress != self.last_progress {
            self.last_progress = progress;
            self.last_change = now;
            self.last_sampled = None;
            return if self.stall.take().is_some() {
                Next::Resumed
            } else {
                Next::Wait
            };
        }
        if self.timeout.is_zero() || now.duration_since(self.last_change) < self.timeout {
            return Next::Wait;
        }
        // Sample once when the quiet reaches the timeout, then once per
        // timeout while it lasts: kicks are cheap but not free.
        match self.last_sampled {
            Some(at) if now.duration_since(at) < self.timeout => Next::Wait,
            _ => {
                self.last_sampled = Some(now);
                Next::Sample
            }
        }
    }

    /// Judges fresh samples (`None`: the vCPU did not answer); returns the
    /// stall when it is newly reported.
    pub fn judge(&mut self, samples: &[(u8, Option<VcpuSample>)], now: Instant) -> Option<&Stall> {
        let stuck: Vec<StuckVcpu> = samples
            .iter()
            .filter_map(|(id, s)| {
                s.filter(is_stuck)
                    .map(|sample| StuckVcpu { id: *id, sample })
            })
            .collect();
        let was_reported = self.stall.is_some();
        if stuck.is_empty() {
            self.stall = None;
            return None;
        }
        self.stall = Some(Stall {
            quiet_secs: now.duration_since(self.last_change).as_secs(),
            vcpus: stuck,
        });
        if was_reported {
            None
        } else {
            self.stall.as_ref()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL_SPIN: VcpuSample = VcpuSample {
        rip: 0xffff_ffff_8100_0000,
        kernel_mode: true,
        halted: false,
        interrupts_enabled: true,
    };
    const IDLE: VcpuSample = VcpuSample {
        rip: 0xffff_ffff_8100_0010,
        kernel_mode: true,
        halted: true,
        interrupts_enabled: true,
    };
    const USER_BUSY: VcpuSample = VcpuSample {
        rip: 0x40_1000,
        kernel_mode: false,
        halted: false,
        interrupts_enabled: true,
    };
    const DEAD: VcpuSample = VcpuSample {
        rip: 0xffff_ffff_8100_0020,
        kernel_mode: true,
        halted: true,
        interrupts_enabled: false,
    };

    #[test]
    fn only_kernel_spinning_and_dead_halts_count_as_stuck() {
        assert!(is_stuck(&KERNEL_SPIN));
        assert!(is_stuck(&DEAD));
        assert!(!is_stuck(&IDLE));
        assert!(!is_stuck(&USER_BUSY));
    }

    #[test]
    fn quiet_shorter_than_the_timeout_is_not_sampled() {
        let t0 = Instant::now();
        let mut w = StallWatchdog::new(Duration::from_secs(10), t0);
        assert_eq!(w.observe(5, t0), Next::Wait);
        assert_eq!(w.observe(5, t0 + Duration::from_secs(9)), Next::Wait);
        assert_eq!(w.observe(5, t0 + Duration::from_secs(10)), Next::Sample);
        assert_eq!(
            w.observe(5, t0 + Duration::from_secs(11)),
            Next::Wait,
            "once per timeout"
        );
        assert_eq!(w.observe(5, t0 + Duration::from_secs(20)), Next::Sample);
    }

    #[test]
    fn a_kernel_spin_is_reported_once_and_cleared_by_progress() {
        let t0 = Instant::now();
        let mut w = StallWatchdog::new(Duration::from_secs(10), t0);
        w.observe(7, t0);
        let t = t0 + Duration::from_secs(12);
        assert_eq!(w.observe(7, t), Next::Sample);
        let stall = w
            .judge(&[(0, Some(KERNEL_SPIN)), (1, Some(IDLE))], t)
            .cloned();
        let stall = stall.expect("reported");
        assert_eq!(stall.quiet_secs, 12);
        assert_eq!(stall.vcpus.len(), 1);
        assert_eq!(stall.vcpus[0].id, 0);
        assert!(stall
            .to_string()
            .contains("vcpu0 in guest kernel code at RIP 0xffffffff81000000"));
        let later = t0 + Duration::from_secs(22);
        assert_eq!(w.observe(7, later), Next::Sample);
        assert!(
            w.judge(&[(0, Some(KERNEL_SPIN))], later).is_none(),
            "not reported twice"
        );
        assert_eq!(
            w.stall().map(|s| s.quiet_secs),
            Some(22),
            "still visible, updated"
        );
        assert_eq!(w.observe(8, later), Next::Resumed);
        assert!(w.stall().is_none());
    }

    #[test]
    fn idle_and_user_busy_guests_are_not_stalled() {
        let t0 = Instant::now();
        let mut w = StallWatchdog::new(Duration::from_secs(1), t0);
        let t = t0 + Duration::from_secs(5);
        assert_eq!(w.observe(0, t), Next::Sample);
        assert!(w
            .judge(&[(0, Some(IDLE)), (1, Some(USER_BUSY)), (2, None)], t)
            .is_none());
        assert!(w.stall().is_none());
    }

    #[test]
    fn a_zero_timeout_turns_the_watchdog_off() {
        let t0 = Instant::now();
        let mut w = StallWatchdog::new(Duration::ZERO, t0);
        assert_eq!(w.observe(0, t0 + Duration::from_secs(100_000)), Next::Wait);
    }
}
