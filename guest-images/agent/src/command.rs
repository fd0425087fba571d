//! Running user commands with their output on the console.

use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};

/// Runs `cmd` to completion: no stdin, stdout and stderr to the agent's
/// own (the console). Our buffered log is flushed first so lines keep
/// their order.
pub fn run(cmd: &mut Command) -> io::Result<ExitStatus> {
    let _ = io::stdout().flush();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
}

/// `exited with status 3` or `was killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended without a status".to_string(),
    }
}
