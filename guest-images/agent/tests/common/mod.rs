//! An in-test instance metadata service (tiny_http on 127.0.0.1, random
//! port, one thread) with switchable IMDSv1/v2 behaviours, and a helper
//! that runs the real `ec2lab-guest` binary against it.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The token the fake IMDS hands out.
pub const TOKEN: &str = "AQAEAtest-token==";

/// How the fake IMDS treats tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// PUT gives a token; GETs without it get 401 (EC2's "IMDSv2 required").
    Required,
    /// PUT gives a token; GETs work with or without it.
    Optional,
    /// PUT answers 404: an IMDS from before v2.
    NoEndpoint,
    /// PUT answers 403 and GETs without a token answer 401.
    Refused,
}

/// What the fake IMDS serves; tests change it between runs.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub token_mode: TokenMode,
    pub instance_id: String,
    pub local_hostname: Option<String>,
    /// `(name, openssh-key)` by index.
    pub keys: Vec<(String, String)>,
    /// Instance Connect keys: `(user, openssh-key)`.
    pub connect_keys: Vec<(String, String)>,
    pub user_data: Option<Vec<u8>>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            token_mode: TokenMode::Required,
            instance_id: "i-0123456789abcdef0".into(),
            local_hostname: Some("ip-10-0-0-5.ec2.internal".into()),
            keys: Vec::new(),
            connect_keys: Vec::new(),
            user_data: None,
        }
    }
}

/// One request the fake IMDS saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub token: Option<String>,
    pub ttl: Option<String>,
}

pub struct FakeImds {
    pub url: String,
    pub metadata: Arc<Mutex<Metadata>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl FakeImds {
    pub fn start(metadata: Metadata) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind fake IMDS"));
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let metadata = Arc::new(Mutex::new(metadata));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (server, metadata, seen) = (server.clone(), metadata.clone(), seen.clone());
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    let header = |name: &'static str| {
                        request
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv(name))
                            .map(|h| h.value.as_str().to_string())
                    };
                    let record = Seen {
                        method: request.method().as_str().to_string(),
                        path: request.url().to_string(),
                        token: header("X-aws-ec2-metadata-token"),
                        ttl: header("X-aws-ec2-metadata-token-ttl-seconds"),
                    };
                    seen.lock().expect("seen").push(record.clone());
                    let md = metadata.lock().expect("metadata").clone();
                    let (status, body) = answer(&md, &record);
                    let _ = request
                        .respond(tiny_http::Response::from_data(body).with_status_code(status));
                }
            })
        };
        FakeImds {
            url: format!("http://127.0.0.1:{port}"),
            metadata,
            seen,
            server,
            thread: Some(thread),
        }
    }

    pub fn set(&self, change: impl FnOnce(&mut Metadata)) {
        change(&mut self.metadata.lock().expect("metadata"));
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(md: &Metadata, req: &Seen) -> (u16, Vec<u8>) {
    if req.path == "/latest/api/token" {
        if req.method != "PUT" {
            return (405, Vec::new());
        }
        return match md.token_mode {
            TokenMode::Required | TokenMode::Optional if req.ttl.is_some() => (200, TOKEN.into()),
            TokenMode::Required | TokenMode::Optional => (400, b"missing ttl".to_vec()),
            TokenMode::NoEndpoint => (404, Vec::new()),
            TokenMode::Refused => (403, Vec::new()),
        };
    }
    match (&req.token, md.token_mode) {
        (Some(t), _) if t != TOKEN => return (401, Vec::new()),
        (None, TokenMode::Required | TokenMode::Refused) => return (401, Vec::new()),
        _ => {}
    }
    let found = |v: Option<Vec<u8>>| v.map_or((404, Vec::new()), |b| (200, b));
    match req.path.as_str() {
        "/latest/meta-data/instance-id" => (200, md.instance_id.clone().into_bytes()),
        "/latest/meta-data/local-hostname" => {
            found(md.local_hostname.clone().map(String::into_bytes))
        }
        "/latest/meta-data/public-keys/" if !md.keys.is_empty() => {
            let listing: Vec<String> = md
                .keys
                .iter()
                .enumerate()
                .map(|(i, (name, _))| format!("{i}={name}"))
                .collect();
            (200, listing.join("\n").into_bytes())
        }
        "/latest/user-data" => found(md.user_data.clone()),
        "/latest/meta-data/managed-ssh-keys/active-keys/" if !md.connect_keys.is_empty() => {
            let mut users: Vec<&str> = md.connect_keys.iter().map(|(u, _)| u.as_str()).collect();
            users.sort_unstable();
            users.dedup();
            (200, users.join("\n").into_bytes())
        }
        path if path.starts_with("/latest/meta-data/managed-ssh-keys/active-keys/") => {
            let user = path
                .trim_start_matches("/latest/meta-data/managed-ssh-keys/active-keys/")
                .trim_end_matches('/');
            let keys: Vec<&str> = md
                .connect_keys
                .iter()
                .filter(|(u, _)| u == user)
                .map(|(_, k)| k.as_str())
                .collect();
            found((!keys.is_empty()).then(|| keys.join("\n").into_bytes()))
        }
        path => {
            let key = path
                .strip_prefix("/latest/meta-data/public-keys/")
                .and_then(|p| p.strip_suffix("/openssh-key"))
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| md.keys.get(i));
            found(key.map(|(_, k)| format!("{k}\n").into_bytes()))
        }
    }
}

/// A finished agent run.
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
    pub elapsed: Duration,
}

impl Run {
    /// Asserts the run printed `line` as a whole line.
    #[track_caller]
    pub fn assert_line(&self, line: &str) {
        assert!(
            self.stdout.lines().any(|l| l == line),
            "expected line {line:?} in:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts some line starts with `prefix`.
    #[track_caller]
    pub fn assert_line_starting(&self, prefix: &str) {
        assert!(
            self.stdout.lines().any(|l| l.starts_with(prefix)),
            "expected a line starting {prefix:?} in:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts no line contains `text`.
    #[track_caller]
    pub fn assert_no_line_containing(&self, text: &str) {
        assert!(
            !self.stdout.lines().any(|l| l.contains(text)),
            "unexpected {text:?} in:\n{}",
            self.stdout
        );
    }

    /// Asserts a normal boot run: exit 0, last line `ec2lab-guest: done`.
    #[track_caller]
    pub fn assert_done(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert_eq!(
            self.stdout.lines().last(),
            Some("ec2lab-guest: done"),
            "stdout:\n{}",
            self.stdout
        );
    }
}

/// Runs `ec2lab-guest` with `args` and no EC2LAB_GUEST_* environment but
/// EC2LAB_GUEST_NO_CHECKIN: on a host, vsock CID 2 is the host itself, and
/// the check-in's retries would only slow the tests down.
pub fn run_raw(args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ec2lab-guest"));
    for (key, _) in std::env::vars() {
        if key.starts_with("EC2LAB_GUEST_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("EC2LAB_GUEST_NO_CHECKIN", "true");
    let start = Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.args(args).output().expect("run ec2lab-guest");
    Run {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        code: status.code(),
        elapsed: start.elapsed(),
    }
}

/// A boot run against `url` with files under `root`, the kernel host name
/// left alone and short retries.
pub fn boot(url: &str, root: &Path, extra: &[&str]) -> Run {
    let root = root.to_str().expect("utf-8 temp path");
    let mut args = vec![
        "--imds",
        url,
        "--root",
        root,
        "--set-hostname=false",
        "--attempts",
        "2",
        "--timeout-ms",
        "2000",
    ];
    args.extend_from_slice(extra);
    run_raw(&args)
}
