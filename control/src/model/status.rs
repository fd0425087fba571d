//! Instance status checks (DescribeInstanceStatus): what the record of a
//! VMM's start and its agent's check-in means at a given moment.
//!
//! EC2's instance status check asks whether the guest is reachable. Here
//! the in-guest agent answers it by checking in over vsock once per boot:
//! `initializing` until it does, `ok` once it has, and `impaired` once the
//! deadline set when the VMM started has passed without a check-in. The
//! deadline is stored with the record, so the verdict needs no timer and
//! survives a daemon restart.

use time::OffsetDateTime;

/// How long a guest has, by default, from its VMM's start to its agent's
/// check-in: lab-minimal checks in after ~1 s on bare metal and ~50 s where
/// the guest kernel is emulated; a debian-12 boot with cloud-init takes
/// longer. EC2 itself reports `initializing` for several minutes.
pub const DEFAULT_CHECKIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// One VMM start of an instance and what its agent has said since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckinRecord {
    /// When the VMM was started (reset on every start and reboot).
    pub vmm_started: OffsetDateTime,
    /// When the status turns `impaired` without a check-in.
    pub deadline: OffsetDateTime,
    /// The agent's check-in for this VMM, if any.
    pub checked_in: Option<OffsetDateTime>,
    /// The boot id it sent.
    pub boot_id: Option<String>,
}

/// The instance status check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceHealth {
    /// Waiting for the agent.
    Initializing,
    /// The agent checked in.
    Ok,
    /// The agent did not check in before the deadline, which is `since`.
    Impaired {
        /// When the check failed.
        since: OffsetDateTime,
    },
}

impl InstanceHealth {
    /// The EC2 status name (`ok`, `initializing`, `impaired`).
    pub fn status(self) -> &'static str {
        match self {
            InstanceHealth::Initializing => "initializing",
            InstanceHealth::Ok => "ok",
            InstanceHealth::Impaired { .. } => "impaired",
        }
    }

    /// The reachability detail (`passed`, `initializing`, `failed`).
    pub fn reachability(self) -> &'static str {
        match self {
            InstanceHealth::Initializing => "initializing",
            InstanceHealth::Ok => "passed",
            InstanceHealth::Impaired { .. } => "failed",
        }
    }

    /// When reachability failed, for `ImpairedSince`.
    pub fn impaired_since(self) -> Option<OffsetDateTime> {
        match self {
            InstanceHealth::Impaired { since } => Some(since),
            _ => None,
        }
    }
}

impl CheckinRecord {
    /// A fresh record for a VMM started at `started`, impaired after
    /// `timeout` without a check-in.
    pub fn started(started: OffsetDateTime, timeout: std::time::Duration) -> Self {
        Self {
            vmm_started: started,
            deadline: started + timeout,
            checked_in: None,
            boot_id: None,
        }
    }

    /// The verdict at `now`. A late check-in still counts: the guest is
    /// reachable now, which is what the check reports.
    pub fn health_at(&self, now: OffsetDateTime) -> InstanceHealth {
        match self.checked_in {
            Some(_) => InstanceHealth::Ok,
            None if now >= self.deadline => InstanceHealth::Impaired {
                since: self.deadline,
            },
            None => InstanceHealth::Initializing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00:00 UTC);

    #[test]
    fn a_guest_is_initializing_until_its_check_in_then_ok() {
        let mut record = CheckinRecord::started(T0, Duration::from_secs(600));
        assert_eq!(record.health_at(T0), InstanceHealth::Initializing);
        assert_eq!(
            record.health_at(T0 + Duration::from_secs(599)),
            InstanceHealth::Initializing
        );
        record.checked_in = Some(T0 + Duration::from_secs(50));
        let health = record.health_at(T0 + Duration::from_secs(60));
        assert_eq!(
            (
                health.status(),
                health.reachability(),
                health.impaired_since()
            ),
            ("ok", "passed", None)
        );
    }

    #[test]
    fn a_guest_silent_past_the_deadline_is_impaired_since_the_deadline() {
        let record = CheckinRecord::started(T0, Duration::from_secs(10));
        let health = record.health_at(T0 + Duration::from_secs(3600));
        assert_eq!(
            (
                health.status(),
                health.reachability(),
                health.impaired_since()
            ),
            ("impaired", "failed", Some(T0 + Duration::from_secs(10)))
        );
    }

    #[test]
    fn a_late_check_in_clears_impaired() {
        let mut record = CheckinRecord::started(T0, Duration::from_secs(10));
        record.checked_in = Some(T0 + Duration::from_secs(20));
        assert_eq!(
            record.health_at(T0 + Duration::from_secs(30)),
            InstanceHealth::Ok
        );
    }
}
