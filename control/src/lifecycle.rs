//! The lab: instances' lives, joining the state machine (`model::state`),
//! the repository (`db`) and the VMM processes (`supervisor`).
//!
//! This module is the VMM side (boot, watch, restart, stop, reconcile);
//! the rules of the operations the API asks for are in `crate::instances`,
//! the image catalog in `crate::images`.
//!
//! Every transition is written to SQLite before the side effect it causes
//! (the VMM started or stopped), and every VMM exit is handled by one
//! watcher task per process, so the database always says what should be,
//! and [`Lab::reconcile`] can bring reality back in line after the daemon
//! was killed at any point.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ec2lab_vmm_api::api::Stall;
use time::OffsetDateTime;

use crate::checkin::{self, CheckIn, CheckinListeners};
use crate::db::{Db, DbError};
use crate::model::instance_types::{self, CapacityPolicy, HostResources};
use crate::model::state::{self, Event, InstanceState, VmmExit};
use crate::model::status::{CheckinRecord, InstanceHealth};
use crate::model::{Instance, VmmHandle};
use crate::network::{Attachment, Network, NetworkError};
use crate::supervisor::{ExitInfo, Supervisor, SupervisorError, VmProcess, VmSpec};

/// Free disk below which no instance launches or starts
/// (InsufficientInstanceCapacity): root volumes are sparse and grow as
/// guests write, and the database must still be able to record terminations
/// when the disk fills.
pub const DISK_RESERVE_BYTES: u64 = 1 << 30;

/// The waits before handling a VMM's exit again after a store error.
const EXIT_RETRY_DELAYS: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(5),
];

/// Errors of lifecycle operations, beyond the repository's.
#[derive(Debug, thiserror::Error)]

pub enum LabError {
    /// The repository.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The state machine refused.
    #[error(transparent)]
    Transition(#[from] state::TransitionError),
    /// Booting failed before the VMM ran (boxed: the image errors it
    /// carries are large, and every lifecycle result would pay for them).
    #[error(transparent)]
    Boot(Box<BootError>),
}

impl From<BootError> for LabError {
    fn from(e: BootError) -> Self {
        Self::Boot(Box::new(e))
    }
}

/// Why an instance could not be booted: its image's files, its type, or
/// the host. Only the log and the instance's state reason see these.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The machine image's manifest or files (the message is the error's
    /// summary: it becomes the instance's state reason, which API callers
    /// read; the details are logged where it is made).
    #[error("image {image_id}: {}", .source.summary())]
    Image {
        /// The `ami-` id.
        image_id: String,
        /// What is wrong with it.
        source: ec2lab_images::ImageError,
    },
    /// Neither the instance nor its image names a kernel.
    #[error("image {0} names no kernel")]
    NoKernel(String),
    /// The kernel image's manifest or files (summary only, as for images).
    #[error("kernel {kernel_id}: {}", .source.summary())]
    Kernel {
        /// The `aki-` id.
        kernel_id: String,
        /// What is wrong with it.
        source: ec2lab_images::ImageError,
    },
    /// The image's manifest on disk names other files than the ones it was
    /// registered with.
    #[error("image {0} changed since it was registered")]
    ImageChanged(String),
    /// The machine image has no root volume to copy.
    #[error("image {0} has no root volume")]
    NoRootVolume(String),
    /// The instance's type is not in the table (a record older than it).
    #[error("unknown instance type {0}")]
    UnknownInstanceType(String),
    /// Preparing the volume or starting the VMM.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The task preparing the root volume panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// The instance's network (its VPC's namespace, bridge, tap, DHCP).
    #[error("network: {0}")]
    Network(#[from] Box<NetworkError>),
}

/// The instance types' needs against the host.
pub fn host_resources() -> HostResources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(1024, |kib| kib / 1024);
    HostResources { cpus, memory_mib }
}

/// How long a guest whose volume is deleted on termination gets to shut
/// down before its VMM is told to stop.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// Everything the daemon shares: the repository, the supervisor, where
/// images live, and the runtime background work runs on.
pub struct Lab {
    /// The repository.
    pub db: Db,
    /// VMM processes.
    pub supervisor: Supervisor,
    /// The images directory (scripts/build-images output).
    pub images_dir: PathBuf,
    /// The runtime for boots, stops and watchers.
    pub runtime: tokio::runtime::Handle,
    /// Host capacity for InsufficientInstanceCapacity.
    pub host: HostResources,
    /// Capacity rules.
    pub capacity: CapacityPolicy,
    /// How long a guest gets to power off after Ctrl-Alt-Del.
    pub stop_timeout: Duration,
    /// How long a guest's agent has to check in before the instance
    /// status check reports `impaired`.
    pub checkin_timeout: Duration,
    /// The agents' check-in sockets, one per instance with a VMM.
    checkins: CheckinListeners,
    /// Instances whose VMM is being restarted by RebootInstances.
    rebooting: Mutex<HashSet<String>>,
    /// Instances whose VMM is resuming a hibernation and has not answered
    /// yet: its failure means a cold boot, not a stopped instance.
    pub(crate) restoring: Mutex<HashSet<String>>,
    /// Recent restarts, so a guest that reboots in a loop waits.
    restarts: Mutex<crate::backoff::RestartBackoff>,
    /// Instances with a watcher task, so none gets two.
    watched: Mutex<HashSet<String>>,
    /// Guests whose VMM reports a stall (no exit while in kernel code), by
    /// instance id, as last read from the VMM's `GET /vm`.
    stalls: Mutex<HashMap<String, GuestStall>>,
    /// How long a VMM waits, with its guest in kernel code and making no
    /// exit, before it reports a stall (None: the VMM's default).
    pub stall_timeout: Option<Duration>,
    /// How often a running VMM's stall report is read.
    pub stall_poll: Duration,
    /// The VPC fabric; unset (instances get no network card) in labs
    /// built without one, such as the API's unit tests.
    network: OnceLock<Arc<Network>>,
    /// The most memory an instance boots with when its kernel can plug
    /// the rest (None: all of it); see [`Lab::set_boot_memory`].
    boot_memory_mib: OnceLock<Option<u64>>,
    /// The metadata documents last handed to running VMMs, by instance;
    /// the lock also keeps two pushes from crossing.
    /// Keys `SendSSHPublicKey` made usable for a minute, by instance.
    pub connect_keys: crate::instance_connect::ConnectKeys,
    pub(crate) metadata_pushed:
        Arc<tokio::sync::Mutex<HashMap<String, ec2lab_vmm_api::metadata::InstanceMetadata>>>,
}

