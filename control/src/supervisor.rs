//! One `ec2lab-vmm` process per running instance: its files, its root
//! volume, starting it, watching it end, and stopping it gracefully.
//!
//! VMM processes are started in their own session with their output going
//! to files, so they outlive the control plane: a crash or `kill -9` of the
//! daemon takes no instance down. A restarted daemon finds them again from
//! the pid and process start time it recorded ([`VmProcess`]), and learns
//! why one ended from the exit file the VMM writes (`--exit-file`), since
//! only a parent could otherwise collect the exit status.
//!
//! Everything the VMM reads or answers (its config file, its control API,
//! its exit statuses) is spelled by the `ec2lab-vmm-api` crate the VMM
//! itself is built on, so the two cannot drift apart.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2lab_vmm_api::api::{ActionType, ApiRequest, VmInfo, VmStateRequest};
use ec2lab_vmm_api::config::{DiskConfig, NetConfig, VmConfig, VsockConfig};
use ec2lab_vmm_api::exit::{ExitRecord, ExitStatus};

use crate::cgroup::{Cgroups, Limits};
use ec2lab_vmm_api::{flags, snapshot};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a VMM may take to write a hibernation (guest memory to disk).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A file under the instance's directory.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A tool (cp, resize2fs) failed.
    #[error("{tool} failed for {path}: {detail}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Its operand.
        path: PathBuf,
        /// Its stderr.
        detail: String,
    },
    /// The image's root file cannot be opened as a regular file.
    #[error("the image's root file: {}", .0.summary())]
    Image(ec2lab_images::ImageError),
    /// The copied root file is not what was registered: the image changed
    /// after RegisterImage (or the catalog scan) checked it.
    #[error("the image's root file changed since the image was registered; no volume was made")]
    ImageChanged,
    /// The VMM could not be started.
    #[error("cannot start {vmm}: {source}")]
    Spawn {
        /// The VMM binary.
        vmm: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM config could not be written as JSON (a path that is not
    /// UTF-8: JSON strings cannot carry it).
    #[error("cannot encode the VMM config {path}: {source}")]
    Encode {
        /// The config file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The VMM's control API did not answer as expected.
    #[error("VMM API {sock}: {detail}")]
    Api {
        /// Its socket.
        sock: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let path = path.to_path_buf();
    move |source| SupervisorError::Io { what, path, source }
}

/// Copies the regular file `image` to `to` (private) and checks that the
/// copy's SHA-256 is `sha256`.
fn copy_verified(image: &Path, sha256: &str, to: &Path) -> Result<(), SupervisorError> {
    use std::os::fd::AsRawFd;
    let source = ec2lab_images::open_regular(image).map_err(SupervisorError::Image)?;
    // cp opens the daemon's descriptor through /proc, so it copies the
    // file that was checked, not whatever the path names by then.
    let through_fd = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        source.as_raw_fd()
    ));
    run_tool(
        "cp",
        std::process::Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(&through_fd)
            .arg(to),
        to,
    )?;
    drop(source);
    // The volume holds the instance's data, whatever the image's mode.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error("chmod", to))?;
    }
    let copied = ec2lab_images::sha256_file(to).map_err(io_error("hash", to))?;
    if !copied.eq_ignore_ascii_case(sha256) {
        log::error!(
            "{}: copied root file has sha256 {copied}, registered {sha256}",
            image.display()
        );
        return Err(SupervisorError::ImageChanged);
    }
    Ok(())
}

/// Grows `volume` to `size_bytes` (never shrinks), and its ext4 file
/// system with it.
fn grow_volume(volume: &Path, size_bytes: u64) -> Result<(), SupervisorError> {
    let current = std::fs::metadata(volume)
        .map_err(io_error("stat", volume))?
        .len();
    if size_bytes > current {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(volume)
            .map_err(io_error("open", volume))?;
        file.set_len(size_bytes).map_err(io_error("grow", volume))?;
        if is_ext4(volume) {
            run_tool(
                "resize2fs",
                std::process::Command::new("resize2fs")
                    .arg("-f")
                    .arg(volume),
                volume,
            )?;
        }
    }
    Ok(())
}

