//! The daemon side of the instance status check, without KVM: a stand-in
//! `ec2lab-vmm` (a few lines of Python) does what the real VMM's vsock
//! device does for a guest whose agent checks in, connecting to
//! `<vsock uds>_9000` and sending the agent's line; for `lab.nano`
//! instances it stays silent, like a guest whose agent never runs. With
//! `--checkin-timeout` shortened to a moment, DescribeInstanceStatus must
//! say `impaired` for the silent one and `ok` for the other, and `impaired`
//! again while the stand-in's control API reports its guest stalled.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ec2lab_control::api::actions::{self, AppState, Ctx};
use ec2lab_control::api::query::Params;
use ec2lab_control::api::xml;
use ec2lab_control::checkin::CHECKIN_PORT;
use ec2lab_control::lifecycle::{HealthChecks, Lab};

/// Checks in unless its instance is a lab.nano (128 MiB), then serves its
/// control API until killed, as a VMM would run its guest: `GET /vm`
/// reports a stall (the real VMM's shape, vmm/src/vstate/watchdog.rs) while
/// a file `stalled` exists in the instance's directory; `PUT /actions`
/// ends it, like a guest that powers off at once.
const FAKE_VMM: &str = r#"#!/usr/bin/env python3
import json, os, socket, sys
config = json.load(open(sys.argv[sys.argv.index("--config") + 1]))
if config["memory_mib"] != 128:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(config["vsock"]["uds"] + "_PORT")
    s.sendall(b"ec2lab-checkin v1 0b9c6c2e-5d1f\n")
    print("answer:", s.recv(128), flush=True)
assert config["stall_timeout_secs"] == 1, config
api = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
api.bind(config["api_sock"])
api.listen(8)
flag = os.path.join(os.path.dirname(config["api_sock"]), "stalled")
while True:
    conn, _ = api.accept()
    request = conn.recv(4096).decode()
    if request.startswith("GET /vm "):
        stall = None
        if os.path.exists(flag):
            stall = {"quiet_secs": 42, "vcpus": [{"id": 0, "rip": 18446744071578845184,
                     "kernel_mode": True, "halted": False, "interrupts_enabled": True}]}
        body = json.dumps({"state": "Running", "stall": stall}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
    else:
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        if request.startswith("PUT /actions "):
            conn.close()
            sys.exit(0)
    conn.close()
"#;

fn call(state: &AppState, action: &str, pairs: &[(&str, &str)]) -> String {
    let ctx = Ctx {
        region: &state.region,
        request_id: "00000000-0000-4000-8000-000000000000",
        state,
        dry_run: false,
    };
    let params = Params::from_pairs(pairs.iter().copied());
    let members = actions::dispatch(&ctx, action, &params)
        .unwrap_or_else(|e| panic!("{action} {pairs:?} failed: {e}"));
    xml::render_response(action, ctx.request_id, &members)
}

fn between<'a>(xml: &'a str, open: &str, close: &str) -> &'a str {
    let start = xml.find(open).map(|i| i + open.len()).expect("element");
    let end = xml[start..].find(close).expect("closed") + start;
    &xml[start..end]
}

