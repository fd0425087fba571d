//! Instance lifecycle: EC2's states with their codes, and the one function
//! that says what each event does to each state.
//!
//! Events come from two sides: the user (StartInstances, StopInstances,
//! RebootInstances, TerminateInstances) and the supervisor watching the VMM
//! process (started, exited, guest powered off). The database stores the
//! result with a compare-and-set on the previous state, so whichever side
//! loses a race re-reads and asks again.
//!
//! | from \ event    | VmmStarted | Stop        | VmmExited  | Start   | Reboot  | Terminate     | GuestPoweredOff      | Collected |
//! |-----------------|------------|-------------|------------|---------|---------|---------------|----------------------|-----------|
//! | pending         | running    | ✗           | stopped¹   | pending | ✗       | shutting-down | stopping/shutting-down² | –      |
//! | running         | running    | stopping⁴   | stopped¹   | running | running | shutting-down | stopping/shutting-down² | –      |
//! | stopping        | –          | stopping    | stopped    | ✗       | ✗       | shutting-down | stopping             | –         |
//! | stopped         | –          | stopped     | stopped    | pending | ✗       | shutting-down | –                    | –         |
//! | shutting-down   | –          | ✗           | terminated | ✗       | ✗       | shutting-down | shutting-down        | –         |
//! | terminated      | –          | ✗           | terminated | ✗       | ✗       | terminated    | –                    | terminated³ |
//!
//! ✗ = `IncorrectInstanceState` (a user asked for something EC2 refuses);
//! – = an event that cannot happen in that state (a supervisor bug or a stale
//! event), reported as [`TransitionError::UnexpectedEvent`]. `Launch` is
//! never legal on an existing instance: [`launch`] makes the first state.
//!
//! ¹ An unexpected VMM exit stops the instance (`Server.InternalError`) rather
//!   than terminating it: the root volume survives and the user can start it
//!   again, as EC2 does when a start fails.
//! ² By InstanceInitiatedShutdownBehavior.
//! ³ The record is deleted: `Transition::delete_record`.
//! ⁴ Hibernate (a stop whose memory is saved) moves the same way, with EC2's
//!   `Client.UserInitiatedHibernate` reason.

use std::fmt;

use time::OffsetDateTime;

/// EC2 instance states. The discriminants are EC2's state codes (the low
/// byte of `instanceState.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    Pending = 0,
    Running = 16,
    ShuttingDown = 32,
    Terminated = 48,
    Stopping = 64,
    Stopped = 80,
}

// `instanceState.name`; `ALL` is every state, for tables and exhaustive
// tests.
ec2_names! {
    InstanceState {
        Pending => "pending",
        Running => "running",
        ShuttingDown => "shutting-down",
        Terminated => "terminated",
        Stopping => "stopping",
        Stopped => "stopped",
    }
}

impl InstanceState {
    /// `instanceState.code`.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether an instance in this state holds host resources (a VMM, or
    /// one about to start or still exiting): what capacity checks count.
    pub fn holds_resources(self) -> bool {
        matches!(
            self,
            InstanceState::Pending
                | InstanceState::Running
                | InstanceState::Stopping
                | InstanceState::ShuttingDown
        )
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// InstanceInitiatedShutdownBehavior: what a guest poweroff does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ShutdownBehavior {
    #[default]
    Stop,
    Terminate,
}

ec2_names! {
    ShutdownBehavior {
        Stop => "stop",
        Terminate => "terminate",
    }
}

/// `stateReason`: why the instance is in its state, as EC2 words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateReason {
    pub code: String,
    pub message: String,
}

impl StateReason {
    fn new(code: &str, message: &str) -> StateReason {
        StateReason {
            code: code.to_string(),
            message: message.to_string(),
        }
    }

    /// What EC2 shows while an instance is pending.
    pub fn pending() -> StateReason {
        StateReason::new("pending", "pending")
    }

    pub fn user_initiated_shutdown() -> StateReason {
        StateReason::new(
            "Client.UserInitiatedShutdown",
            "Client.UserInitiatedShutdown: User initiated shutdown",
        )
    }

    pub fn user_initiated_hibernate() -> StateReason {
        StateReason::new(
            "Client.UserInitiatedHibernate",
            "Client.UserInitiatedHibernate: User initiated hibernate",
        )
    }