/// What to boot for an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// The instance (names its directory).
    pub instance_id: String,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initrd, if the image has one.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs of the instance type.
    pub vcpus: u32,
    /// Memory the instance boots with (all of its type's, or part when
    /// the rest is `hotplug_memory`).
    pub memory_mib: u64,
    /// The rest of the type's memory, plugged once the guest is up.
    pub hotplug_memory: Option<ec2lab_vmm_api::config::HotplugMemoryConfig>,
    /// The instance's root volume (already prepared).
    pub root_volume: PathBuf,
    /// Network cards (tap and MAC), eth0 first. Filled by the networking
    /// layer.
    pub nets: Vec<NetConfig>,
    /// The network namespace (a `/run/netns` file) the VMM runs in: its
    /// taps live in the VPC's namespace, and TUNSETIFF finds a tap by name
    /// only in the caller's own. None: the daemon's namespace.
    pub netns: Option<PathBuf>,
    /// vsock context id, if the instance gets a vsock device.
    pub vsock_cid: Option<u32>,
    /// The VMM's stall watchdog period (None: the VMM's default).
    pub stall_timeout: Option<Duration>,
    /// What the VMM serves at 169.254.169.254 on eth0 (None without a
    /// network card).
    pub metadata: Option<ec2lab_vmm_api::metadata::InstanceMetadata>,
    /// Launched with HibernationOptions: the VMM may save the VM into the
    /// instance's hibernation directory.
    pub hibernation: bool,
    /// Resume the VM saved in the hibernation directory instead of booting.
    pub restore: bool,
}

/// A running VMM process, identified robustly: a pid alone could be reused
/// by an unrelated process after a reboot of the host or a long downtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmProcess {
    /// Its pid.
    pub pid: i32,
    /// Its start time in clock ticks since boot (/proc/PID/stat field 22).
    pub start_time: u64,
}

/// How and why a VMM ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Its exit status; None when it left no exit file (killed by SIGKILL,
    /// or crashed before writing it).
    pub code: Option<i32>,
    /// Its own words, or what we know.
    pub reason: String,
}

impl ExitInfo {
    /// What the exit status means; None without one, or for a status the
    /// VMM does not define.
    pub fn status(&self) -> Option<ExitStatus> {
        self.code.and_then(ExitStatus::from_code)
    }

    /// The guest powered itself off.
    pub fn is_poweroff(&self) -> bool {
        self.status() == Some(ExitStatus::Poweroff)
    }

    /// The guest rebooted itself.
    pub fn is_reboot(&self) -> bool {
        self.status() == Some(ExitStatus::Reboot)
    }

    /// The VMM refused what it was given (a bad configuration or a
    /// snapshot it cannot restore) and started nothing.
    pub fn is_refusal(&self) -> bool {
        self.status() == Some(ExitStatus::BadInput)
    }

    /// The VMM was stopped through its API (`Shutdown`).
    pub fn is_api_shutdown(&self) -> bool {
        self.status() == Some(ExitStatus::ApiShutdown)
    }

    /// Something outside the VMM and its guest ended it: a signal (a host
    /// shutting down sends SIGTERM, then SIGKILL) or a death with no
    /// record at all (power loss, SIGKILL).
    pub fn ended_from_outside(&self) -> bool {
        self.code.is_none() || matches!(self.status(), Some(ExitStatus::Signal(_)))
    }
}

impl From<ExitRecord> for ExitInfo {
    fn from(record: ExitRecord) -> Self {
        Self {
            code: Some(record.code),
            reason: record.reason,
        }
    }
}

/// The files of one instance, under `<instances>/<id>/`.
#[derive(Clone, Debug)]
pub struct InstanceFiles {
    /// The directory.
    pub dir: PathBuf,
}

