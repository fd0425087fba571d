//! Shared helpers for the VMM's integration tests.
//!
//! # Guests
//!
//! Each KVM test boots a tiny purpose-built guest from `tests/guests/*.S`:
//! GNU assembler source, assembled with plain `as --64` (no C preprocessor;
//! shared code comes in with `.include "lib/….inc"`, variants with
//! `--defsym NAME=VALUE`) and linked with `ld -T tests/guests/guest.ld`
//! into a static ELF64 whose single image starts at 2 MiB, above the VMM's
//! low-memory structures. Building happens at test run time into a fresh
//! temporary directory ([`build_guest`]), so the sources are the only
//! artefacts kept in git and a guest is always built from what you read.
//!
//! Guests talk back only through what the VMM exposes: bytes written to the
//! 16550 at port 0x3f8 (the VMM's stdout), ACPI poweroff at port 0x600
//! (exit 0), resets (exit 3), faults (exit 4/5), and per-vCPU exit counts
//! (the `vcpuN exits: …` lines on stderr and `GET /vm` on the API).
//! A guest that hits an exception it does not expect prints it and resets,
//! so a failing guest ends quickly with a status no test expects.
//!
//! On hosts that emulate guest ring 0 (kvm_pvm, see DESIGN.md) ring-0 code
//! runs at about 1.5 M instructions/s, so guests keep ring 0 to setup and
//! printing and do any loop in ring 3.
//!
//! # Running the VMM
//!
//! [`Vmm::spawn`] starts `ec2lab-vmm` with piped stdout/stderr collected by
//! reader threads; every wait has a deadline after which the child is
//! killed by PID and the test fails with everything it printed. Dropping a
//! [`Vmm`] kills a child that is still running, so a failed assertion never
//! leaves a VM behind.
//!
//! Tests that need `/dev/kvm` start with [`kvm_available`]: without it they
//! print a skip line and pass, unless `EC2LAB_REQUIRE_KVM=1` (CI), where
//! they fail.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The VMM binary under test.
pub const VMM_BIN: &str = env!("CARGO_BIN_EXE_ec2lab-vmm");

/// Longest any single VMM run in these tests may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Exit statuses from the VMM's CLI contract.
pub mod status {
    pub const POWEROFF: i32 = 0;
    pub const RUNTIME_ERROR: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const RESET: i32 = 3;
    pub const TRIPLE_FAULT: i32 = 4;
    pub const UNHANDLED_EXIT: i32 = 5;
    pub const API_SHUTDOWN: i32 = 6;
    pub const SIGINT: i32 = 130;
    pub const SIGTERM: i32 = 143;
}

/// Whether this test can use KVM. Without `/dev/kvm` it prints a skip line
/// and returns false, or panics when `EC2LAB_REQUIRE_KVM=1`.
pub fn kvm_available(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("EC2LAB_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{test}: /dev/kvm is missing and EC2LAB_REQUIRE_KVM=1");
    }
    println!("SKIPPED {test}: /dev/kvm is missing");
    false
}

/// Returns early from a test (as a pass) when KVM is not available.
#[macro_export]
macro_rules! require_kvm {
    ($test:expr) => {
        if !common::kvm_available($test) {
            return;
        }
    };
}

/// Where `scripts/build-kernel` and friends cache kernels and images.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("EC2LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ec2lab")
        })
}

/// The cached kernel at `relative`, or None (the test skips) when it has not
/// been built; with `EC2LAB_REQUIRE_KERNELS=1` (CI) a missing kernel fails.
pub fn cached_kernel(test: &str, relative: &str) -> Option<PathBuf> {
    let path = cache_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("EC2LAB_REQUIRE_KERNELS").as_deref() == Ok("1") {
        panic!(
            "{test}: {} is missing and EC2LAB_REQUIRE_KERNELS=1",
            path.display()
        );
    }
    println!(
        "SKIPPED {test}: {} is missing (run scripts/fetch-debian-kernel / scripts/build-kernel)",
        path.display()
    );
    None
}

/// The static busybox that `scripts/build-initramfs` caches (built on demand).
pub fn busybox(dir: &Path) -> PathBuf {
    let init = dir.join("noop.sh");
    std::fs::write(&init, "#!/bin/sh\n").expect("write");
    let out = Command::new(repo_root().join("scripts/build-initramfs"))
        .arg(dir.join("noop.cpio"))
        .arg(&init)
        .output()
        .expect("run build-initramfs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_dir(cache_dir().join("tools"))
        .expect("tools cache")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("busybox-static-"))
        })
        .expect("cached busybox")
}