    pub fn instance_initiated_shutdown() -> StateReason {
        StateReason::new(
            "Client.InstanceInitiatedShutdown",
            "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
        )
    }

    /// The VMM failed; `detail` says how (exit status, signal, spawn error).
    pub fn internal_error(detail: &str) -> StateReason {
        StateReason {
            code: "Server.InternalError".to_string(),
            message: format!("Server.InternalError: {detail}"),
        }
    }
}

/// Why a VMM process ended, as the supervisor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmExit {
    /// It exited because it was asked to (stop, terminate) or because the
    /// guest powered off and the supervisor already reported that.
    Clean,
    /// It died on its own: crash, signal, failed spawn. The text goes into
    /// the state reason.
    Failed(String),
}

/// Something that happens to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// RunInstances created the instance (only [`launch`] accepts it).
    Launch,
    /// The VMM is up and the guest is booting.
    VmmStarted,
    /// StopInstances; `force` asks the supervisor to kill instead of asking
    /// the guest, which does not change the state machine.
    StopRequested { force: bool },
    /// StopInstances with Hibernate: stops like a stop, its memory saved
    /// (HibernationOptions are checked before this).
    HibernateRequested,
    /// The VMM process is gone.
    VmmExited { reason: VmmExit },
    /// StartInstances.
    StartRequested,
    /// RebootInstances: the instance stays running while the VMM restarts.
    RebootRequested,
    /// TerminateInstances (DisableApiTermination is checked before this).
    TerminateRequested,
    /// The guest powered itself off; the behaviour decides stop or terminate.
    GuestPoweredOff { behavior: ShutdownBehavior },
    /// The terminated instance is old enough to forget.
    Collected,
}

impl Event {
    /// Every event shape, for exhaustive tests.
    pub fn all() -> Vec<Event> {
        vec![
            Event::Launch,
            Event::VmmStarted,
            Event::StopRequested { force: false },
            Event::StopRequested { force: true },
            Event::HibernateRequested,
            Event::VmmExited {
                reason: VmmExit::Clean,
            },
            Event::VmmExited {
                reason: VmmExit::Failed("exit status 1".to_string()),
            },
            Event::StartRequested,
            Event::RebootRequested,
            Event::TerminateRequested,
            Event::GuestPoweredOff {
                behavior: ShutdownBehavior::Stop,
            },
            Event::GuestPoweredOff {
                behavior: ShutdownBehavior::Terminate,
            },
            Event::Collected,
        ]
    }

    /// The verb of EC2's IncorrectInstanceState message, for user requests.
    fn user_action(&self) -> Option<UserAction> {
        match self {
            Event::StopRequested { .. } | Event::HibernateRequested => Some(UserAction::Stop),
            Event::StartRequested => Some(UserAction::Start),
            Event::RebootRequested => Some(UserAction::Reboot),
            Event::TerminateRequested => Some(UserAction::Terminate),
            _ => None,
        }
    }
}

/// The user requests that can be refused with IncorrectInstanceState.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAction {
    Start,
    Stop,
    Reboot,
    Terminate,
}

impl UserAction {
    fn participle(self) -> &'static str {
        match self {
            UserAction::Start => "started",
            UserAction::Stop => "stopped",
            UserAction::Reboot => "rebooted",
            UserAction::Terminate => "terminated",
        }
    }
}

/// A field the transition sets, clears or leaves alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<T> {
    Keep,
    Clear,
    Set(T),
}

/// What an event does: the new state and what to record with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: InstanceState,
    pub to: InstanceState,
    pub state_reason: Update<StateReason>,
    /// `stateTransitionReason`, e.g. "User initiated (2026-11-25 23:00:00 GMT)".
    pub state_transition_reason: Update<String>,
    /// A start from stopped: EC2 resets `launchTime`.
    pub resets_launch_time: bool,
    /// The instance is collected: delete its record and tags.
    pub delete_record: bool,
}

impl Transition {
    fn to(from: InstanceState, to: InstanceState) -> Transition {
        Transition {
            from,
            to,
            state_reason: Update::Keep,
            state_transition_reason: Update::Keep,
            resets_launch_time: false,
            delete_record: false,
        }
    }

    /// Nothing changes: repeated requests (stop a stopped instance) succeed
    /// in EC2 and report the same previous and current state.
    fn unchanged(state: InstanceState) -> Transition {
        Transition::to(state, state)
    }