impl InstanceFiles {
    /// The VMM's JSON config.
    pub fn config(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    /// The guest's serial console (GetConsoleOutput).
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The VMM's own log (stderr).
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    /// The VMM's control socket.
    pub fn api_sock(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    /// The VMM's pid and start time, written at launch.
    pub fn process_file(&self) -> PathBuf {
        self.dir.join("vmm.process")
    }
    /// Where the VMM records its exit.
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// The vsock device's host-side socket.
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    /// The root volume.
    pub fn root_volume(&self) -> PathBuf {
        self.dir.join("root.img")
    }
    /// Where a hibernated instance's memory and VM state are kept, beside
    /// its root volume (the VMM's snapshot directory).
    pub fn hibernation_dir(&self) -> PathBuf {
        self.dir.join("hibernation")
    }
    /// The hibernation's VM state: present once a hibernation completed.
    pub fn hibernation_state(&self) -> PathBuf {
        self.hibernation_dir().join(snapshot::STATE_FILE)
    }
}

/// Starts, watches and stops VMM processes.
#[derive(Clone, Debug)]
pub struct Supervisor {
    vmm_bin: PathBuf,
    instances_dir: PathBuf,
    /// Whether VMMs are confined to their instance directory (`jail`):
    /// that needs root, which a daemon that manages taps has.
    jail: bool,
    /// The cgroups VMMs run in (none unless [`Supervisor::with_cgroups`]).
    cgroups: Cgroups,
}

impl Supervisor {
    /// A supervisor running `vmm_bin`, keeping instance files under
    /// `instances_dir`.
    pub fn new(vmm_bin: PathBuf, instances_dir: PathBuf) -> Self {
        Self {
            vmm_bin,
            instances_dir,
            // SAFETY: geteuid only reads the process's credentials.
            jail: unsafe { libc::geteuid() } == 0,
            cgroups: Cgroups::default(),
        }
    }

    /// Runs each VMM in cgroups of its own in `cgroups`.
    pub fn with_cgroups(mut self, cgroups: Cgroups) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// After a VMM of `instance_id` ended: its cgroups go, and an end by
    /// the OOM killer of its memory group says so.
    pub fn account_exit(&self, instance_id: &str, info: &ExitInfo) -> ExitInfo {
        let mut info = info.clone();
        let kills = self.cgroups.oom_kills(instance_id);
        if kills > 0 && info.ended_from_outside() {
            info.reason = format!(
                "the VMM went past its memory limit (guest memory + {} MiB) and the \
                 out-of-memory killer ended it ({})",
                crate::cgroup::MEMORY_OVERHEAD_BYTES >> 20,
                info.reason
            );
        }
        self.cgroups.remove(instance_id);
        info
    }

    /// Bytes free for instance files (root volumes grow as guests write),
    /// on the file system that holds them, or None when it cannot be read
    /// (the directory does not exist yet: its parent is asked).
    pub fn free_disk_bytes(&self) -> Option<u64> {
        let dir = self.instances_dir.ancestors().find(|d| d.exists())?;
        crate::reserve::free_bytes(dir)
    }

    /// The files of `instance_id`.
    pub fn files(&self, instance_id: &str) -> InstanceFiles {
        InstanceFiles {
            dir: self.instances_dir.join(instance_id),
        }
    }

    /// Copies `image` to the instance's root volume: a reflink where the
    /// file system can, sparse otherwise, so a launch costs no full copy.
    /// A volume larger than the image is grown, and an ext4 file system on
    /// it with it (what cloud-init's growpart does on EC2).
    ///
    /// The image is opened without following links and copied through the
    /// opened descriptor, and the copy is hashed and compared with
    /// `sha256`, the digest the image was registered with, before it
    /// becomes the volume: what the guest gets is what was registered, even
    /// if the file is replaced meanwhile. The price is one read of the
    /// image per launch. The copy is made under a temporary name and
    /// renamed, so a failed preparation leaves no volume behind.
    pub fn prepare_root_volume(
        &self,
        instance_id: &str,
        image: &Path,
        sha256: &str,
        size_bytes: u64,
    ) -> Result<PathBuf, SupervisorError> {
        let files = self.files(instance_id);
        std::fs::create_dir_all(&files.dir).map_err(io_error("create", &files.dir))?;
        let volume = files.root_volume();
        let partial = files.dir.join("root.img.partial");
        let result = copy_verified(image, sha256, &partial).and_then(|()| {
            grow_volume(&partial, size_bytes)?;
            std::fs::rename(&partial, &volume).map_err(io_error("rename", &partial))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result.map(|()| volume)
    }

    /// Writes the VMM config and starts the VMM in its own session.
    pub fn launch(&self, spec: &VmSpec) -> Result<VmProcess, SupervisorError> {
        let files = self.files(&spec.instance_id);
        std::fs::create_dir_all(&files.dir).map_err(io_error("create", &files.dir))?;
        for stale in [files.exit_file(), files.api_sock()] {
            let _ = std::fs::remove_file(stale);
        }
        if spec.hibernation {
            let dir = files.hibernation_dir();
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)
                .map_err(io_error("create", &dir))?;
        }
        let config = vm_config(spec, &files, self.jail);
        let path = files.config();
        let text =
            serde_json::to_string_pretty(&config).map_err(|source| SupervisorError::Encode {
                path: path.clone(),
                source,
            })?;
        std::fs::write(&path, format!("{text}\n")).map_err(io_error("write", &path))?;
        let log_path = files.vmm_log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("open", &log_path))?;
        let log_err = log.try_clone().map_err(io_error("open", &log_path))?;
        let netns = spec
            .netns
            .as_ref()
            .map(|p| std::fs::File::open(p).map_err(io_error("open", p)))
            .transpose()?;
        let mut command = std::process::Command::new(&self.vmm_bin);
        command
            .arg(format!("--{}", flags::CONFIG))
            .arg(&path)
            .arg(format!("--{}", flags::EXIT_FILE))
            .arg(files.exit_file());
        if spec.restore {
            command
                .arg(format!("--{}", flags::RESTORE_FROM))
                .arg(files.hibernation_dir());
        }
        command
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err);
        crate::network::netns::exec_in(&mut command, netns.as_ref(), true);
        // The guest's memory is what it boots with and what it may plug.
        let guest_mib = spec.memory_mib + spec.hotplug_memory.map_or(0, |h| h.total_size_mib);
        let limits = Limits::for_instance(spec.vcpus, guest_mib);
        match self.cgroups.prepare(&spec.instance_id, &limits) {
            Ok(prepared) => prepared.join_in(&mut command),
            Err(e) => log::warn!("{}: the VMM runs without cgroups: {e}", spec.instance_id),
        }
        let child = command.spawn().map_err(|source| SupervisorError::Spawn {
            vmm: self.vmm_bin.clone(),
            source,
        })?;
        let pid = child.id() as i32;
        // The child is reaped by `wait_exit` (waitpid) or, after a daemon
        // restart, by init; dropping the handle does not kill it.
        drop(child);
        let start_time = process_start_time(pid).unwrap_or(0);
        let process = VmProcess { pid, start_time };
        let record = files.process_file();
        let text = serde_json::to_string(&process).unwrap_or_default();
        std::fs::write(&record, text).map_err(io_error("write", &record))?;
        Ok(process)
    }

    /// The VMM of `instance_id` if `pid` is still it: the process file
    /// written at launch gives the start time that tells a live VMM from a
    /// reused pid.
    pub fn adopt(&self, instance_id: &str, pid: i32) -> Option<VmProcess> {
        let text = std::fs::read_to_string(self.files(instance_id).process_file()).ok()?;
        let process: VmProcess = serde_json::from_str(&text).ok()?;
        (process.pid == pid && self.is_alive(process)).then_some(process)
    }

    /// Every live VMM started from this supervisor's instances directory,
    /// with the instance it belongs to (found by its config path).
    pub fn scan_live(&self) -> Vec<(String, VmProcess)> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<PathBuf> = cmdline
                .split(|b| *b == 0)
                .map(|a| PathBuf::from(String::from_utf8_lossy(a).into_owned()))
                .collect();
            let is_vmm = args
                .first()
                .is_some_and(|a| a.file_name().is_some_and(|n| n == "ec2lab-vmm"));
            if !is_vmm {
                continue;
            }
            let instance = args.iter().find_map(|a| {
                let rel = a.strip_prefix(&self.instances_dir).ok()?;
                let mut parts = rel.components();
                let id = parts.next()?.as_os_str().to_string_lossy().into_owned();
                (parts.as_path() == Path::new("vm.json")).then_some(id)
            });
            if let (Some(id), Some(start_time)) = (instance, process_start_time(pid)) {
                if !is_zombie(pid) {
                    found.push((id, VmProcess { pid, start_time }));
                }
            }
        }
        found
    }

    /// Whether `process` is still this VMM (same pid, same start time).
    pub fn is_alive(&self, process: VmProcess) -> bool {
        match process_start_time(process.pid) {
            Some(t) => t == process.start_time && !is_zombie(process.pid),
            None => false,
        }
    }

    /// Waits until `process` has ended and says why.
    pub async fn wait_exit(&self, instance_id: &str, process: VmProcess) -> ExitInfo {
        let mut wait_status = None;
        if self.is_alive(process) {
            match pidfd_open(process.pid) {
                // SAFETY: an OwnedFd is a valid open descriptor that stays
                // the same until the AsyncFd that owns it is dropped.
                Ok(fd) => match unsafe { AsyncFd::register(fd) } {
                    Ok(afd) => {
                        let _ = afd.readable().await;
                    }
                    Err(_) => self.poll_until_dead(process).await,
                },
                Err(_) => self.poll_until_dead(process).await,
            }
        }
        // Reap it if it is our child; harmless otherwise.
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on a pid only reads its status.
        let reaped = unsafe { libc::waitpid(process.pid, &mut status, libc::WNOHANG) };
        if reaped == process.pid {
            wait_status = Some(status);
        }
        self.exit_info(instance_id, wait_status)
    }

    async fn poll_until_dead(&self, process: VmProcess) {
        while self.is_alive(process) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Why the VMM of `instance_id` ended, from its exit file or, failing
    /// that, the wait status if we collected one.
    pub fn exit_info(&self, instance_id: &str, wait_status: Option<i32>) -> ExitInfo {
        let path = self.files(instance_id).exit_file();
        if let Some(record) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<ExitRecord>(&text).ok())
        {
            return record.into();
        }
        match wait_status {
            Some(s) if libc::WIFSIGNALED(s) => ExitInfo {
                code: None,
                reason: format!("VMM killed by signal {}", libc::WTERMSIG(s)),
            },
            Some(s) if libc::WIFEXITED(s) => ExitInfo {
                code: Some(libc::WEXITSTATUS(s)),
                reason: format!("VMM exited with status {}", libc::WEXITSTATUS(s)),
            },
            _ => ExitInfo {
                code: None,
                reason: "VMM ended without recording why".to_string(),
            },
        }
    }

    /// Stops the VM the way EC2 stops an instance: the guest gets an ACPI
    /// Ctrl-Alt-Del and `graceful` time to power off; then the VMM is told
    /// to shut down, and as a last resort killed. Returns once it is gone.
    pub async fn stop(
        &self,
        instance_id: &str,
        process: VmProcess,
        graceful: Duration,
    ) -> ExitInfo {
        let sock = self.files(instance_id).api_sock();
        let waiter = self.wait_exit(instance_id, process);
        tokio::pin!(waiter);
        if !graceful.is_zero()
            && vmm_api(&sock, ApiRequest::Action(ActionType::SendCtrlAltDel))
                .await
                .is_ok()
        {
            if let Ok(info) = tokio::time::timeout(graceful, &mut waiter).await {
                return info;
            }
        }
        if vmm_api(&sock, ApiRequest::Action(ActionType::Shutdown))
            .await
            .is_ok()
        {
            if let Ok(info) = tokio::time::timeout(Duration::from_secs(10), &mut waiter).await {
                return info;
            }
        }
        if self.is_alive(process) {
            log::warn!(
                "{instance_id}: VMM pid {} did not stop; killing it",
                process.pid
            );
            // SAFETY: kill(2) on a pid we verified (pid + start time) is our VMM.
            unsafe { libc::kill(process.pid, libc::SIGKILL) };
        }
        waiter.await
    }

    /// Hibernates the VM: pauses it, saves it into the hibernation
    /// directory and ends the VMM. An error leaves the VM running as it
    /// was (resumed), for the caller to stop it the ordinary way.
    pub async fn save_and_stop(
        &self,
        instance_id: &str,
        process: VmProcess,
    ) -> Result<ExitInfo, SupervisorError> {
        let sock = self.files(instance_id).api_sock();
        let checked = |(status, body): (u16, String)| {
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(SupervisorError::Api {
                    sock: sock.clone(),
                    detail: format!("status {status}: {}", body.trim()),
                })
            }
        };
        vmm_api(&sock, ApiRequest::SetState(VmStateRequest::Paused))
            .await
            .and_then(checked)?;
        let saved =
            tokio::time::timeout(SNAPSHOT_TIMEOUT, vmm_api(&sock, ApiRequest::CreateSnapshot))
                .await
                .map_err(|_| SupervisorError::Api {
                    sock: sock.clone(),
                    detail: format!("no snapshot after {SNAPSHOT_TIMEOUT:?}"),
                })
                .and_then(|r| r.and_then(checked));
        if let Err(e) = saved {
            let _ = vmm_api(&sock, ApiRequest::SetState(VmStateRequest::Resumed)).await;
            return Err(e);
        }
        Ok(self.stop(instance_id, process, Duration::ZERO).await)
    }

    /// Forgets a hibernation: the saved state and memory (and a partial
    /// save's temporary files) go, so the next start boots from the volume.
    pub fn discard_hibernation(&self, instance_id: &str) {
        let dir = self.files(instance_id).hibernation_dir();
        for name in snapshot::ALL_FILES {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("{instance_id}: cannot remove {name}: {e}"),
            }
        }
    }

    /// Waits until the VMM answers on its API or ends; true when it answers.
    pub async fn wait_api(&self, instance_id: &str, process: VmProcess, timeout: Duration) -> bool {
        let sock = self.files(instance_id).api_sock();
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if !self.is_alive(process) {
                return false;
            }
            if vmm_describe(&sock).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Removes everything of a terminated instance.
    pub fn remove_files(&self, instance_id: &str) -> Result<(), SupervisorError> {
        let dir = self.files(instance_id).dir;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &dir)(e)),
        }
    }
}

