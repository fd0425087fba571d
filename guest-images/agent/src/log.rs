//! The console log: one greppable line per step,
//! `ec2lab-guest: <step>: ok|skipped|failed: <detail>`.
//!
//! Lines go straight to stdout (the serial console in the guest); a closed
//! console is ignored rather than allowed to panic the boot agent.

use std::fmt::Display;
use std::io::Write;

/// Prefix of every line the agent prints.
pub const PREFIX: &str = "ec2lab-guest";

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The step did its work.
    Ok,
    /// There was nothing to do (e.g. no user data), or the request is not
    /// supported on this image.
    Skipped,
    /// The step could not do its work; later steps still run.
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        }
    }
}

/// What a step that did not fail reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Work done, with what was done.
    Ok(String),
    /// Nothing done, with why.
    Skipped(String),
}

/// Prints `ec2lab-guest: <step>: <outcome>: <detail>` on one line.
pub fn line(step: &str, outcome: Outcome, detail: impl Display) {
    let detail = detail.to_string().replace(['\n', '\r'], " ");
    let _ = writeln!(
        std::io::stdout().lock(),
        "{PREFIX}: {step}: {}: {detail}",
        outcome.as_str()
    );
}

/// Logs a step's result and passes it through.
pub fn report<E: Display>(step: &str, result: Result<Done, E>) -> Result<Done, E> {
    match &result {
        Ok(Done::Ok(detail)) => line(step, Outcome::Ok, detail),
        Ok(Done::Skipped(detail)) => line(step, Outcome::Skipped, detail),
        Err(e) => line(step, Outcome::Failed, e),
    }
    result
}

/// Prints the last line of a boot run, `ec2lab-guest: done`.
pub fn done() {
    let _ = writeln!(std::io::stdout().lock(), "{PREFIX}: done");
}