    fn reason(mut self, reason: StateReason) -> Transition {
        self.state_reason = Update::Set(reason);
        self
    }

    fn transition_reason(mut self, text: String) -> Transition {
        self.state_transition_reason = Update::Set(text);
        self
    }

    /// Whether the stored state changes.
    pub fn changes_state(&self) -> bool {
        self.from != self.to
    }
}

/// Why an event does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// EC2's `IncorrectInstanceState`.
    #[error("The instance '{instance_id}' is not in a state from which it can be {}.", action.participle())]
    IncorrectInstanceState {
        instance_id: String,
        state: InstanceState,
        action: UserAction,
    },
    /// A supervisor event that makes no sense in this state: stale or a bug.
    /// The API should never show this to a user as anything but an internal
    /// error.
    #[error("instance '{instance_id}' is {state}: event {event:?} does not apply")]
    UnexpectedEvent {
        instance_id: String,
        state: InstanceState,
        event: Event,
    },
}

impl TransitionError {
    /// The EC2 error code.
    pub fn code(&self) -> &'static str {
        match self {
            TransitionError::IncorrectInstanceState { .. } => "IncorrectInstanceState",
            TransitionError::UnexpectedEvent { .. } => "InternalError",
        }
    }
}

/// `stateTransitionReason` for something the user asked for.
pub fn user_initiated(now: OffsetDateTime) -> String {
    format!("User initiated ({})", super::format_gmt(now))
}

/// The state a new instance starts in.
pub fn launch() -> Transition {
    Transition::to(InstanceState::Pending, InstanceState::Pending).reason(StateReason::pending())
}