/// The VMM's config for `spec` (what `ec2lab-vmm --config` reads): the
/// instance's files, its root volume as /dev/vda, an entropy device, and
/// the VMM's defaults for everything an instance does not choose.
/// With `jail`, the VMM is confined to the instance's directory once built:
/// every file it uses by path is there.
fn vm_config(spec: &VmSpec, files: &InstanceFiles, jail: bool) -> VmConfig {
    let defaults = VmConfig::new(spec.kernel.clone());
    VmConfig {
        initrd: spec.initrd.clone(),
        cmdline: spec.cmdline.clone(),
        vcpus: u64::from(spec.vcpus),
        memory_mib: spec.memory_mib,
        hotplug_memory: spec.hotplug_memory,
        api_sock: Some(files.api_sock()),
        serial_out: Some(files.serial_log()),
        // At least a second: 0 would turn the watchdog off.
        stall_timeout_secs: spec
            .stall_timeout
            .map_or(defaults.stall_timeout_secs, |t| t.as_secs().max(1)),
        disks: vec![DiskConfig {
            path: spec.root_volume.clone(),
            read_only: false,
        }],
        nets: spec.nets.clone(),
        rng: true,
        vsock: spec.vsock_cid.map(|cid| VsockConfig {
            cid: u64::from(cid),
            uds: files.vsock(),
        }),
        metadata: spec.metadata.clone().filter(|_| !spec.nets.is_empty()),
        snapshot_dir: spec.hibernation.then(|| files.hibernation_dir()),
        jail: jail.then(|| files.dir.clone()),
        ..defaults
    }
}

