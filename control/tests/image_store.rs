//! RegisterImage reads only the lab's image store (issue 16, finding 2):
//! a location outside it, a symlinked directory or file inside it, and an
//! image whose files do not match are refused with a message that says
//! what is wrong and nothing about the host's files; an image changed
//! after registration fails its launch with a clear state reason and
//! leaves no volume. No guest boots: the VMM binary does not exist.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ec2lab_control::api::actions::{dispatch, AppState, Ctx};
use ec2lab_control::api::error::Ec2Error;
use ec2lab_control::api::query::Params;
use ec2lab_control::api::xml;
use ec2lab_control::lifecycle::{HealthChecks, Lab};

/// A lab on `dir` whose store (`dir/images`) holds the fake catalog.
fn lab(dir: &Path, runtime: &tokio::runtime::Runtime) -> AppState {
    common::fake_catalog(dir);
    let lab = Lab::new(
        ec2lab_control::db::Db::open(&dir.join("ec2lab.db")).expect("db"),
        ec2lab_control::supervisor::Supervisor::new(dir.join("no-vmm"), dir.join("instances")),
        dir.join("images"),
        runtime.handle().clone(),
        HealthChecks {
            checkin_timeout: Duration::from_secs(60),
            stall_timeout: None,
        },
    );
    lab.register_catalog().expect("catalog");
    AppState::new("us-east-1", lab)
}

fn call(state: &AppState, action: &str, pairs: &[(&str, &str)]) -> Result<String, Ec2Error> {
    let ctx = Ctx {
        region: &state.region,
        request_id: "r",
        state,
        dry_run: false,
    };
    let members = dispatch(&ctx, action, &Params::from_pairs(pairs.iter().copied()))?;
    Ok(xml::render_response(action, ctx.request_id, &members))
}

fn between<'a>(xml: &'a str, open: &str, close: &str) -> &'a str {
    let start = xml.find(open).map(|i| i + open.len()).expect("element");
    let end = xml[start..].find(close).expect("closed") + start;
    &xml[start..end]
}

/// A copy of the fake AMI at `to`.
fn copy_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for file in ["manifest.json", "root.ext4"] {
        std::fs::copy(from.join(file), to.join(file)).expect("copy");
    }
}

fn refused(state: &AppState, location: &str) -> Ec2Error {
    call(
        state,
        "RegisterImage",
        &[("ImageLocation", location), ("Name", "other")],
    )
    .expect_err(location)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

#[test]
fn locations_outside_the_image_store_are_refused() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = lab(dir.path(), &rt);
    let store = dir.path().join("images");
    let outside = dir.path().join("outside/lab-minimal");
    copy_image(&store.join("lab-minimal"), &outside);
    let absolute = outside.display().to_string();
    for location in [
        absolute.as_str(),
        "../outside/lab-minimal",
        "/etc",
        "/",
        "lab-minimal/../../outside/lab-minimal",
    ] {
        let e = refused(&state, location);
        assert_eq!(e.code(), "InvalidParameterValue", "{location}: {e}");
        assert!(e.message().contains("image store"), "{location}: {e}");
    }
    // Inside the store, by name or by absolute path, it is fine.
    copy_image(&store.join("lab-minimal"), &store.join("copy"));
    let xml = call(
        &state,
        "RegisterImage",
        &[("ImageLocation", "copy"), ("Name", "copy")],
    )
    .expect("in the store");
    assert!(xml.contains("<imageId>ami-"), "{xml}");
    let absolute = store.join("copy").display().to_string();
    call(
        &state,
        "RegisterImage",
        &[("ImageLocation", &absolute), ("Name", "copy-2")],
    )
    .expect("absolute path in the store");
}

#[test]
fn symlinks_inside_the_store_are_refused() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = lab(dir.path(), &rt);
    let store = dir.path().join("images");
    let outside = dir.path().join("outside");
    copy_image(&store.join("lab-minimal"), &outside);
    // A directory link out of the store.
    std::os::unix::fs::symlink(&outside, store.join("alias")).expect("dir link");
    let e = refused(&state, "alias");
    assert_eq!(e.code(), "InvalidParameterValue", "{e}");
    // A root file linked to a file with exactly the content the manifest
    // expects: refused for being a link.
    let linked = store.join("linked");
    copy_image(&store.join("lab-minimal"), &linked);
    std::fs::remove_file(linked.join("root.ext4")).expect("rm");
    std::os::unix::fs::symlink(outside.join("root.ext4"), linked.join("root.ext4"))
        .expect("file link");
    let e = refused(&state, "linked");
    assert_eq!(e.code(), "InvalidParameterValue", "{e}");
    assert!(e.message().contains("symlink"), "{e}");
    assert!(!e.message().contains(&*outside.to_string_lossy()), "{e}");
}

#[test]
fn refusals_echo_no_size_or_digest_of_host_files() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = lab(dir.path(), &rt);
    let store = dir.path().join("images");
    let bad = store.join("bad");
    copy_image(&store.join("lab-minimal"), &bad);
    let secret = b"a secret longer than the manifest says";
    std::fs::write(bad.join("root.ext4"), secret).expect("wrong size");
    let e = refused(&state, "bad");
    assert_eq!(e.code(), "InvalidParameterValue", "{e}");
    assert!(!e.message().contains(&secret.len().to_string()), "{e}");
    std::fs::write(bad.join("root.ext4"), b"ROOT").expect("same size, other content");
    let e = refused(&state, "bad");
    let digest = ec2lab_images::sha256_file(&bad.join("root.ext4")).expect("digest");
    assert!(!e.message().contains(&digest), "{e}");
    assert!(!e.message().contains("sha256"), "{e}");
    assert!(!e.message().contains(&*store.to_string_lossy()), "{e}");
    assert!(e.message().contains("do not match"), "{e}");
}

fn instance_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join("instances").join(id)
}

#[test]
fn an_image_changed_after_registration_fails_its_launch_and_makes_no_volume() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = lab(dir.path(), &rt);
    let images = call(&state, "DescribeImages", &[("Owner.1", "self")]).expect("images");
    let ami = format!("ami-{}", between(&images, "<imageId>ami-", "</imageId>"));
    // Same size, other content: only a digest check can tell.
    std::fs::write(dir.path().join("images/lab-minimal/root.ext4"), b"ROOT").expect("change");
    let run = call(
        &state,
        "RunInstances",
        &[
            ("ImageId", ami.as_str()),
            ("InstanceType", "lab.nano"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
        ],
    )
    .expect("accepted: the boot checks the image");
    let id = between(&run, "<instanceId>", "</instanceId>").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let described = loop {
        let xml = call(&state, "DescribeInstances", &[("InstanceId.1", &id)]).expect("describe");
        if !xml.contains("<name>pending</name>") {
            break xml;
        }
        assert!(Instant::now() < deadline, "still pending: {xml}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(described.contains("<name>stopped</name>"), "{described}");
    let reason = between(&described, "<stateReason>", "</stateReason>");
    assert!(
        reason.contains("changed since the image was registered"),
        "{reason}"
    );
    let left: Vec<_> = std::fs::read_dir(instance_dir(dir.path(), &id))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|n| n.to_string_lossy().starts_with("root.img")),
        "no volume: {left:?}"
    );
}