/// How the lab judges a guest's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthChecks {
    /// How long a guest's agent has to check in before the instance status
    /// check reports `impaired`.
    pub checkin_timeout: Duration,
    /// The VMMs' stall watchdog period (None: the VMM's default).
    pub stall_timeout: Option<Duration>,
}

/// A VMM's report that its guest stopped making progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestStall {
    /// When the guest made its last exit.
    pub since: OffsetDateTime,
    /// The VMM's words, for the log.
    pub detail: String,
}

/// How often, by default, the daemon reads each VMM's stall report. The VMM
/// itself reports after minutes of quiet, so a few seconds more do not matter.
pub const DEFAULT_STALL_POLL: Duration = Duration::from_secs(15);

/// What an instance boots from its image.
struct BootFiles {
    kernel: PathBuf,
    root: PathBuf,
    /// The root file's digest as registered: the copy must match it.
    root_sha256: String,
    cmdline: String,
    /// The image leaves its first card to the kernel's DHCP client.
    kernel_dhcp: bool,
    /// The kernel plugs virtio-mem memory.
    virtio_mem: bool,
    initrd: Option<PathBuf>,
}

/// The image's command line, with `ip=` for the kernel's DHCP client when
/// the image asks for it and the instance has a card to configure.
fn boot_cmdline(files: &BootFiles, has_card: bool) -> String {
    if files.kernel_dhcp && has_card {
        format!("{} ip=:::::eth0:dhcp", files.cmdline)
    } else {
        files.cmdline.clone()
    }
}

/// Asks the VMM of instance `id` to have its guest plug all of its hotplug
/// memory, when its config (`config`, as the supervisor wrote it) has any.
async fn plug_hotplug_memory(id: String, config: PathBuf, sock: PathBuf) {
    use ec2lab_vmm_api::api::{ApiRequest, HotplugMemoryBody};
    let bytes = match tokio::fs::read(&config).await {
        Ok(bytes) => bytes,
        Err(e) => {
            log::warn!("{id}: cannot read VMM config {}: {e}", config.display());
            return;
        }
    };
    let hotplug = match serde_json::from_slice::<ec2lab_vmm_api::config::VmConfig>(&bytes) {
        Ok(config) => config.hotplug_memory,
        Err(e) => {
            log::warn!("{id}: unreadable VMM config {}: {e}", config.display());
            return;
        }
    };
    let Some(hotplug) = hotplug else {
        return;
    };
    let request = ApiRequest::SetHotplugMemory(HotplugMemoryBody {
        requested_size_mib: hotplug.total_size_mib,
    });
    match crate::supervisor::vmm_api(&sock, request).await {
        Ok(_) => log::info!(
            "{id}: asked the guest to plug its other {} MiB of memory",
            hotplug.total_size_mib
        ),
        Err(e) => log::warn!("{id}: hotplug memory: {e}"),
    }
}

/// Boot memory on hosts that emulate the guest kernel: enough for the lab
/// kernel and lab-minimal's boot (a lab.nano has no more in all), while
/// initialising memory costs ~21 s per GiB there
/// (guest-images/kernel/NOTES.md). 256 MiB made a t2.micro's SSH banner
/// come ~4 s later.
pub const EMULATED_HOST_BOOT_MEMORY_MIB: u64 = 128;

/// The boot memory limit when the daemon is given none: on hosts that
/// emulate the guest kernel (as the VMM detects them),
/// [`EMULATED_HOST_BOOT_MEMORY_MIB`]; on bare-metal KVM, where a kernel
/// initialises a GiB in milliseconds, no limit.
pub fn default_boot_memory_mib() -> Option<u64> {
    ec2lab_vmm_api::host::emulates_guest_kernel().then_some(EMULATED_HOST_BOOT_MEMORY_MIB)
}

/// How an instance of `instance_mib` boots: with at most `boot_limit` MiB,
/// and the rest as hotplug memory its kernel plugs once asked; all of it
/// at boot without a limit, below it, or when the rest is not a whole
/// number of hotplug blocks.
fn memory_plan(
    instance_mib: u64,
    boot_limit: Option<u64>,
) -> (u64, Option<ec2lab_vmm_api::config::HotplugMemoryConfig>) {
    let block = ec2lab_vmm_api::config::DEFAULT_HOTPLUG_BLOCK_SIZE_MIB;
    match boot_limit {
        Some(boot)
            if boot > 0 && instance_mib > boot && (instance_mib - boot).is_multiple_of(block) =>
        {
            (
                boot,
                Some(ec2lab_vmm_api::config::HotplugMemoryConfig {
                    total_size_mib: instance_mib - boot,
                    block_size_mib: block,
                    requested_size_mib: 0,
                }),
            )
        }
        _ => (instance_mib, None),
    }
}

/// What the guest should see for a root volume of `size_gib` from `image`.
fn root_size_bytes(size_gib: u32, image_file: &Path) -> u64 {
    let image = std::fs::metadata(image_file).map_or(0, |m| m.len());
    (u64::from(size_gib) << 30).max(image)
}