fn run_tool(
    tool: &'static str,
    command: &mut std::process::Command,
    path: &Path,
) -> Result<(), SupervisorError> {
    let out = command.output().map_err(|e| SupervisorError::Tool {
        tool,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(SupervisorError::Tool {
            tool,
            path: path.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Whether `path` holds an ext2/3/4 file system (magic 0xEF53 at 1080).
fn is_ext4(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(1080))?;
            f.read_exact(&mut magic)
        })
        .is_ok()
        && magic == [0x53, 0xef]
}

/// Field 22 of /proc/PID/stat: the start time in clock ticks since boot.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. Field 3 is the state, so 22 is index 19 here.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The VMM's `GET /vm` answer, as far as the control plane reads it.
pub async fn vmm_describe(sock: &Path) -> Result<VmInfo, SupervisorError> {
    let (_, body) = vmm_api(sock, ApiRequest::Describe).await?;
    serde_json::from_str(&body).map_err(|e| SupervisorError::Api {
        sock: sock.to_path_buf(),
        detail: format!("unreadable GET /vm answer: {e}"),
    })
}

/// One request to a VMM's control API (HTTP/1.1 over its Unix socket);
/// returns the status code and body.
pub async fn vmm_api(
    sock: &Path,
    api_request: ApiRequest,
) -> Result<(u16, String), SupervisorError> {
    let fail = |detail: String| SupervisorError::Api {
        sock: sock.to_path_buf(),
        detail,
    };
    let (method, path) = (api_request.method(), api_request.path());
    let body = match api_request.body() {
        Some(body) => serde_json::to_string(&body).map_err(|e| fail(format!("encode: {e}")))?,
        None => String::new(),
    };
    let request = async {
        let mut stream = tokio::net::UnixStream::connect(sock)
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| fail(format!("write: {e}")))?;
        stream
            .write_all(body.as_bytes())
            .await
            .map_err(|e| fail(format!("write: {e}")))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| fail(format!("read: {e}")))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| fail(format!("malformed response {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    match tokio::time::timeout(Duration::from_secs(5), request).await {
        Ok(result) => {
            let (status, body) = result?;
            if (200..300).contains(&status) {
                Ok((status, body))
            } else {
                Err(fail(format!("{method} {path} answered {status}: {body}")))
            }
        }
        Err(_) => Err(fail(format!("{method} {path}: no answer within 5 s"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec2lab_vmm_api::config::MacAddr;

    fn spec() -> VmSpec {
        VmSpec {
            instance_id: "i-0123456789abcdef0".to_string(),
            kernel: "/images/vmlinux".into(),
            initrd: None,
            cmdline: "console=ttyS0 root=/dev/vda rw".to_string(),
            vcpus: 2,
            memory_mib: 512,
            hotplug_memory: None,
            root_volume: "/i/root.img".into(),
            nets: vec![NetConfig {
                tap: "tap0".to_string(),
                mac: Some(MacAddr([6, 0, 0x0a, 0, 0, 5])),
            }],
            netns: None,
            vsock_cid: Some(3),
            stall_timeout: Some(Duration::from_secs(120)),
            metadata: None,
            hibernation: false,
            restore: false,
        }
    }

    fn files() -> InstanceFiles {
        InstanceFiles { dir: "/i".into() }
    }

    /// What `vm_config` wrote with `serde_json::json!` before the contract
    /// crate, for `spec()`: the typed config must mean exactly this.
    const FORMER_CONFIG: &str = r#"{
      "api_sock": "/i/api.sock", "cmdline": "console=ttyS0 root=/dev/vda rw",
      "disks": [{"path": "/i/root.img", "read_only": false}], "initrd": null,
      "kernel": "/images/vmlinux", "memory_mib": 512,
      "nets": [{"mac": "06:00:0a:00:00:05", "tap": "tap0"}], "rng": true,
      "serial_out": "/i/console.log", "stall_timeout_secs": 120, "vcpus": 2,
      "vsock": {"cid": 3, "uds": "/i/vsock.sock"}
    }"#;

    #[test]
    fn the_typed_config_means_what_the_former_json_said() {
        let former: VmConfig = serde_json::from_str(FORMER_CONFIG).expect("parses");
        assert_eq!(vm_config(&spec(), &files(), false), former);
    }

    #[test]
    fn a_jailed_vmm_is_confined_to_the_instance_directory() {
        let config = vm_config(&spec(), &files(), true);
        assert_eq!(config.jail.as_deref(), Some(Path::new("/i")));
        for path in [config.api_sock, config.vsock.map(|v| v.uds)]
            .into_iter()
            .flatten()
        {
            assert!(path.starts_with("/i"), "{path:?} is outside the jail");
        }
    }

    #[test]
    fn without_a_stall_timeout_or_vsock_the_vmm_defaults_apply() {
        let spec = VmSpec {
            stall_timeout: None,
            metadata: None,
            vsock_cid: None,
            nets: Vec::new(),
            ..spec()
        };
        let config = vm_config(&spec, &files(), false);
        let defaults = VmConfig::new(spec.kernel.clone());
        assert_eq!(config.stall_timeout_secs, defaults.stall_timeout_secs);
        assert_eq!(config.vsock, None);
        assert!(config.nets.is_empty());
    }

    #[test]
    fn only_an_instance_launched_for_hibernation_gets_a_snapshot_directory() {
        assert_eq!(vm_config(&spec(), &files(), false).snapshot_dir, None);
        let spec = VmSpec {
            hibernation: true,
            ..spec()
        };
        assert_eq!(
            vm_config(&spec, &files(), false).snapshot_dir,
            Some(files().hibernation_dir())
        );
    }

    #[test]
    fn a_resume_passes_the_hibernation_directory_and_launch_makes_it_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // `echo` stands in for the VMM and prints the arguments it got.
        let supervisor = Supervisor::new("echo".into(), dir.path().to_path_buf());
        let spec = VmSpec {
            hibernation: true,
            restore: true,
            ..spec()
        };
        supervisor.launch(&spec).expect("launches");
        let files = supervisor.files(&spec.instance_id);
        let mode = std::fs::metadata(files.hibernation_dir())
            .expect("hibernation directory")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let log = files.vmm_log();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let args = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains('\n') || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let expected = format!("--restore-from {}", files.hibernation_dir().display());
        assert!(args.contains(&expected), "{args}");
    }

    #[test]
    fn a_sub_second_stall_timeout_does_not_turn_the_watchdog_off() {
        let spec = VmSpec {
            stall_timeout: Some(Duration::from_millis(10)),
            metadata: None,
            ..spec()
        };
        assert_eq!(vm_config(&spec, &files(), false).stall_timeout_secs, 1);
    }

    #[test]
    fn launch_writes_a_config_the_vmm_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        // `true` stands in for the VMM: it exits at once, config unread.
        let supervisor = Supervisor::new("true".into(), dir.path().to_path_buf());
        let spec = spec();
        supervisor.launch(&spec).expect("launches");
        let files = supervisor.files(&spec.instance_id);
        let text = std::fs::read_to_string(files.config()).expect("config written");
        let written: VmConfig = serde_json::from_str(&text).expect("a VM config");
        assert_eq!(written, vm_config(&spec, &files, supervisor.jail));
        assert!(text.ends_with("}\n"), "{text}");
    }

    #[test]
    fn a_root_volume_is_private_whatever_the_image_s_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("image.raw");
        std::fs::write(&image, vec![0u8; 4096]).expect("image");
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let supervisor = Supervisor::new("true".into(), dir.path().join("instances"));
        let digest = ec2lab_images::sha256_file(&image).expect("digest");
        let volume = supervisor
            .prepare_root_volume("i-1", &image, &digest, 8192)
            .expect("prepared");
        let meta = std::fs::metadata(&volume).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 8192, "grown to the volume size");
        let dir_of = |v: &Path| {
            std::fs::read_dir(v.parent().expect("dir"))
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(dir_of(&volume), ["root.img"], "nothing partial is left");

        // A copy that fails leaves neither a volume nor a partial one.
        let failed =
            supervisor.prepare_root_volume("i-2", &dir.path().join("missing.raw"), &digest, 8192);
        assert!(failed.is_err());
        let files = supervisor.files("i-2");
        assert!(
            dir_of(&files.root_volume()).is_empty(),
            "{:?}",
            dir_of(&files.root_volume())
        );
    }

    #[test]
    fn free_disk_is_read_from_the_instances_directory_or_its_nearest_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let here = Supervisor::new("true".into(), dir.path().to_path_buf());
        let later = Supervisor::new("true".into(), dir.path().join("not/yet"));
        let free = here.free_disk_bytes().expect("statvfs");
        assert!(free > 0);
        let again = later.free_disk_bytes().expect("statvfs of the parent");
        // Same file system; other tests may write meanwhile.
        assert!(again.abs_diff(free) < 1 << 30, "{free} vs {again}");
    }

    #[test]
    fn a_root_file_that_is_not_what_was_registered_makes_no_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("image.raw");
        std::fs::write(&image, vec![1u8; 4096]).expect("image");
        let registered = ec2lab_images::sha256_file(&image).expect("digest");
        std::fs::write(&image, vec![2u8; 4096]).expect("changed");
        let supervisor = Supervisor::new("true".into(), dir.path().join("instances"));
        let e = supervisor
            .prepare_root_volume("i-1", &image, &registered, 8192)
            .expect_err("changed image");
        assert!(matches!(e, SupervisorError::ImageChanged), "{e}");
        let link = dir.path().join("link.raw");
        std::os::unix::fs::symlink(&image, &link).expect("symlink");
        let e = supervisor
            .prepare_root_volume("i-1", &link, &registered, 8192)
            .expect_err("symlink");
        assert!(matches!(e, SupervisorError::Image(_)), "{e}");
        let files = supervisor.files("i-1");
        let left: Vec<_> = std::fs::read_dir(&files.dir)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "no volume, no partial copy: {left:?}");
    }

    #[test]
    fn exit_files_are_read_by_meaning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let supervisor = Supervisor::new("true".into(), dir.path().to_path_buf());
        let files = supervisor.files("i-1");
        std::fs::create_dir_all(&files.dir).expect("mkdir");
        let cases = [
            (ExitStatus::Poweroff, true, false, false, false),
            (ExitStatus::Reboot, false, true, false, false),
            (ExitStatus::ApiShutdown, false, false, true, false),
            (ExitStatus::TripleFault, false, false, false, false),
            (ExitStatus::Seccomp, false, false, false, false),
            (ExitStatus::Signal(libc::SIGTERM), false, false, false, true),
        ];
        for (status, poweroff, reboot, api_shutdown, outside) in cases {
            let record = ExitRecord {
                code: status.code(),
                reason: format!("{status:?}"),
            };
            let text = serde_json::to_string(&record).expect("serialises");
            std::fs::write(files.exit_file(), text).expect("write");
            let info = supervisor.exit_info("i-1", None);
            assert_eq!(info.status(), Some(status));
            assert_eq!(
                (
                    info.is_poweroff(),
                    info.is_reboot(),
                    info.is_api_shutdown(),
                    info.ended_from_outside()
                ),
                (poweroff, reboot, api_shutdown, outside),
                "{status:?}"
            );
            assert_eq!(info.reason, format!("{status:?}"));
        }
    }

    #[test]
    fn a_vmm_that_left_no_exit_file_is_judged_by_its_wait_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let supervisor = Supervisor::new("true".into(), dir.path().to_path_buf());
        // A raw wait status: exit status in the second byte.
        let info = supervisor.exit_info("i-none", Some(ExitStatus::Reboot.code() << 8));
        assert!(info.is_reboot(), "{info:?}");
        let info = supervisor.exit_info("i-none", None);
        assert_eq!((info.code, info.status()), (None, None));
        assert!(
            info.ended_from_outside(),
            "no record at all: power loss or SIGKILL"
        );
    }

    #[test]
    fn a_vmm_the_oom_killer_ended_says_so_and_its_cgroups_go() {
        use crate::cgroup::{Cgroups, Layout};
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::V1 {
            memory: dir.path().join("memory"),
            pids: dir.path().join("pids"),
            cpu: dir.path().join("cpu"),
        };
        for group in layout.groups("i-1") {
            std::fs::create_dir_all(&group).expect("group");
        }
        let oom = dir.path().join("memory/ec2lab/i-1/memory.oom_control");
        std::fs::write(&oom, "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n").expect("write");
        let supervisor = Supervisor::new("true".into(), dir.path().join("instances"))
            .with_cgroups(Cgroups::with_layout(Some(layout.clone())));
        let killed = ExitInfo {
            code: None,
            reason: "killed by signal 9".into(),
        };
        let info = supervisor.account_exit("i-1", &killed);
        assert!(
            info.reason
                .starts_with("the VMM went past its memory limit")
                && info.reason.ends_with("(killed by signal 9)"),
            "{}",
            info.reason
        );
        // An exit of its own is not blamed on the OOM killer.
        std::fs::write(&oom, "oom_kill 1\n").expect("write");
        let poweroff = ExitInfo {
            code: Some(ExitStatus::Poweroff.code()),
            reason: "guest powered off".into(),
        };
        assert_eq!(
            supervisor.account_exit("i-1", &poweroff).reason,
            "guest powered off"
        );
        // Empty groups are removed (the memory one holds the test's file).
        std::fs::remove_file(&oom).expect("remove");
        supervisor.account_exit("i-1", &poweroff);
        for group in layout.groups("i-1") {
            assert!(!group.exists(), "{} is left", group.display());
        }
    }
}