fn instance_status(state: &AppState, id: &str) -> String {
    let xml = call(state, "DescribeInstanceStatus", &[("InstanceId.1", id)]);
    between(&xml, "<instanceStatus>", "</instanceStatus>").to_string()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_instance(state: &AppState, ami: &str, instance_type: &str) -> String {
    let run = call(
        state,
        "RunInstances",
        &[
            ("ImageId", ami),
            ("InstanceType", instance_type),
            ("MinCount", "1"),
            ("MaxCount", "1"),
        ],
    );
    between(&run, "<instanceId>", "</instanceId>").to_string()
}

#[test]
fn a_silent_guest_is_impaired_after_the_timeout_and_a_checked_in_one_is_ok() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED checkin: no python3 for the stand-in VMM");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path());
    common::fake_catalog(dir.path());
    let vmm = dir.path().join("bin/ec2lab-vmm");
    std::fs::create_dir_all(vmm.parent().expect("bin")).expect("mkdir");
    std::fs::write(&vmm, FAKE_VMM.replace("PORT", &CHECKIN_PORT.to_string())).expect("write");
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = ec2lab_control::db::Db::open(&dir.path().join("ec2lab.db")).expect("db");
    let instances = dir.path().join("instances");
    let supervisor = ec2lab_control::supervisor::Supervisor::new(vmm, instances.clone());
    let lab = Lab::new(
        db,
        supervisor,
        dir.path().join("images"),
        runtime.handle().clone(),
        HealthChecks {
            checkin_timeout: Duration::from_millis(1),
            stall_timeout: Some(Duration::from_secs(1)),
        },
    );
    lab.register_catalog().expect("catalog");
    let state = AppState::new("us-east-1", lab.clone());
    let images = call(&state, "DescribeImages", &[("Owner.1", "self")]);
    let ami = format!("ami-{}", between(&images, "<imageId>ami-", "</imageId>"));

    let silent = run_instance(&state, &ami, "lab.nano");
    let talking = run_instance(&state, &ami, "lab.micro");
    for id in [&silent, &talking] {
        wait_until("running", || {
            let xml = call(&state, "DescribeInstances", &[("InstanceId.1", id)]);
            xml.contains("<name>running</name>")
        });
    }
    wait_until("the check-in", || {
        instance_status(&state, &talking).contains("<status>ok</status>")
    });
    let ok = instance_status(&state, &talking);
    assert!(ok.contains("<status>passed</status>"), "{ok}");
    assert!(!ok.contains("impairedSince"), "{ok}");

    let impaired = instance_status(&state, &silent);
    assert!(impaired.contains("<status>impaired</status>"), "{impaired}");
    assert!(impaired.contains("<status>failed</status>"), "{impaired}");
    assert!(impaired.contains("<impairedSince>"), "{impaired}");
    let filtered = call(
        &state,
        "DescribeInstanceStatus",
        &[
            ("Filter.1.Name", "instance-status.status"),
            ("Filter.1.Value.1", "impaired"),
        ],
    );
    assert!(
        filtered.contains(&silent) && !filtered.contains(&talking),
        "{filtered}"
    );
    // ok, impaired (with ImpairedSince) in botocore's shapes, when its
    // model is at hand.
    if let Some(model) = common::model("checkin") {
        let both = call(&state, "DescribeInstanceStatus", &[]);
        assert!(both.contains(&silent) && both.contains(&talking), "{both}");
        if let Err(errors) = model.validate_output("DescribeInstanceStatus", &both) {
            panic!("{}\n{both}", errors.join("\n"));
        }
    }

    // The VMM reports its guest stalled: the check fails, since the
    // stall began (42 s before the VMM's answer), until it clears.
    let flag = instances.join(&talking).join("stalled");
    std::fs::write(&flag, b"").expect("flag");
    wait_until("the stall", || {
        instance_status(&state, &talking).contains("<status>impaired</status>")
    });
    let stalled = instance_status(&state, &talking);
    assert!(stalled.contains("<status>failed</status>"), "{stalled}");
    let since = between(&stalled, "<impairedSince>", "</impairedSince>").to_string();
    let since = time::OffsetDateTime::parse(&since, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("impairedSince {since:?}: {e}"));
    let ago = time::OffsetDateTime::now_utc() - since;
    assert!(
        ago >= time::Duration::seconds(40) && ago < time::Duration::seconds(100),
        "impairedSince {since} is {ago} ago, not about 42 s\n{stalled}"
    );
    std::fs::remove_file(&flag).expect("unflag");
    wait_until("the recovery", || {
        instance_status(&state, &talking).contains("<status>ok</status>")
    });

    let socket = |id: &str| {
        let mut name = instances.join(id).join("vsock.sock").into_os_string();
        name.push(format!("_{CHECKIN_PORT}"));
        std::path::PathBuf::from(name)
    };
    assert!(socket(&talking).exists(), "the listener's socket");
    for id in [&silent, &talking] {
        call(&state, "TerminateInstances", &[("InstanceId.1", id)]);
    }
    for id in [&silent, &talking] {
        wait_until("terminated", || {
            let xml = call(&state, "DescribeInstances", &[("InstanceId.1", id)]);
            xml.contains("<name>terminated</name>")
        });
        assert!(!Path::new(&socket(id)).exists(), "{id}: socket left behind");
    }
    let status = instance_status_all(&state, &silent);
    assert!(status.contains("not-applicable"), "{status}");
}

/// Kills the stand-in VMMs started under its directory, also when the
/// test fails half-way.
struct Reaper<'a>(&'a Path);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                // SAFETY: kill(2) on a stand-in VMM this test started (its
                // command line names the test's private directory).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn instance_status_all(state: &AppState, id: &str) -> String {
    call(
        state,
        "DescribeInstanceStatus",
        &[("InstanceId.1", id), ("IncludeAllInstances", "true")],
    )
}
