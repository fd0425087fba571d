//! Pausing: how the VMM stops every thread that can touch guest state, and
//! the seam snapshot and restore will build on.
//!
//! Two kinds of thread act on the guest: the vCPU threads (guest code, port
//! and MMIO exits) and the device event thread (virtio queues and their
//! backends: taps, sockets, disk files). A paused VM is one where all of
//! them sit parked at a point where nothing is half done, so their state can
//! be read (later: saved) and nothing reaches the host on the guest's
//! behalf. Each such thread is driven through a [`ParkControl`] and
//! exposed to the VMM as a [`Pausable`].
//!
//! Pausing is two-phase, as in Cloud Hypervisor's `Pausable` and
//! Firecracker's `pause_vm`: ask every part first, then wait for each one's
//! acknowledgement against one deadline, so N vCPUs cost one timeout, not
//! N. A part that does not acknowledge in time fails the whole pause and
//! every part is resumed: the VM is then running as before, and the caller
//! is told so rather than being handed a VM that is half paused.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::devices::bus::lock;

/// Errors pausing.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// A part did not park before the deadline; the VM was resumed.
    #[error("{part} did not pause within {timeout:?}; the VM was resumed and is running")]
    Timeout {
        /// Which part ("vcpu0", "the device event thread").
        part: String,
        /// How long it was given.
        timeout: Duration,
    },
}

/// What the VMM wants a parkable thread to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Do its work.
    Run,
    /// Stop at the next safe point and wait.
    Pause,
    /// Stop and end the thread.
    Exit,
}

/// Where a parkable thread is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Not started, or working.
    Running,
    /// Parked on a pause request.
    Paused,
    /// Thread finished.
    Exited,
}

#[derive(Debug)]
struct ParkState {
    request: Request,
    activity: Activity,
}

/// The request a thread obeys and the activity it reports, shared between
/// the thread and the VMM. The thread calls [`Self::wait_runnable`] at its
/// safe points; the VMM sets requests and waits for activities.
#[derive(Debug)]
pub struct ParkControl {
    state: Mutex<ParkState>,
    changed: Condvar,
}

impl Default for ParkControl {
    fn default() -> Self {
        Self::new()
    }
}

