//! `ec2lab-guest`: the ec2lab in-guest agent.
//!
//! At boot (`ec2lab-guest` or `ec2lab-guest boot`) it checks in with the
//! control plane over vsock (the instance status check), then reads the instance
//! metadata service and applies it: host name, the instance's ssh key,
//! user data once per instance. `ec2lab-guest metadata PATH` prints one
//! metadata item. See README.md for flags, log lines and exit codes.

mod boot;
mod checkin;
mod cloud_config;
mod command;
mod connect_keys;
mod hostname;
mod http;
mod imds;
mod log;
mod paths;
mod session;
mod ssh_keys;
mod user_data;
mod yaml;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::boot::BootConfig;
use crate::imds::{Imds, ImdsConfig};

#[derive(Debug, Parser)]
#[command(
    name = "ec2lab-guest",
    version,
    about = "The ec2lab in-guest agent: applies instance metadata at boot",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    imds: ImdsArgs,
    /// Boot options when no subcommand is given.
    #[command(flatten)]
    boot: BootArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Apply the metadata: host name, ssh key, user data (the default).
    Boot(BootArgs),
    /// Print one metadata item: `instance-id`, `public-keys/`,
    /// `placement/availability-zone`, `user-data`, or a full path such as
    /// `/latest/dynamic/instance-identity/document`.
    Metadata {
        /// The item, relative to /latest/meta-data/ unless it starts with `/`.
        path: String,
    },
    /// Only check in with the control plane over vsock (the instance status
    /// check), for images whose own tools (cloud-init) apply the metadata.
    Checkin,
    /// Serve `ec2lab connect` sessions (a root shell or one command) on
    /// vsock port 9001 until killed; runs in the background from boot.
    Session,
    /// EC2 Instance Connect: print USER's active keys (OpenSSH's
    /// AuthorizedKeysCommand), or with --watch keep every user's
    /// authorized_keys in step with them (servers without that hook).
    ConnectKeys(ConnectKeysArgs),
}

#[derive(Debug, Args)]
struct ConnectKeysArgs {
    /// The user whose active keys to print.
    #[arg(required_unless_present = "watch", conflicts_with = "watch")]
    user: Option<String>,
    /// Keep authorized_keys files in step with the metadata, until killed.
    #[arg(long)]
    watch: bool,
    /// How often --watch asks the metadata service, in milliseconds.
    #[arg(
        long,
        default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000)
    )]
    interval_ms: u64,
    /// Prefix for the files --watch writes (home directories, /etc/passwd).
    #[arg(long, env = "EC2LAB_GUEST_ROOT", default_value = "/")]
    root: PathBuf,
}

#[derive(Debug, Args)]
struct ImdsArgs {
    /// Base URL of the instance metadata service.
    #[arg(
        long = "imds",
        env = "EC2LAB_GUEST_IMDS",
        default_value = "http://169.254.169.254",
        global = true
    )]
    url: String,
    /// Tries per request on connection errors and HTTP 5xx.
    #[arg(
        long,
        env = "EC2LAB_GUEST_ATTEMPTS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=100),
        global = true
    )]
    attempts: u32,
    /// Deadline of one try (connect, send, whole answer), in milliseconds.
    #[arg(
        long,
        env = "EC2LAB_GUEST_TIMEOUT_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..=60_000),
        global = true
    )]
    timeout_ms: u64,
    /// Use IMDSv1 (no token) when the token request is refused. Without
    /// it IMDSv1 is used only when the token endpoint does not exist
    /// (HTTP 404/405).
    #[arg(long, env = "EC2LAB_GUEST_ALLOW_IMDSV1", global = true)]
    allow_imdsv1: bool,
}

#[derive(Debug, Clone, Args)]
struct BootArgs {
    /// Prefix for every file written: /etc/hostname, home directories,
    /// the state directory /var/lib/ec2lab-guest.
    #[arg(long, env = "EC2LAB_GUEST_ROOT", default_value = "/")]
    root: PathBuf,
    /// The user who gets the instance's ssh key.
    #[arg(long, env = "EC2LAB_GUEST_USER", default_value = "ec2-user")]
    user: String,
    /// Also set the kernel host name with sethostname(2). Defaults to true
    /// when --root is /, false otherwise.
    #[arg(
        long,
        env = "EC2LAB_GUEST_SET_HOSTNAME",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    set_hostname: Option<bool>,
    /// Skip the vsock check-in with the control plane (the instance status
    /// check). For runs outside an ec2lab guest.
    #[arg(long, env = "EC2LAB_GUEST_NO_CHECKIN")]
    no_checkin: bool,
}

impl ImdsArgs {
    fn config(&self) -> ImdsConfig {
        ImdsConfig {
            url: self.url.clone(),
            attempts: self.attempts,
            timeout: Duration::from_millis(self.timeout_ms),
            allow_v1: self.allow_imdsv1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => boot(&cli.imds, cli.boot),
        Some(Cmd::Boot(args)) => boot(&cli.imds, args),
        Some(Cmd::Metadata { path }) => metadata(&cli.imds, &path),
        Some(Cmd::Checkin) => match log::report("checkin", checkin::run()) {
            Ok(_) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Some(Cmd::ConnectKeys(args)) => connect_keys(&cli.imds, args),
        Some(Cmd::Session) => match session::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::line("session", log::Outcome::Failed, e);
                ExitCode::FAILURE
            }
        },
    }
}

/// Always exits 0: missing metadata is logged, never a boot failure.
fn boot(imds: &ImdsArgs, args: BootArgs) -> ExitCode {
    let is_real_root = args.root == std::path::Path::new("/");
    boot::run(&BootConfig {
        imds: imds.config(),
        set_hostname: args.set_hostname.unwrap_or(is_real_root),
        checkin: !args.no_checkin,
        root: args.root,
        user: args.user,
    });
    ExitCode::SUCCESS
}

/// Prints a user's keys (exit 0, nothing when it has none; 1 with a
/// one-line error when the service cannot say), or watches for good.
fn connect_keys(imds: &ImdsArgs, args: ConnectKeysArgs) -> ExitCode {
    let Some(user) = args.user else {
        connect_keys::watch(
            imds.config(),
            &args.root,
            Duration::from_millis(args.interval_ms),
        )
    };
    let keys = Imds::connect(imds.config())
        .and_then(|(mut c, _)| connect_keys::active_keys(&mut c, &user));
    match keys {
        Ok(keys) => {
            let mut out = std::io::stdout().lock();
            let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
            if out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: connect-keys: failed: {e}", log::PREFIX);
            ExitCode::FAILURE
        }
    }
}

/// Exits 0 with the item on stdout, 1 with a one-line error on stderr.
fn metadata(imds: &ImdsArgs, item: &str) -> ExitCode {
    let path = if item.starts_with('/') {
        item.to_string()
    } else if item == "user-data" {
        "/latest/user-data".to_string()
    } else {
        format!("/latest/meta-data/{item}")
    };
    let result = Imds::connect(imds.config()).and_then(|(mut c, _)| c.get(&path));
    match result {
        Ok(Some(mut body)) => {
            if path != "/latest/user-data" && !body.ends_with(b"\n") {
                body.push(b'\n');
            }
            let mut out = std::io::stdout().lock();
            if out.write_all(&body).and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!(
                "{}: metadata: failed: {path} not found (HTTP 404)",
                log::PREFIX
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}: metadata: failed: {e}", log::PREFIX);
            ExitCode::FAILURE
        }
    }
}