/// An ext4 image whose /init is `script`, with busybox as /bin/busybox and
/// /bin/sh, plus `files` (host path, path in the image).
pub fn root_image(dir: &Path, script: &str, files: &[(&Path, &str)]) -> PathBuf {
    let tree = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(tree.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox(dir), tree.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).expect("symlink");
    std::fs::write(tree.join("init"), script).expect("write init");
    for (source, dest) in files {
        std::fs::copy(source, tree.join(dest)).expect("copy a file into the image");
    }
    let mut perms = std::fs::metadata(tree.join("init"))
        .expect("stat")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(tree.join("init"), perms).expect("chmod");
    let image = dir.join("root.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("64M")
        .output()
        .expect("run mkfs.ext4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// Compiles a test program from tests/guests/userspace or guest-images into a static binary.
pub fn static_binary(dir: &Path, source: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let result = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(source)
        .output()
        .expect("run gcc");
    assert!(
        result.status.success(),
        "gcc {} failed\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// A network namespace the test creates (and deletes when dropped), so
/// network tests never touch the host's own interfaces.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `ec2lab-<tag>-<pid>`.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("ec2lab-{tag}-{}", std::process::id());
        // A namespace left by a killed earlier run of the same pid is stale.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = NetNs { name };
        ns.ip(&["netns", "add", &ns.name.clone()]);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `args` inside the namespace; panics on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run ip netns exec");
        assert!(
            out.status.success(),
            "in {}: {args:?}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs `args` inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `command` on `login` (`user@address`) over SSH with `key`, from
    /// this namespace, without host-key prompts.
    pub fn ssh(&self, key: &Path, login: &str, command: &str) -> std::process::Output {
        self.command(&["ssh", "-i"])
            .arg(key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=60",
                login,
                command,
            ])
            .output()
            .expect("ssh")
    }

    /// Adds tap `tap` owned by nobody in particular, with `addr` (CIDR) on
    /// it, up.
    pub fn add_tap(&self, tap: &str, addr: &str) {
        self.run(&["ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]);
        self.run(&["ip", "addr", "add", addr, "dev", tap]);
        self.run(&["ip", "link", "set", tap, "up"]);
    }

    /// Serves DHCP on `tap` from busybox udhcpd inside the namespace, leasing
    /// exactly `guest_ip` with `host_ip` as router and DNS, as the images'
    /// DHCP clients expect a VPC subnet to; state files live in `dir`. The
    /// server is killed when the returned guard drops.
    pub fn serve_dhcp(&self, dir: &Path, tap: &str, guest_ip: &str, host_ip: &str) -> Reaper {
        let conf = dir.join("udhcpd.conf");
        std::fs::write(
            &conf,
            format!(
                "start {guest_ip}\nend {guest_ip}\ninterface {tap}\n\
                 option subnet 255.255.255.0\noption router {host_ip}\noption dns {host_ip}\n\
                 lease_file {}\npidfile {}\n",
                dir.join("leases").display(),
                dir.join("udhcpd.pid").display()
            ),
        )
        .expect("udhcpd.conf");
        std::fs::write(dir.join("leases"), b"").expect("leases");
        let busybox = busybox(dir);
        Reaper(
            self.command(&[
                &busybox.display().to_string(),
                "udhcpd",
                "-f",
                &conf.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start udhcpd"),
        )
    }
}

/// Moves the calling thread into network namespace `name` (namespaces are
/// per thread), so the sockets it opens live there.
pub fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a read-only debugfs request against an ext4 image; its stdout.
pub fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mode (octal, with type bits) and owner of `path` inside an ext4 image,
/// or None when it is not there.
pub fn stat_in_image(image: &Path, path: &str) -> Option<(String, String)> {
    let text = debugfs(image, &format!("stat {path}"));
    let mode = text.split("Mode:").nth(1)?.split_whitespace().next()?;
    let user = text.split("User:").nth(1)?.split_whitespace().next()?;
    Some((mode.to_string(), user.to_string()))
}

/// Writes `key` as the authorized_keys of the user whose home is `home`
/// (uid and gid 1000) into `image`: what the guest's agent or cloud-init
/// does from instance metadata, done ahead of boot.
pub fn seed_authorized_key(dir: &Path, image: &Path, home: &str, key: &Path) {
    let script = dir.join("debugfs.cmds");
    let ssh = format!("{home}/.ssh");
    std::fs::write(
        &script,
        format!(
            "mkdir {ssh}\nwrite {} {ssh}/authorized_keys\n\
             sif {ssh} uid 1000\nsif {ssh} gid 1000\nsif {ssh} mode 040700\n\
             sif {ssh}/authorized_keys uid 1000\nsif {ssh}/authorized_keys gid 1000\n\
             sif {ssh}/authorized_keys mode 0100600\n",
            key.display()
        ),
    )
    .expect("debugfs script");
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(image)
        .output()
        .expect("debugfs -w");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills a helper process of the test (a DHCP server) by PID when dropped.
pub struct Reaper(pub std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this host's KVM emulates guest kernel mode (see DESIGN.md).
pub fn on_emulating_host() -> bool {
    ec2lab_vmm_api::host::emulates_guest_kernel()
}

/// Whether the host CPU is AMD's (from /proc/cpuinfo).
pub fn host_is_amd() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.contains("AuthenticAMD"))
        .unwrap_or(false)
}

/// Whether `out` shows the fault that AMD hosts whose KVM emulates the
/// guest kernel (kvm_pvm) sometimes give a freshly exec'd static program on
/// a guest with two vCPUs: its first TLS access reads zeroes and it dies
/// with SIGSEGV at address 0 (guest-images/kernel/NOTES.md, "An
/// intermittent fault with two vCPUs"). It is not the VMM's, so a test may
/// boot once more when it sees exactly this; anywhere else, or twice, the
/// test fails as usual.
pub fn hit_known_host_fault(out: &Outcome) -> bool {
    on_emulating_host()
        && host_is_amd()
        && out.stdout.contains("segfault at 0 ip ")
        && out.stdout.contains(" error 4 in busybox[")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A guest ELF built into its own temporary directory, which also serves
/// the test as scratch space (sockets, config files, initrds).
pub struct Guest {
    pub dir: tempfile::TempDir,
    pub elf: PathBuf,
}

impl Guest {
    /// A path inside the guest's scratch directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

/// Assembles and links `tests/guests/<name>.S`.
pub fn build_guest(name: &str) -> Guest {
    build_guest_with(name, &[])
}

/// Assembles `tests/guests/<name>.S` with `--defsym` symbols and links it.
pub fn build_guest_with(name: &str, defsyms: &[(&str, i64)]) -> Guest {
    let src_dir = guests_dir();
    let source = src_dir.join(format!("{name}.S"));
    assert!(source.exists(), "no guest source {}", source.display());
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let object = dir.path().join(format!("{name}.o"));
    let elf = dir.path().join(format!("{name}.elf"));

    let mut assemble = Command::new("as");
    assemble.arg("--64").arg("-I").arg(&src_dir);
    for (symbol, value) in defsyms {
        assemble.arg("--defsym").arg(format!("{symbol}={value}"));
    }
    assemble.arg("-o").arg(&object).arg(&source);
    run_tool(&mut assemble);

    let mut link = Command::new("ld");
    link.args([
        "-m",
        "elf_x86_64",
        "-static",
        "-nostdlib",
        "--build-id=none",
    ])
    .args(["-z", "max-page-size=0x1000", "-z", "noexecstack"])
    .arg("-T")
    .arg(src_dir.join("guest.ld"))
    .arg("-o")
    .arg(&elf)
    .arg(&object);
    run_tool(&mut link);
    Guest { dir, elf }
}

fn run_tool(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (binutils installed?): {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A running `ec2lab-vmm`.
pub struct Vmm {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
}

/// How a VMM run ended and everything it printed.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Vmm {
    /// Starts the VMM with `args`, stdin closed, stdout/stderr collected.
    /// `RUST_LOG` is removed so the default log level is what is tested.
    pub fn spawn<I, S>(args: I) -> Vmm
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_command(Command::new(VMM_BIN), args)
    }

    /// Starts the VMM with `args` and these environment variables set.
    pub fn spawn_with_env<I, S>(env: &[(&str, &str)], args: I) -> Vmm
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(VMM_BIN);
        command.envs(env.iter().copied());
        Self::spawn_command(command, args)
    }

    /// Starts the VMM inside network namespace `ns` (`ip netns exec` execs
    /// it, so the child's PID is the VMM's).
    pub fn spawn_in<I, S>(ns: &NetNs, args: I) -> Vmm
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_command(ns.command(&[VMM_BIN]), args)
    }

    fn spawn_command<I, S>(mut command: Command, args: I) -> Vmm
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ec2lab-vmm");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), stdout.clone()),
            collect(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Vmm {
            child,
            stdout,
            stderr,
            readers,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Sends `signal` to the VMM process (by its PID).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's PID; the child has not been
        // reaped (we hold it), so the PID cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("stdout lock")).into_owned()
    }

    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    /// The exit status if the VMM has already exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on the VMM")
    }

    /// Waits until the guest's serial output contains `needle`; fails the
    /// test (with all output) if the VMM exits first or `timeout` passes.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout_so_far().contains(needle) {
                return;
            }
            if let Some(status) = self.try_status() {
                // The readers may still hold the last bytes.
                thread::sleep(Duration::from_millis(50));
                if self.stdout_so_far().contains(needle) {
                    return;
                }
                panic!(
                    "VMM exited ({status}) before printing {needle:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout_so_far(),
                    self.stderr_so_far()
                );
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                panic!(
                    "no {needle:?} on the VMM's stdout within {timeout:?} (VMM killed)\nstdout:\n{}\nstderr:\n{}",
                    self.stdout_so_far(),
                    self.stderr_so_far()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the VMM to exit; kills it by PID and fails the test if it
    /// is still running after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                self.child.wait().ok();
                panic!(
                    "VMM still running after {timeout:?}; killed PID {}\nstdout:\n{}\nstderr:\n{}",
                    self.child.id(),
                    self.stdout_so_far(),
                    self.stderr_so_far()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader thread");
        }
        Outcome {
            status,
            stdout: self.stdout_so_far(),
            stderr: self.stderr_so_far(),
            elapsed,
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

fn collect<R: Read + Send + 'static>(mut from: R, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .expect("output lock")
                .extend_from_slice(&buf[..n]);
        }
    })
}

/// Runs the VMM to completion (at most [`RUN_TIMEOUT`]).
pub fn run_vmm<I, S>(args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Vmm::spawn(args).wait(RUN_TIMEOUT)
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the exit code, showing all output when it differs.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(expected),
            "expected exit status {expected}, got {} (signal {:?})\n{self}",
            self.status,
            self.status.signal()
        );
        self
    }

    /// Asserts the guest printed `needle` on the serial console. On failure
    /// the lines most likely to say why (those sharing the needle's first
    /// word, and any fault the kernel reported) come before the whole output,
    /// so a log that keeps only its head and tail still shows them.
    pub fn assert_stdout_contains(&self, needle: &str) -> &Self {
        if self.stdout.contains(needle) {
            return self;
        }
        let tag = needle.split_whitespace().next().unwrap_or(needle);
        let telling: Vec<&str> = self
            .stdout
            .lines()
            .filter(|line| {
                line.contains(tag)
                    || [
                        "segfault",
                        "Oops",
                        "BUG:",
                        "panic",
                        "Segmentation fault",
                        "killed",
                    ]
                    .iter()
                    .any(|word| line.contains(word))
            })
            .collect();
        panic!(
            "guest output lacks {needle:?}; the telling lines:\n{}\n{self}",
            telling.join("\n")
        );
    }

    /// The exit counts logged for `vcpu` on exit (`vcpuN exits: k=v …`).
    pub fn exit_counts(&self, vcpu: usize) -> HashMap<String, u64> {
        let marker = format!("vcpu{vcpu} exits:");
        let line = self
            .stderr
            .lines()
            .find(|line| line.contains(&marker))
            .unwrap_or_else(|| panic!("no {marker:?} line on stderr\n{self}"));
        let counts = parse_counts(&line[line.find(&marker).expect("marker") + marker.len()..]);
        assert!(!counts.is_empty(), "no key=value pairs in {line:?}");
        counts
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- status: {} after {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Parses `key=N` pairs, ignoring anything else (punctuation, text).
pub fn parse_counts(text: &str) -> HashMap<String, u64> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = value.trim_end_matches(|c: char| !c.is_ascii_digit());
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The default arguments for booting `guest` (1 vCPU, 128 MiB).
pub fn boot_args(guest: &Guest) -> Vec<String> {
    vec![
        "--kernel".into(),
        guest.elf.display().to_string(),
        "--memory-mib".into(),
        "128".into(),
    ]
}

/// Minimal HTTP/1.1 client for the VMM's control API on a Unix socket.
pub mod api {
    use super::*;

    #[derive(Debug)]
    pub struct Response {
        pub status: u16,
        pub body: String,
    }

    impl Response {
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
        }
    }

    /// Sends one request (`Connection: close`) and reads the whole reply.
    pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        let body = body.unwrap_or("");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n"
        );
        if method != "GET" {
            request.push_str("Content-Type: application/json\r\n");
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream
            .write_all(request.as_bytes())
            .expect("write API request");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("read API reply to {method} {path}: {e}"));
        parse_response(&raw).unwrap_or_else(|| {
            panic!(
                "malformed HTTP reply to {method} {path}: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }

    fn parse_response(raw: &[u8]) -> Option<Response> {
        let text = String::from_utf8_lossy(raw);
        let (head, rest) = text.split_once("\r\n\r\n")?;
        let mut lines = head.lines();
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            decode_chunked(rest)?
        } else {
            match headers.iter().find(|(k, _)| k == "content-length") {
                Some((_, len)) => rest.get(..len.parse::<usize>().ok()?)?.to_string(),
                None => rest.to_string(),
            }
        };
        Some(Response { status, body })
    }

    fn decode_chunked(mut rest: &str) -> Option<String> {
        let mut body = String::new();
        loop {
            let (size_line, after) = rest.split_once("\r\n")?;
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                return Some(body);
            }
            body.push_str(after.get(..size)?);
            rest = after.get(size + 2..)?;
        }
    }

    /// Boots `guest` with an API socket in its scratch directory and `extra`
    /// flags, waits for `ready_line` on the console and for the API to
    /// answer; returns the socket and the running VMM.
    pub fn spawn_with_api(guest: &Guest, extra: &[&str], ready_line: &str) -> (PathBuf, Vmm) {
        let socket = guest.scratch("api.sock");
        let kernel = guest.elf.display().to_string();
        let sock = socket.display().to_string();
        let mut args = vec!["--kernel", kernel.as_str(), "--api-sock", sock.as_str()];
        args.extend_from_slice(extra);
        let mut vmm = Vmm::spawn(args);
        vmm.wait_for_stdout(ready_line, Duration::from_secs(30));
        wait_ready(&mut vmm, &socket);
        (socket, vmm)
    }

    /// Waits until the API answers `GET /vm`; fails if the VMM exits or
    /// nothing answers within 20 s.
    pub fn wait_ready(vmm: &mut Vmm, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if socket.exists() && UnixStream::connect(socket).is_ok() {
                return;
            }
            if let Some(status) = vmm.try_status() {
                panic!(
                    "VMM exited ({status}) before its API socket {} answered\nstdout:\n{}\nstderr:\n{}",
                    socket.display(),
                    vmm.stdout_so_far(),
                    vmm.stderr_so_far()
                );
            }
            assert!(
                Instant::now() < deadline,
                "API socket {} not ready after 20 s\nstderr:\n{}",
                socket.display(),
                vmm.stderr_so_far()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /vm`, asserting 200 and a JSON body.
    pub fn get_vm(socket: &Path) -> serde_json::Value {
        let reply = request(socket, "GET", "/vm", None);
        assert_eq!(reply.status, 200, "GET /vm: {reply:?}");
        reply.json()
    }

    /// An exit counter of one vCPU from a `GET /vm` body (0 if absent:
    /// counters may be reported only once non-zero).
    pub fn vcpu_exits(vm: &serde_json::Value, vcpu: u64, reason: &str) -> u64 {
        let vcpus = vm["vcpus"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /vm has no vcpus array: {vm}"));
        let entry = vcpus
            .iter()
            .find(|v| v["id"].as_u64() == Some(vcpu))
            .unwrap_or_else(|| panic!("GET /vm lists no vcpu {vcpu}: {vm}"));
        entry["exits"][reason].as_u64().unwrap_or(0)
    }

    pub fn state(vm: &serde_json::Value) -> String {
        vm["state"]
            .as_str()
            .unwrap_or_else(|| panic!("GET /vm has no state string: {vm}"))
            .to_string()
    }
}
