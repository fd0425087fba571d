//! The boot sequence: vsock check-in, then token, instance id, hostname,
//! ssh key, user data.
//!
//! Every step logs one line and the sequence always ends with
//! `ec2lab-guest: done`; nothing here fails the boot. Once the metadata
//! service is found unreachable the remaining steps are not tried, so an
//! instance without metadata boots after one bounded wait.

use std::path::PathBuf;

use crate::imds::{Imds, ImdsConfig, ImdsError, Session, TOKEN_TTL_SECONDS};
use crate::log::{self, Done, Outcome};
use crate::paths::is_safe_component;
use crate::{checkin, hostname, ssh_keys, user_data};

/// What the boot sequence works on.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// How to reach the metadata service.
    pub imds: ImdsConfig,
    /// Prefix for every file written (`/` in a real guest).
    pub root: PathBuf,
    /// The user whose `authorized_keys` gets the instance's keys.
    pub user: String,
    /// Also set the kernel's host name (only sensible when root is `/`).
    pub set_hostname: bool,
    /// Check in with the control plane over vsock first.
    pub checkin: bool,
}

/// Why the instance-id step failed.
#[derive(Debug, thiserror::Error)]
enum InstanceIdError {
    #[error(transparent)]
    Imds(#[from] ImdsError),
    #[error("metadata has no instance-id")]
    Missing,
    #[error("instance-id {0:?} is not a plain identifier")]
    Invalid(String),
}

/// Runs every step, logging each.
pub fn run(config: &BootConfig) {
    // First, and whatever the metadata service does: the status check
    // waits only for this.
    if config.checkin {
        let _ = log::report("checkin", checkin::run());
    } else {
        log::line("checkin", Outcome::Skipped, "disabled (--no-checkin)");
    }
    run_steps(config);
    log::done();
}

fn run_steps(config: &BootConfig) {
    let mut imds = match Imds::connect(config.imds.clone()) {
        Ok((imds, session)) => {
            log_session(session);
            imds
        }
        Err(e @ (ImdsError::Unreachable { .. } | ImdsError::BadUrl(_))) => {
            return log::line("imds", Outcome::Failed, e)
        }
        Err(e) => return log::line("token", Outcome::Failed, e),
    };

    let instance_id = log::report("instance-id", instance_id(&mut imds)).ok();
    if imds.is_unreachable() {
        return;
    }
    let _ = log::report(
        "hostname",
        hostname::apply(&mut imds, &config.root, config.set_hostname),
    );
    if imds.is_unreachable() {
        return;
    }
    let _ = log::report(
        "ssh-key",
        ssh_keys::install(&mut imds, &config.root, &config.user),
    );
    if imds.is_unreachable() {
        return;
    }
    match instance_id {
        Some(Done::Ok(id)) => {
            let _ = log::report("user-data", user_data::run(&mut imds, &config.root, &id));
        }
        _ => log::line(
            "user-data",
            Outcome::Skipped,
            "no instance id, so no way to run it only once",
        ),
    }
}

fn log_session(session: Session) {
    match session {
        Session::V2 => log::line(
            "token",
            Outcome::Ok,
            format!("IMDSv2 session token for {TOKEN_TTL_SECONDS} s"),
        ),
        Session::V1NoTokenEndpoint(status) => log::line(
            "token",
            Outcome::Skipped,
            format!("IMDS has no token endpoint (HTTP {status}); using IMDSv1"),
        ),
        Session::V1Allowed(status) => log::line(
            "token",
            Outcome::Failed,
            format!(
                "IMDS refused a session token (HTTP {status}); using IMDSv1 because --allow-imdsv1 was given"
            ),
        ),
    }
}

/// The instance id, which also names the once-per-instance marker.
fn instance_id(imds: &mut Imds) -> Result<Done, InstanceIdError> {
    let raw = imds
        .get("/latest/meta-data/instance-id")?
        .ok_or(InstanceIdError::Missing)?;
    let id = String::from_utf8_lossy(&raw).trim().to_string();
    if !is_safe_component(&id) {
        return Err(InstanceIdError::Invalid(id));
    }
    Ok(Done::Ok(id))
}