/// What `event` does to an instance in state `from` at time `now`.
pub fn transition(
    instance_id: &str,
    from: InstanceState,
    event: &Event,
    now: OffsetDateTime,
) -> Result<Transition, TransitionError> {
    use InstanceState::*;

    let refuse = || match event.user_action() {
        Some(action) => TransitionError::IncorrectInstanceState {
            instance_id: instance_id.to_string(),
            state: from,
            action,
        },
        None => TransitionError::UnexpectedEvent {
            instance_id: instance_id.to_string(),
            state: from,
            event: event.clone(),
        },
    };
    let user_stop = |to| {
        Transition::to(from, to)
            .reason(StateReason::user_initiated_shutdown())
            .transition_reason(user_initiated(now))
    };

    let t = match (from, event) {
        (_, Event::Launch) => return Err(refuse()),

        (Pending, Event::VmmStarted) => {
            let mut t = Transition::to(Pending, Running);
            t.state_reason = Update::Clear;
            t
        }
        // The VMM came back after a reboot.
        (Running, Event::VmmStarted) => Transition::unchanged(Running),

        (Running, Event::StopRequested { .. }) => user_stop(Stopping),
        // Repeating a stop is fine; `force` escalates in the supervisor.
        (Stopping, Event::StopRequested { .. }) => Transition::unchanged(Stopping),
        (Stopped, Event::StopRequested { .. }) => Transition::unchanged(Stopped),
        (Running, Event::HibernateRequested) => Transition::to(Running, Stopping)
            .reason(StateReason::user_initiated_hibernate())
            .transition_reason(user_initiated(now)),
        (Stopping | Stopped, Event::HibernateRequested) => Transition::unchanged(from),

        (Pending | Running, Event::VmmExited { reason }) => {
            let detail = match reason {
                VmmExit::Clean => "the VMM exited unexpectedly",
                VmmExit::Failed(detail) => detail.as_str(),
            };
            Transition::to(from, Stopped)
                .reason(StateReason::internal_error(detail))
                .transition_reason(format!("Server initiated ({})", super::format_gmt(now)))
        }
        (Stopping, Event::VmmExited { .. }) => Transition::to(Stopping, Stopped),
        (ShuttingDown, Event::VmmExited { .. }) => Transition::to(ShuttingDown, Terminated),
        // A duplicate report, e.g. after the daemon restarted and reconciled.
        (Stopped | Terminated, Event::VmmExited { .. }) => Transition::unchanged(from),

        (Stopped, Event::StartRequested) => {
            let mut t = Transition::to(Stopped, Pending).reason(StateReason::pending());
            t.state_transition_reason = Update::Clear;
            t.resets_launch_time = true;
            t
        }
        (Pending | Running, Event::StartRequested) => Transition::unchanged(from),

        (Running, Event::RebootRequested) => Transition::unchanged(Running),

        (Pending | Running | Stopping | Stopped, Event::TerminateRequested) => {
            user_stop(ShuttingDown)
        }
        (ShuttingDown | Terminated, Event::TerminateRequested) => Transition::unchanged(from),

        (Pending | Running, Event::GuestPoweredOff { behavior }) => {
            let to = match behavior {
                ShutdownBehavior::Stop => Stopping,
                ShutdownBehavior::Terminate => ShuttingDown,
            };
            Transition::to(from, to)
                .reason(StateReason::instance_initiated_shutdown())
                .transition_reason(format!(
                    "Instance initiated shutdown ({})",
                    super::format_gmt(now)
                ))
        }
        // The guest obeyed our own ACPI shutdown request.
        (Stopping | ShuttingDown, Event::GuestPoweredOff { .. }) => Transition::unchanged(from),

        (Terminated, Event::Collected) => {
            let mut t = Transition::unchanged(Terminated);
            t.delete_record = true;
            t
        }

        _ => return Err(refuse()),
    };
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState::*;

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-11-25 23:00:00 UTC)
    }

    /// The expected outcome of one (state, event) pair.
    #[derive(Debug, PartialEq)]
    enum Expect {
        To(InstanceState),
        Refused,
        Unexpected,
    }

    /// The table from the module docs, written out once more by hand.
    fn expected(from: InstanceState, event: &Event) -> Expect {
        use Expect::*;
        match event {
            Event::Launch => Unexpected,
            Event::VmmStarted => match from {
                Pending | Running => To(Running),
                _ => Unexpected,
            },
            Event::StopRequested { .. } | Event::HibernateRequested => match from {
                Running | Stopping => To(Stopping),
                Stopped => To(Stopped),
                Pending | ShuttingDown | Terminated => Refused,
            },
            Event::VmmExited { .. } => match from {
                Pending | Running | Stopping | Stopped => To(Stopped),
                ShuttingDown | Terminated => To(Terminated),
            },
            Event::StartRequested => match from {
                Stopped | Pending => To(Pending),
                Running => To(Running),
                Stopping | ShuttingDown | Terminated => Refused,
            },
            Event::RebootRequested => match from {
                Running => To(Running),
                _ => Refused,
            },
            Event::TerminateRequested => match from {
                Terminated => To(Terminated),
                _ => To(ShuttingDown),
            },
            Event::GuestPoweredOff { behavior } => match (from, behavior) {
                (Pending | Running, ShutdownBehavior::Stop) | (Stopping, _) => To(Stopping),
                (Pending | Running, ShutdownBehavior::Terminate) | (ShuttingDown, _) => {
                    To(ShuttingDown)
                }
                (Stopped | Terminated, _) => Unexpected,
            },
            Event::Collected => match from {
                Terminated => To(Terminated),
                _ => Unexpected,
            },
        }
    }

    #[test]
    fn every_state_event_pair_matches_the_table() {
        let mut checked = 0;
        for from in InstanceState::ALL {
            for event in Event::all() {
                let got = match transition("i-0123456789abcdef0", from, &event, now()) {
                    Ok(t) => {
                        assert_eq!(t.from, from);
                        Expect::To(t.to)
                    }
                    Err(TransitionError::IncorrectInstanceState { state, .. }) => {
                        assert_eq!(state, from);
                        Expect::Refused
                    }
                    Err(TransitionError::UnexpectedEvent { state, .. }) => {
                        assert_eq!(state, from);
                        Expect::Unexpected
                    }
                };
                assert_eq!(got, expected(from, &event), "{from} + {event:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 6 * 13);
    }

    #[test]
    fn refusals_use_ec2_wording() {
        let err = transition(
            "i-0123456789abcdef0",
            Terminated,
            &Event::StartRequested,
            now(),
        )
        .expect_err("terminated cannot start");
        assert_eq!(err.code(), "IncorrectInstanceState");
        assert_eq!(
            err.to_string(),
            "The instance 'i-0123456789abcdef0' is not in a state from which it can be started."
        );
        let err = transition("i-1", Stopped, &Event::RebootRequested, now()).expect_err("reboot");
        assert!(err.to_string().ends_with("can be rebooted."), "{err}");
        let err = transition("i-1", Pending, &Event::StopRequested { force: true }, now())
            .expect_err("stop pending");
        assert!(err.to_string().ends_with("can be stopped."), "{err}");
    }

    #[test]
    fn supervisor_events_out_of_place_are_not_user_errors() {
        let err = transition("i-1", Stopped, &Event::VmmStarted, now()).expect_err("stale");
        assert_eq!(err.code(), "InternalError");
    }

    #[test]
    fn user_stop_records_reason_and_time() {
        let t = transition(
            "i-1",
            Running,
            &Event::StopRequested { force: false },
            now(),
        )
        .expect("running can stop");
        assert_eq!(
            t.state_reason,
            Update::Set(StateReason {
                code: "Client.UserInitiatedShutdown".into(),
                message: "Client.UserInitiatedShutdown: User initiated shutdown".into(),
            })
        );
        assert_eq!(
            t.state_transition_reason,
            Update::Set("User initiated (2026-11-25 23:00:00 GMT)".into())
        );
    }

    #[test]
    fn hibernate_records_ec2_s_hibernate_reason() {
        let t = transition("i-1", Running, &Event::HibernateRequested, now())
            .expect("running can hibernate");
        assert_eq!(t.to, Stopping);
        assert_eq!(
            t.state_reason,
            Update::Set(StateReason {
                code: "Client.UserInitiatedHibernate".into(),
                message: "Client.UserInitiatedHibernate: User initiated hibernate".into(),
            })
        );
        let err = transition("i-1", Pending, &Event::HibernateRequested, now())
            .expect_err("pending cannot hibernate");
        assert!(
            err.to_string().contains("from which it can be stopped"),
            "{err}"
        );
    }

    #[test]
    fn guest_poweroff_follows_shutdown_behavior() {
        for (behavior, to) in [
            (ShutdownBehavior::Stop, Stopping),
            (ShutdownBehavior::Terminate, ShuttingDown),
        ] {
            let t = transition("i-1", Running, &Event::GuestPoweredOff { behavior }, now())
                .expect("running guest can power off");
            assert_eq!(t.to, to);
            assert_eq!(
                t.state_reason,
                Update::Set(StateReason::instance_initiated_shutdown())
            );
        }
    }

    #[test]
    fn vmm_crash_stops_with_internal_error() {
        let t = transition(
            "i-1",
            Running,
            &Event::VmmExited {
                reason: VmmExit::Failed("killed by signal 9".into()),
            },
            now(),
        )
        .expect("crash is handled");
        assert_eq!(t.to, Stopped);
        assert_eq!(
            t.state_reason,
            Update::Set(StateReason {
                code: "Server.InternalError".into(),
                message: "Server.InternalError: killed by signal 9".into(),
            })
        );
    }

    #[test]
    fn start_from_stopped_resets_launch_time_and_reasons() {
        let t = transition("i-1", Stopped, &Event::StartRequested, now()).expect("start");
        assert!(t.resets_launch_time);
        assert_eq!(t.state_reason, Update::Set(StateReason::pending()));
        assert_eq!(t.state_transition_reason, Update::Clear);
        let t = transition("i-1", Pending, &Event::VmmStarted, now()).expect("boot");
        assert_eq!(t.state_reason, Update::Clear);
    }

    #[test]
    fn only_collection_deletes_the_record() {
        for from in InstanceState::ALL {
            for event in Event::all() {
                if let Ok(t) = transition("i-1", from, &event, now()) {
                    assert_eq!(
                        t.delete_record,
                        event == Event::Collected,
                        "{from} {event:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn codes_and_names_are_ec2s() {
        let table = [
            (Pending, 0, "pending"),
            (Running, 16, "running"),
            (ShuttingDown, 32, "shutting-down"),
            (Terminated, 48, "terminated"),
            (Stopping, 64, "stopping"),
            (Stopped, 80, "stopped"),
        ];
        for (state, code, name) in table {
            assert_eq!(state.code(), code);
            assert_eq!(state.name(), name);
            assert_eq!(InstanceState::from_name(name), Some(state));
        }
        assert_eq!(InstanceState::from_name("Running"), None);
        assert_eq!(launch().to, Pending);
    }
}