impl ParkControl {
    /// A control that asks the thread to run.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(ParkState {
                request: Request::Run,
                activity: Activity::Running,
            }),
            changed: Condvar::new(),
        }
    }

    /// Sets the request. `Exit` is final: a thread asked to exit is never
    /// asked to run again. The caller wakes the thread if it may be blocked
    /// elsewhere (a vCPU in KVM_RUN, the event thread in epoll).
    pub fn request(&self, request: Request) {
        let mut s = lock(&self.state);
        if s.request != Request::Exit {
            s.request = request;
        }
        self.changed.notify_all();
    }

    /// The current request.
    pub fn requested(&self) -> Request {
        lock(&self.state).request
    }

    /// Waits until the thread's activity satisfies `done`, up to `timeout`;
    /// returns whether it does.
    pub fn wait_for(&self, done: impl Fn(Activity) -> bool, timeout: Duration) -> bool {
        let s = lock(&self.state);
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| !done(s.activity))
            .unwrap_or_else(PoisonError::into_inner);
        done(s.activity)
    }

    /// The thread's current activity.
    pub fn activity(&self) -> Activity {
        lock(&self.state).activity
    }

    /// Records the thread's activity (the thread calls this, with
    /// `Exited`, as it ends).
    pub fn set_activity(&self, activity: Activity) {
        lock(&self.state).activity = activity;
        self.changed.notify_all();
    }

    /// Called by the thread at a safe point: returns at once while the
    /// request is `Run`, parks while it is `Pause`, and returns false when
    /// the thread must exit.
    ///
    /// Before it reports `Paused`, the thread gets to finish what must not
    /// stay half done (`settle`, run without the lock held so the VMM is
    /// never blocked on it): a vCPU completes its last port or MMIO access
    /// inside KVM. The acknowledgement therefore means "settled", which is
    /// what a snapshot will need.
    pub fn wait_runnable(&self, mut settle: impl FnMut()) -> bool {
        let mut s = lock(&self.state);
        loop {
            match s.request {
                Request::Run => {
                    if s.activity != Activity::Running {
                        s.activity = Activity::Running;
                        self.changed.notify_all();
                    }
                    return true;
                }
                Request::Exit => return false,
                Request::Pause => {
                    if s.activity != Activity::Paused {
                        drop(s);
                        settle();
                        s = lock(&self.state);
                        if s.request != Request::Pause {
                            // Resumed (or told to exit) while settling.
                            continue;
                        }
                        s.activity = Activity::Paused;
                        self.changed.notify_all();
                    }
                    s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

/// A part of the VM that can be stopped at a safe point and started again:
/// each vCPU, the device manager. Snapshot and restore will extend this
/// (save and load the state of a paused part) rather than reach into the
/// parts themselves.
pub trait Pausable {
    /// The part's name for errors and logs ("vcpu0").
    fn name(&self) -> String;

    /// Asks the part to park at its next safe point, without waiting, so
    /// that many parts can be asked before any is waited for.
    fn request_pause(&self);

    /// Whether the part has parked (or ended, which stops it as surely) by
    /// `deadline`.
    fn wait_paused(&self, deadline: Instant) -> bool;

    /// Lets the part run again; harmless on a part that is not paused.
    fn resume(&self);
}

/// Pauses every part of `parts` within `timeout`: all are asked first, then
/// each one's acknowledgement is awaited. If one does not acknowledge, every
/// part is resumed and the error names it.
pub fn pause_all(parts: &[&dyn Pausable], timeout: Duration) -> Result<(), PauseError> {
    let deadline = Instant::now() + timeout;
    for part in parts {
        part.request_pause();
    }
    for part in parts {
        if !part.wait_paused(deadline) {
            resume_all(parts);
            return Err(PauseError::Timeout {
                part: part.name(),
                timeout,
            });
        }
    }
    Ok(())
}

/// Resumes every part of `parts`, in reverse order of pausing.
pub fn resume_all(parts: &[&dyn Pausable]) {
    for part in parts.iter().rev() {
        part.resume();
    }
}

/// Time left until `deadline` (zero once it has passed).
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn exit_request_is_final() {
        let c = ParkControl::new();
        c.request(Request::Exit);
        c.request(Request::Run);
        assert!(!c.wait_runnable(|| {}));
    }

    #[test]
    fn pause_parks_after_settling_until_resumed() {
        let c = Arc::new(ParkControl::new());
        let settled = Arc::new(AtomicUsize::new(0));
        c.request(Request::Pause);
        let (c2, s2) = (c.clone(), settled.clone());
        let t = std::thread::spawn(move || {
            c2.wait_runnable(|| {
                s2.fetch_add(1, Ordering::SeqCst);
            })
        });
        assert!(c.wait_for(|a| a == Activity::Paused, Duration::from_secs(5)));
        assert_eq!(settled.load(Ordering::SeqCst), 1, "settled once, first");
        c.request(Request::Run);
        assert!(t.join().expect("thread"));
        assert_eq!(c.activity(), Activity::Running);
    }

    #[test]
    fn a_resume_while_settling_never_reports_paused() {
        let c = Arc::new(ParkControl::new());
        c.request(Request::Pause);
        let c2 = c.clone();
        assert!(c.wait_runnable(move || c2.request(Request::Run)));
        assert_eq!(c.activity(), Activity::Running);
    }

    /// A part that parks only if told it may.
    struct Part {
        name: &'static str,
        parks: bool,
        asked: AtomicBool,
        resumed: AtomicBool,
    }

    impl Part {
        fn new(name: &'static str, parks: bool) -> Self {
            Self {
                name,
                parks,
                asked: AtomicBool::new(false),
                resumed: AtomicBool::new(false),
            }
        }
    }

    impl Pausable for Part {
        fn name(&self) -> String {
            self.name.to_string()
        }
        fn request_pause(&self) {
            self.asked.store(true, Ordering::SeqCst);
        }
        fn wait_paused(&self, deadline: Instant) -> bool {
            if !self.parks {
                std::thread::sleep(remaining(deadline));
            }
            self.parks
        }
        fn resume(&self) {
            self.resumed.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn pause_all_asks_every_part_before_waiting_and_resumes_none_on_success() {
        let (a, b) = (Part::new("a", true), Part::new("b", true));
        pause_all(&[&a, &b], Duration::from_millis(50)).expect("paused");
        assert!(a.asked.load(Ordering::SeqCst) && b.asked.load(Ordering::SeqCst));
        assert!(!a.resumed.load(Ordering::SeqCst) && !b.resumed.load(Ordering::SeqCst));
    }

    #[test]
    fn a_part_that_does_not_park_fails_the_pause_by_name_and_every_part_is_resumed() {
        let (a, stuck, c) = (
            Part::new("a", true),
            Part::new("stuck", false),
            Part::new("c", true),
        );
        let started = Instant::now();
        let err = pause_all(&[&a, &stuck, &c], Duration::from_millis(50))
            .expect_err("a part never parked");
        assert!(started.elapsed() < Duration::from_secs(2), "one deadline");
        assert!(err.to_string().contains("stuck did not pause"), "{err}");
        for p in [&a, &stuck, &c] {
            assert!(p.asked.load(Ordering::SeqCst), "{} asked", p.name);
            assert!(p.resumed.load(Ordering::SeqCst), "{} resumed", p.name);
        }
    }
}