impl Lab {
    /// A lab over `db`; guests whose agent does not check in within
    /// `checkin_timeout` of their VMM's start are reported impaired.
    pub fn new(
        db: Db,
        supervisor: Supervisor,
        images_dir: PathBuf,
        runtime: tokio::runtime::Handle,
        health: HealthChecks,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            supervisor,
            images_dir,
            runtime,
            host: host_resources(),
            capacity: CapacityPolicy::default(),
            stop_timeout: Duration::from_secs(60),
            checkin_timeout: health.checkin_timeout,
            checkins: CheckinListeners::default(),
            rebooting: Mutex::new(HashSet::new()),
            restoring: Mutex::new(HashSet::new()),
            restarts: Mutex::default(),
            watched: Mutex::new(HashSet::new()),
            stalls: Mutex::new(HashMap::new()),
            connect_keys: Default::default(),
            metadata_pushed: Arc::default(),
            stall_timeout: health.stall_timeout,
            // Read often enough that a stall shows soon after the VMM sees it.
            stall_poll: health.stall_timeout.map_or(DEFAULT_STALL_POLL, |t| {
                (t / 2).clamp(Duration::from_millis(200), DEFAULT_STALL_POLL)
            }),
            network: OnceLock::new(),
            boot_memory_mib: OnceLock::new(),
        })
    }

    /// Gives the lab its VPC fabric: from then on instances boot with a
    /// card per ENI. Set once, before [`Lab::reconcile`]; a second call
    /// is ignored.
    pub fn set_network(&self, network: Network) {
        let _ = self.network.set(Arc::new(network));
    }

    /// Boot instances whose kernel plugs virtio-mem memory with at most
    /// `mib` MiB and plug the rest once their agent checks in (None: boot
    /// with all of it). Set once, before instances boot; unset, instances
    /// boot with all of their memory (`ec2lab serve` sets
    /// [`default_boot_memory_mib`] unless told otherwise).
    pub fn set_boot_memory(&self, mib: Option<u64>) {
        let _ = self.boot_memory_mib.set(mib);
    }

    fn boot_memory_mib(&self) -> Option<u64> {
        self.boot_memory_mib.get().copied().flatten()
    }

    /// The VPC fabric, when the lab has one.
    pub fn network(&self) -> Option<&Arc<Network>> {
        self.network.get()
    }

    /// Where `instance`'s VMM runs and which cards it opens: its ENIs'
    /// taps, made now in its VPC's namespace (nothing without a fabric).
    fn network_attachments(&self, instance: &Instance) -> Result<Attachment, BootError> {
        // A public address first (launch gave one already; a start needs
        // a new one), so the fabric maps it before the guest runs.
        self.db
            .assign_public_ips(&instance.id, self.public_pool())
            .map_err(|e| Box::new(NetworkError::Db(e)))?;
        match self.network.get() {
            Some(network) => Ok(network.attach(&self.db, instance).map_err(Box::new)?),
            None => Ok(Attachment::default()),
        }
    }

    /// Once `id`'s state says it has no VMM: gives back its pool public
    /// addresses, and removes its taps (and its VPC's namespace when it
    /// was the last instance there).
    fn release_network(&self, id: &str) {
        let Ok(instance) = self.db.get_instance(id) else {
            return;
        };
        let stopped = matches!(
            instance.state,
            InstanceState::Stopped | InstanceState::Terminated
        );
        if !stopped {
            return;
        }
        // Pool addresses go back on stop and terminate (Elastic IPs stay).
        if let Err(e) = self.db.release_public_ips(id) {
            log::error!("{id}: releasing its public address: {e}");
        }
        if let Some(network) = self.network.get() {
            if let Err(e) = network.detach(&self.db, &instance) {
                log::error!("{id}: releasing its network: {e}");
            }
        }
    }

    pub(crate) fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// Applies `event` to `id` (compare-and-set on its current state).
    pub fn apply(&self, id: &str, event: &Event) -> Result<(Instance, Instance), LabError> {
        loop {
            let before = self.db.get_instance(id)?;
            let t = state::transition(id, before.state, event, Self::now())?;
            if !t.changes_state() && t.state_reason == state::Update::Keep && !t.delete_record {
                return Ok((before.clone(), before));
            }
            match self.db.update_instance_state(id, &t, Self::now()) {
                Ok(after) => return Ok((before, after)),
                // Someone moved it first: decide again from the new state.
                Err(DbError::StateConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// How many more instances of `instance_type` fit on the host (0 for an
    /// unknown type, or when the disk that holds root volumes has less than
    /// [`DISK_RESERVE_BYTES`] free): one read of the instances, whatever the
    /// count asked.
    pub fn how_many_fit(&self, instance_type: &str) -> Result<u64, LabError> {
        let Some(candidate) = instance_types::lookup(instance_type) else {
            return Ok(0);
        };
        if let Some(free) = self.supervisor.free_disk_bytes() {
            if free < DISK_RESERVE_BYTES {
                log::warn!(
                    "{} MiB free for instance files, below the {} MiB reserve: no launches",
                    free >> 20,
                    DISK_RESERVE_BYTES >> 20
                );
                return Ok(0);
            }
        }
        let running: Vec<_> = self
            .db
            .all_instances()?
            .into_iter()
            .filter(|i| i.state.holds_resources())
            .filter_map(|i| instance_types::lookup(&i.instance_type))
            .collect();
        Ok(self.capacity.how_many_fit(self.host, &running, candidate))
    }

    /// Boots a pending instance in the background.
    pub fn spawn_boot(self: &Arc<Self>, id: String) {
        let lab = self.clone();
        self.runtime.spawn(async move {
            if let Err(e) = lab.boot(&id).await {
                if matches!(
                    lab.db.get_instance(&id).map(|i| i.state),
                    Ok(InstanceState::Terminated)
                ) {
                    // Terminated mid-boot: the failure is moot (usually the
                    // termination removing what the boot was making), the
                    // files the boot made are not.
                    log::info!("{id}: boot abandoned, the instance was terminated: {e}");
                    if let Err(e) = lab.abandon_boot(&id) {
                        log::error!("{id}: {e}");
                    }
                    return;
                }
                log::error!("{id}: boot failed: {e}");
                let failed = Event::VmmExited {
                    reason: VmmExit::Failed(e.to_string()),
                };
                if let Err(e) = lab.apply(&id, &failed) {
                    log::error!("{id}: cannot record the failed boot: {e}");
                }
                lab.release_network(&id);
            }
        });
    }

    /// The kernel, root image, command line and initrd an instance boots,
    /// checked again against what was registered: the manifests must name
    /// the registered digests, and the kernel's content must match (the
    /// root file is checked as it is copied, see
    /// [`Supervisor::prepare_root_volume`]).
    fn image_paths(&self, instance: &Instance) -> Result<BootFiles, LabError> {
        let image = self.db.get_image(&instance.image_id)?;
        let logged = |what: &str, id: &str, source: ec2lab_images::ImageError| {
            log::error!("{}: {what} {id}: {source}", instance.id);
            source
        };
        let ami =
            ec2lab_images::MachineImage::open(&image.dir).map_err(|source| BootError::Image {
                image_id: image.id.clone(),
                source: logged("image", &image.id, source),
            })?;
        let kernel_id = instance
            .kernel_id
            .clone()
            .or(image.kernel_id.clone())
            .ok_or_else(|| BootError::NoKernel(image.id.clone()))?;
        let kernel = self.db.get_image(&kernel_id)?;
        let aki = ec2lab_images::KernelImage::open_with(&kernel.dir, ec2lab_images::Verify::Digest)
            .map_err(|source| BootError::Kernel {
                kernel_id: kernel_id.clone(),
                source: logged("kernel", &kernel_id, source),
            })?;
        if !aki
            .manifest
            .kernel
            .sha256
            .eq_ignore_ascii_case(&kernel.digest)
        {
            return Err(BootError::ImageChanged(kernel_id).into());
        }
        let root = ami
            .root()
            .ok_or_else(|| BootError::NoRootVolume(image.id.clone()))?;
        if !root.sha256.eq_ignore_ascii_case(&image.digest) {
            return Err(BootError::ImageChanged(image.id.clone()).into());
        }
        Ok(BootFiles {
            kernel: aki.kernel_path(),
            root: ami.dir.join(&root.path),
            root_sha256: image.digest.clone(),
            cmdline: ami.manifest.cmdline.clone(),
            kernel_dhcp: ami.manifest.kernel_dhcp,
            virtio_mem: aki.manifest.virtio_mem,
            initrd: ami.manifest.initrd.as_ref().map(|i| ami.dir.join(i)),
        })
    }

    async fn boot(self: &Arc<Self>, id: &str) -> Result<(), LabError> {
        let instance = self.db.get_instance(id)?;
        if instance.state != InstanceState::Pending {
            return Ok(());
        }
        let boot_files = self.image_paths(&instance)?;
        let volume = self.supervisor.files(id).root_volume();
        if !volume.exists() {
            let size = root_size_bytes(instance.root_volume.size_gib, &boot_files.root);
            let sup = self.supervisor.clone();
            let (id2, src) = (id.to_string(), boot_files.root.clone());
            let digest = boot_files.root_sha256.clone();
            tokio::task::spawn_blocking(move || sup.prepare_root_volume(&id2, &src, &digest, size))
                .await
                .map_err(BootError::from)?
                .map_err(BootError::from)?;
        }
        // Preparing the volume takes a while: a termination meanwhile has
        // already cleaned up, and must not be followed by a VMM.
        if self.db.get_instance(id)?.state != InstanceState::Pending {
            return self.abandon_boot(id);
        }
        let restore = self.hibernated(&instance);
        if !restore {
            // A save cut short (the memory written, the state not) left
            // temporary files that no start can resume.
            self.supervisor.discard_hibernation(id);
        }
        let process = self.start_vmm(&instance, boot_files, restore)?;
        if restore {
            self.runtime
                .spawn(self.clone().finish_restore(id.to_string(), process));
        }
        match self.apply(id, &Event::VmmStarted) {
            Ok(_) => Ok(()),
            // Terminated or stopped while we were starting it: undo.
            Err(LabError::Transition(_)) => {
                let lab = self.clone();
                let id = id.to_string();
                self.runtime.spawn(async move {
                    lab.supervisor.stop(&id, process, Duration::ZERO).await;
                    if let Err(e) = lab.db.set_vmm(&id, None).map_err(LabError::from) {
                        log::error!("{id}: {e}");
                    }
                    if let Err(e) = lab.abandon_boot(&id) {
                        log::error!("{id}: {e}");
                    }
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// An instance left `pending` while its boot was under way: the
    /// clean-up of its termination may have run before the boot wrote its
    /// volume, VMM files or check-in socket, so it runs again now that
    /// nothing of the boot is left running.
    fn abandon_boot(&self, id: &str) -> Result<(), LabError> {
        let instance = self.db.get_instance(id)?;
        log::info!("{id}: boot abandoned, the instance is {}", instance.state);
        self.close_checkins(id);
        self.release_network(id);
        if instance.state == InstanceState::Terminated {
            self.cleanup_terminated(&instance);
        }
        Ok(())
    }

    /// Starts the VMM of `instance` on its (prepared) root volume, records
    /// it, and watches it; with `restore`, the VMM resumes the instance's
    /// hibernation instead of booting.
    fn start_vmm(
        self: &Arc<Self>,
        instance: &Instance,
        boot_files: BootFiles,
        restore: bool,
    ) -> Result<VmProcess, LabError> {
        let id = instance.id.as_str();
        let itype = instance_types::lookup(&instance.instance_type)
            .ok_or_else(|| BootError::UnknownInstanceType(instance.instance_type.clone()))?;
        let attachment = self.network_attachments(instance)?;
        // Read again: attaching gave the interfaces their public addresses.
        let metadata = self.metadata_document(&self.db.get_instance(id)?)?;
        let cmdline = boot_cmdline(&boot_files, !attachment.nets.is_empty());
        let (memory_mib, hotplug_memory) = memory_plan(
            itype.memory_mib,
            boot_files
                .virtio_mem
                .then(|| self.boot_memory_mib())
                .flatten(),
        );
        let spec = VmSpec {
            instance_id: id.to_string(),
            kernel: boot_files.kernel,
            initrd: boot_files.initrd,
            cmdline,
            vcpus: itype.vcpus,
            memory_mib,
            hotplug_memory,
            root_volume: self.supervisor.files(id).root_volume(),
            nets: attachment.nets,
            netns: attachment.netns,
            vsock_cid: Some(checkin::GUEST_CID),
            stall_timeout: self.stall_timeout,
            metadata,
            hibernation: instance.hibernation_configured,
            restore,
        };
        if restore {
            // The same boot goes on: its agent's check-in still stands.
            crate::lock(&self.restoring).insert(id.to_string());
        } else {
            // A new boot: the last one's check-in says nothing about this one.
            self.db.reset_checkin(
                id,
                &CheckinRecord::started(Self::now(), self.checkin_timeout),
            )?;
        }
        self.open_checkins(id);
        let process = self.supervisor.launch(&spec).map_err(|e| {
            // No VMM, so no guest to check in: leave no socket behind.
            self.close_checkins(id);
            crate::lock(&self.restoring).remove(id);
            BootError::from(e)
        })?;
        self.record_vmm(id, process)?;
        self.watch(id.to_string(), process);
        Ok(process)
    }

    /// Listens for the agent's check-ins from `id`'s guest. A socket that
    /// cannot be created is logged, not fatal: the instance runs, and its
    /// status check reports `impaired` when the deadline passes.
    fn open_checkins(self: &Arc<Self>, id: &str) {
        let files = self.supervisor.files(id);
        let _ = std::fs::create_dir_all(&files.dir);
        let path = checkin::socket_path(&files.vsock());
        // Weak: the listener task must not keep the lab alive.
        let lab = Arc::downgrade(self);
        let sink: checkin::Sink = Arc::new(move |id: &str, c: &CheckIn| {
            lab.upgrade()
                .ok_or(checkin::Refusal::Stopping)?
                .record_checkin(id, c)
        });
        if let Err(e) = self.checkins.listen(&self.runtime, id, &path, sink) {
            log::error!("{id}: {e}; its instance status check will fail");
        }
    }

    /// Stops listening for `id`'s check-ins and removes the vsock socket
    /// files its VMM and the listener left.
    fn close_checkins(&self, id: &str) {
        let vsock = self.supervisor.files(id).vsock();
        self.checkins.close(id, &checkin::socket_path(&vsock));
        let _ = std::fs::remove_file(vsock);
    }

    /// A valid check-in from `id`'s agent: the instance status becomes ok.
    fn record_checkin(&self, id: &str, c: &CheckIn) -> Result<(), checkin::Refusal> {
        let store_failed = |e: DbError| {
            log::error!("{id}: recording a check-in: {e}");
            checkin::Refusal::Store
        };
        let instance = self.db.get_instance(id).map_err(store_failed)?;
        if !matches!(
            instance.state,
            InstanceState::Pending | InstanceState::Running
        ) {
            return Err(checkin::Refusal::NotRunning(instance.state.name()));
        }
        match self.db.record_checkin(id, Self::now(), c.boot_id()) {
            Ok(true) => {
                // The guest is up: give it the memory it booted without.
                let files = self.supervisor.files(id);
                self.runtime.spawn(plug_hotplug_memory(
                    id.to_string(),
                    files.config(),
                    files.api_sock(),
                ));
                Ok(())
            }
            Ok(false) => Err(checkin::Refusal::NoVmmStart),
            Err(e) => Err(store_failed(e)),
        }
    }

    /// The instance status check of `id` now (`initializing` before its
    /// first VMM start is recorded).
    pub fn instance_health(&self, id: &str) -> Result<InstanceHealth, LabError> {
        if let Some(stall) = crate::lock(&self.stalls).get(id) {
            return Ok(InstanceHealth::Impaired { since: stall.since });
        }
        Ok(self
            .db
            .checkin_record(id)?
            .map_or(InstanceHealth::Initializing, |r| r.health_at(Self::now())))
    }

    /// Reads the stall report of `id`'s VMM every `stall_poll` while
    /// `process` lives; a stalled guest fails its instance status check
    /// until it makes progress again.
    async fn poll_stall(self: Arc<Self>, id: String, process: VmProcess) {
        let sock = self.supervisor.files(&id).api_sock();
        loop {
            tokio::time::sleep(self.stall_poll).await;
            if !self.supervisor.is_alive(process) {
                break;
            }
            let Ok(vm) = crate::supervisor::vmm_describe(&sock).await else {
                continue;
            };
            let stall = vm.stall.map(|stall| guest_stall(&stall, Self::now()));
            let mut stalls = crate::lock(&self.stalls);
            match stall {
                Some(stall) => {
                    if !stalls.contains_key(&id) {
                        log::warn!("{id}: {}", stall.detail);
                    }
                    stalls.insert(id.clone(), stall);
                }
                None => {
                    if stalls.remove(&id).is_some() {
                        log::info!("{id}: the guest makes progress again");
                    }
                }
            }
        }
        crate::lock(&self.stalls).remove(&id);
    }

    /// An adopted VMM (the daemon restarted): listen again, and give it a
    /// record if it started before records existed.
    fn adopt_checkins(self: &Arc<Self>, id: &str) -> Result<(), LabError> {
        if self.db.checkin_record(id)?.is_none() {
            self.db.reset_checkin(
                id,
                &CheckinRecord::started(Self::now(), self.checkin_timeout),
            )?;
        }
        self.open_checkins(id);
        Ok(())
    }

    fn record_vmm(&self, id: &str, process: VmProcess) -> Result<(), LabError> {
        let files = self.supervisor.files(id);
        self.db.set_vmm(
            id,
            Some(&VmmHandle {
                pid: process.pid as u32,
                api_sock: files.api_sock(),
                serial_log: files.serial_log(),
            }),
        )?;
        self.db
            .set_console_output_path(id, Some(&files.serial_log()))?;
        Ok(())
    }

    /// Watches `process` until it ends, then handles the exit.
    pub fn watch(self: &Arc<Self>, id: String, process: VmProcess) {
        if !crate::lock(&self.watched).insert(id.clone()) {
            return;
        }
        self.runtime
            .spawn(self.clone().poll_stall(id.clone(), process));
        let lab = self.clone();
        self.runtime.spawn(async move {
            let info = lab.supervisor.wait_exit(&id, process).await;
            crate::lock(&lab.watched).remove(&id);
            log::info!("{id}: VMM pid {} ended: {}", process.pid, info.reason);
            lab.on_exit(&id, &info);
        });
    }

    /// What a VMM's end means for its instance.
    ///
    /// A store error (the database busy or briefly unwritable) is retried
    /// after 0.2 s, 1 s and 5 s: each step below converges when run again,
    /// and an exit left unhandled would leave the instance `running` with
    /// no VMM until the daemon's next start.
    pub fn on_exit(self: &Arc<Self>, id: &str, info: &ExitInfo) {
        let info = &self.supervisor.account_exit(id, info);
        let rebooting = crate::lock(&self.rebooting).remove(id);
        if crate::lock(&self.restoring).remove(id) && !info.is_api_shutdown() {
            // The resume failed before the VMM ever answered.
            self.restore_failed(id, &info.reason);
            return;
        }
        let Err(e) = self.handle_exit(id, info, rebooting) else {
            return;
        };
        log::warn!("{id}: handling the VMM's exit: {e}; trying again");
        let lab = self.clone();
        let (id, info) = (id.to_string(), info.clone());
        self.runtime.spawn(async move {
            for delay in EXIT_RETRY_DELAYS {
                tokio::time::sleep(delay).await;
                match lab.handle_exit(&id, &info, rebooting) {
                    Ok(()) => return,
                    Err(e) => log::warn!("{id}: handling the VMM's exit: {e}"),
                }
            }
            log::error!(
                "{id}: the VMM's exit is still unhandled; the daemon's next start reconciles it"
            );
        });
    }

    fn handle_exit(
        self: &Arc<Self>,
        id: &str,
        info: &ExitInfo,
        rebooting: bool,
    ) -> Result<(), LabError> {
        let instance = match self.db.get_instance(id) {
            Ok(instance) => instance,
            // Gone from the store: nothing to update.
            Err(DbError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match instance.state {
            InstanceState::Pending | InstanceState::Running
                if rebooting || info.is_reboot() || info.is_api_shutdown() =>
            {
                // A reboot (ours, the guest's, or one the daemon was killed
                // in the middle of): same instance, same volume, new VMM.
                self.relaunch(id)
            }
            InstanceState::Pending | InstanceState::Running if info.is_poweroff() => self
                .apply(
                    id,
                    &Event::GuestPoweredOff {
                        behavior: instance.shutdown_behavior,
                    },
                )
                .and_then(|_| self.finish_exit(id, &VmmExit::Clean)),
            InstanceState::Pending | InstanceState::Running => {
                self.finish_exit(id, &VmmExit::Failed(info.reason.clone()))
            }
            InstanceState::Stopping | InstanceState::ShuttingDown => {
                self.finish_exit(id, &VmmExit::Clean)
            }
            InstanceState::Stopped | InstanceState::Terminated => Ok(()),
        }
    }

    pub(crate) fn relaunch(self: &Arc<Self>, id: &str) -> Result<(), LabError> {
        self.db.set_vmm(id, None)?;
        let delay = crate::lock(&self.restarts).next_delay(id, std::time::Instant::now());
        if !delay.is_zero() {
            log::warn!("{id}: the guest reboots in a loop; restarting it in {delay:?}");
        }
        // Back through pending? EC2 keeps a rebooted instance running.
        let lab = self.clone();
        let id = id.to_string();
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = lab.restart_running(&id).await {
                log::error!("{id}: restart after reboot failed: {e}");
                let _ = lab.finish_exit(&id, &VmmExit::Failed(e.to_string()));
            }
        });
        Ok(())
    }

    async fn restart_running(self: &Arc<Self>, id: &str) -> Result<(), LabError> {
        let instance = self.db.get_instance(id)?;
        if !matches!(
            instance.state,
            InstanceState::Running | InstanceState::Pending
        ) {
            return Ok(());
        }
        let boot_files = self.image_paths(&instance)?;
        self.start_vmm(&instance, boot_files, false)?;
        if instance.state == InstanceState::Pending {
            self.apply(id, &Event::VmmStarted)?;
        }
        Ok(())
    }

    /// The VMM is gone: move to stopped/terminated and clean up.
    fn finish_exit(&self, id: &str, reason: &VmmExit) -> Result<(), LabError> {
        crate::lock(&self.restarts).forget(id);
        let (_, after) = self.apply(
            id,
            &Event::VmmExited {
                reason: reason.clone(),
            },
        )?;
        self.db.set_vmm(id, None)?;
        if !matches!(after.state, InstanceState::Pending | InstanceState::Running) {
            self.close_checkins(id);
            self.release_network(id);
        }
        if after.state == InstanceState::Terminated {
            self.cleanup_terminated(&after);
        }
        Ok(())
    }

    fn cleanup_terminated(&self, instance: &Instance) {
        let files = self.supervisor.files(&instance.id);
        if instance.root_volume.delete_on_termination {
            if let Err(e) = self.supervisor.remove_files(&instance.id) {
                log::error!("{}: cannot remove its files: {e}", instance.id);
            }
        } else {
            // Keep the volume; drop the rest.
            for f in [files.config(), files.api_sock(), files.exit_file()] {
                let _ = std::fs::remove_file(f);
            }
            self.supervisor.discard_hibernation(&instance.id);
        }
    }

    /// The live VMM of `instance`, if its recorded process is still ours.
    pub fn live_process(&self, instance: &Instance) -> Option<VmProcess> {
        let handle = instance.vmm.as_ref()?;
        self.supervisor.adopt(&instance.id, handle.pid as i32)
    }

    /// StopInstances for one instance (the state was checked by `apply`).
    pub fn spawn_stop(self: &Arc<Self>, id: &str, force: bool) {
        let graceful = if force {
            Duration::ZERO
        } else {
            self.stop_timeout
        };
        self.spawn_shutdown(id, graceful);
    }

    /// TerminateInstances' side effect for an instance just moved to
    /// shutting-down: its VMM ends, after a grace that depends on whether
    /// the root volume outlives it.
    pub(crate) fn spawn_terminate(self: &Arc<Self>, instance: &Instance) {
        // A volume about to be deleted needs no clean file system.
        let graceful = if instance.root_volume.delete_on_termination {
            TERMINATE_GRACE
        } else {
            self.stop_timeout
        };
        self.spawn_shutdown(&instance.id, graceful);
    }

    /// Ends the instance's VMM, giving the guest `graceful` to power off.
    fn spawn_shutdown(self: &Arc<Self>, id: &str, graceful: Duration) {
        let Ok(instance) = self.db.get_instance(id) else {
            return;
        };
        match self.live_process(&instance) {
            Some(process) => {
                self.watch(id.to_string(), process);
                let lab = self.clone();
                let id = id.to_string();
                self.runtime.spawn(async move {
                    lab.supervisor.stop(&id, process, graceful).await;
                });
            }
            None => {
                if let Err(e) = self.finish_exit(id, &VmmExit::Clean) {
                    log::error!("{id}: {e}");
                }
            }
        }
    }

    /// RebootInstances' side effect (the state machine has agreed): the
    /// VMM is stopped and, seen as a reboot by [`Lab::on_exit`], started
    /// again on the same volume. Without a live VMM there is nothing to do.
    pub(crate) fn spawn_reboot(self: &Arc<Self>, id: &str) -> Result<(), LabError> {
        let instance = self.db.get_instance(id)?;
        if let Some(process) = self.live_process(&instance) {
            // The guest is going down now: its check-in is stale from here,
            // not only once the next VMM starts (which resets it again).
            self.db.reset_checkin(
                id,
                &CheckinRecord::started(Self::now(), self.checkin_timeout),
            )?;
            crate::lock(&self.rebooting).insert(id.to_string());
            self.watch(id.to_string(), process);
            let lab = self.clone();
            let id = id.to_string();
            self.runtime.spawn(async move {
                lab.supervisor
                    .stop(&id, process, Duration::from_secs(30))
                    .await;
            });
        }
        Ok(())
    }

    /// After a daemon (re)start: bring every instance's VMM in line with
    /// the state the database records. VMMs outlive the daemon, so running
    /// ones are adopted, ended ones are accounted for, and interrupted
    /// operations are carried on.
    pub fn reconcile(self: &Arc<Self>) -> Result<(), LabError> {
        let instances = self.db.all_instances()?;
        // VMMs whose instance does not expect them (started just before a
        // crash, or of a deleted instance) are adopted or ended.
        for (id, process) in self.supervisor.scan_live() {
            let instance = instances.iter().find(|i| i.id == id);
            let recorded = instance
                .and_then(|i| i.vmm.as_ref())
                .is_some_and(|v| v.pid as i32 == process.pid);
            match instance {
                Some(i)
                    if !recorded
                        && matches!(i.state, InstanceState::Pending | InstanceState::Running) =>
                {
                    self.record_vmm(&id, process)?;
                }
                Some(_) if recorded => {}
                _ => {
                    log::warn!("{id}: stray VMM pid {}; stopping it", process.pid);
                    let sup = self.supervisor.clone();
                    self.runtime.spawn(async move {
                        sup.stop(&id, process, Duration::ZERO).await;
                    });
                }
            }
        }
        for instance in self.db.all_instances()? {
            let id = instance.id.clone();
            let live = self.live_process(&instance);
            match (instance.state, live) {
                (InstanceState::Pending, Some(p)) => {
                    self.adopt_checkins(&id)?;
                    self.adopt_resume(&id, p);
                    self.watch(id.clone(), p);
                    let _ = self.apply(&id, &Event::VmmStarted);
                }
                (InstanceState::Pending, None) if instance.vmm.is_none() => self.spawn_boot(id),
                (InstanceState::Running, Some(p)) => {
                    self.adopt_checkins(&id)?;
                    self.adopt_resume(&id, p);
                    self.watch(id.clone(), p);
                }
                (InstanceState::Stopping, Some(p)) if Self::hibernating(&instance) => {
                    // Killed mid-hibernation: save it again (pausing a
                    // paused VM and overwriting a snapshot are harmless).
                    self.watch(id.clone(), p);
                    self.spawn_hibernate(&id);
                }
                (InstanceState::Stopping | InstanceState::ShuttingDown, Some(p)) => {
                    self.watch(id.clone(), p);
                    self.spawn_stop(&id, false);
                }
                (InstanceState::Pending | InstanceState::Running, None)
                | (InstanceState::Stopping | InstanceState::ShuttingDown, None) => {
                    let info = self.supervisor.exit_info(&id, None);
                    // A pending or running instance's VMM that was ended
                    // from outside while no daemon watched (a signal, or no
                    // record at all): the host went down, or every process
                    // was killed. EC2's automatic recovery: the same
                    // instance (id, addresses, volume, metadata) runs
                    // again. A guest's own poweroff, reboot or failure is
                    // handled as when the daemon sees it.
                    let running = matches!(
                        instance.state,
                        InstanceState::Pending | InstanceState::Running
                    );
                    if running && instance.vmm.is_some() && info.ended_from_outside() {
                        log::warn!(
                            "{id}: its VMM ended while the daemon was down ({}): the host went \
                             down or it was killed; recovering it on a new VMM",
                            info.reason
                        );
                        self.relaunch(&id)?;
                    } else {
                        if running && info.is_refusal() && self.hibernated(&instance) {
                            // A resume the VMM refused while no daemon
                            // watched: boot the instance cold, as when seen.
                            crate::lock(&self.restoring).insert(id.clone());
                        }
                        self.on_exit(&id, &info);
                    }
                }
                (InstanceState::Stopped | InstanceState::Terminated, Some(p)) => {
                    log::warn!(
                        "{id}: {} but its VMM runs; stopping it",
                        instance.state.name()
                    );
                    self.close_checkins(&id);
                    let sup = self.supervisor.clone();
                    self.runtime.spawn(async move {
                        sup.stop(&id, p, Duration::ZERO).await;
                    });
                }
                // A daemon killed between the VMM's end and the clean-up
                // left the check-in socket behind, and one killed while a
                // terminated instance's boot was still copying its volume
                // left the copy.
                (InstanceState::Stopped, None) => self.close_checkins(&id),
                (InstanceState::Terminated, None) => {
                    self.close_checkins(&id);
                    self.cleanup_terminated(&instance);
                }
            }
        }
        // The namespaces and taps outlived the daemon like the VMMs did;
        // dnsmasq may not have, and an interrupted stop left taps behind.
        if let Some(network) = self.network.get() {
            if let Err(e) = network.reconcile(&self.db) {
                log::error!("reconciling the VPC fabric: {e}");
            }
        }
        Ok(())
    }

    /// Forgets instances terminated more than an hour ago.
    pub fn collect(&self) {
        match self.db.collect_terminated(Self::now()) {
            Ok(gone) if !gone.is_empty() => {
                log::info!("collected {} terminated instances", gone.len())
            }
            Ok(_) => {}
            Err(e) => log::error!("collecting terminated instances: {e}"),
        }
    }
}

/// The stall a VMM reports on `GET /vm`, read at `now`: since when the
/// guest has made no progress, and which vCPUs are stuck.
pub fn guest_stall(stall: &Stall, now: OffsetDateTime) -> GuestStall {
    let quiet = stall.quiet_secs;
    let vcpus = stall
        .vcpus
        .iter()
        .map(|c| format!("vcpu{}", c.id))
        .collect::<Vec<_>>()
        .join(", ");
    GuestStall {
        since: now - time::Duration::seconds(i64::try_from(quiet).unwrap_or(i64::MAX / 2)),
        detail: format!("guest stalled: no progress for {quiet} s in guest kernel code ({vcpus})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(kernel_dhcp: bool) -> BootFiles {
        BootFiles {
            kernel: PathBuf::from("/k"),
            root: PathBuf::from("/r"),
            root_sha256: String::new(),
            cmdline: "console=ttyS0 root=/dev/vda rw".to_string(),
            kernel_dhcp,
            virtio_mem: false,
            initrd: None,
        }
    }

    #[test]
    fn memory_beyond_the_boot_limit_is_plugged_later() {
        let (boot, hotplug) = memory_plan(1024, Some(256));
        assert_eq!(boot, 256);
        let hotplug = hotplug.expect("the rest is hotplug memory");
        assert_eq!(
            (hotplug.total_size_mib, hotplug.requested_size_mib),
            (768, 0)
        );
        // No limit, a type within it, or a limit of 0: all at boot.
        assert_eq!(memory_plan(1024, None), (1024, None));
        assert_eq!(memory_plan(128, Some(256)), (128, None));
        assert_eq!(memory_plan(256, Some(256)), (256, None));
        assert_eq!(memory_plan(1024, Some(0)), (1024, None));
        // A rest that is not whole blocks boots whole.
        assert_eq!(memory_plan(1025, Some(256)), (1025, None));
    }

    #[test]
    fn the_kernel_configures_the_card_only_when_there_is_one_and_the_image_asks() {
        assert_eq!(
            boot_cmdline(&files(true), true),
            "console=ttyS0 root=/dev/vda rw ip=:::::eth0:dhcp"
        );
        // Without a card the kernel would wait 12 s for one.
        assert_eq!(
            boot_cmdline(&files(true), false),
            "console=ttyS0 root=/dev/vda rw"
        );
        assert_eq!(
            boot_cmdline(&files(false), true),
            "console=ttyS0 root=/dev/vda rw"
        );
    }
}
