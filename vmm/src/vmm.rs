//! The running VM: starts what [`crate::builder`] assembled, runs the main
//! loop (guest exits, API requests, the stall watchdog), and shuts down.
//!
//! Everything the control API can do to a running VM is a method here
//! ([`Vmm::pause_vm`], [`Vmm::resume_vm`], [`Vmm::send_ctrl_alt_del`] and
//! the accessors `GET /vm` reports from), so the API module only parses
//! and renders, and the main loop is the one place that changes VM state:
//! API calls and guest exits are serialised through it.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ec2lab_vmm_api::api::HotplugMemoryStatus;
use vm_memory::GuestMemoryMmap;

use crate::api::{self, ApiServer};
use crate::arch::x86_64::boot;
use crate::arch::x86_64::regs::EntryMode;
use crate::config::VmConfig;
use crate::console::{self, RawTerminal};
use crate::devices::bus::lock;
use crate::devices::cmos::CmosRtc;
use crate::devices::i8042::I8042;
use crate::devices::manager::{DeviceManager, VirtioSlot};
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::mem::{MemError, MemStatus};
use crate::exit::VmExit;
use crate::host::{CpuVendor, HostKind, TscSource, Workarounds};
use crate::pause::{self, Pausable, PauseError};
use crate::seccomp::{MainDirs, ThreadFilter, ThreadFilters, ThreadKind};
use crate::snapshot::{self, Machine, Snapshot, SnapshotDir, SnapshotError};
use crate::vstate::persist;
use crate::vstate::vcpu::{Vcpu, VcpuHandle};
use crate::vstate::vm::Vm;
use crate::vstate::watchdog::{Next, Stall, StallWatchdog};
use crate::VmmEvent;

/// How long pause waits for every vCPU, then for the device event thread,
/// to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits for the device event thread to end.
const DEVICE_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the main loop looks at the stall watchdog.
const WATCHDOG_TICK: Duration = Duration::from_secs(1);
/// How long a kicked vCPU has to record its sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether the guest runs (Paused: every vCPU and the device event thread
/// are parked), as the control API reports it: the contract crate's type.
pub use ec2lab_vmm_api::api::VmRunState as VmState;

/// Where the guest came from.
pub(crate) enum Origin {
    /// A kernel booted by the VMM, as it was loaded.
    Kernel(boot::LoadedKernel),
    /// A snapshot restored from this directory.
    Restored(PathBuf),
}

/// What `PUT /snapshot/create` reports.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SnapshotReport {
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Bytes of it written to the memory file (the rest are holes).
    pub written_bytes: u64,
    /// How long the snapshot took, in milliseconds.
    pub millis: u64,
}

/// What the builder hands over: a VM whose memory, devices and vCPUs are
/// ready and whose threads have not started.
pub(crate) struct BuiltVm {
    pub(crate) config: VmConfig,
    pub(crate) cmdline: String,
    pub(crate) origin: Origin,
    /// What a snapshot of this VM fits.
    pub(crate) machine: Machine,
    /// Where `PUT /snapshot/create` writes.
    pub(crate) snapshot_dir: Option<SnapshotDir>,
    pub(crate) devices_on_cmdline: bool,
    pub(crate) host: HostKind,
    pub(crate) vendor: CpuVendor,
    pub(crate) tsc: TscSource,
    pub(crate) workarounds: Workarounds,
    /// Kept alive for as long as vCPUs may touch it.
    pub(crate) vm: Vm,
    /// Kept alive for as long as vCPUs and devices may touch it.
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) devices: DeviceManager,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) rtc: Arc<Mutex<CmosRtc>>,
    pub(crate) events_tx: Sender<VmmEvent>,
    pub(crate) events_rx: Receiver<VmmEvent>,
    pub(crate) api: Option<ApiServer>,
    /// Each thread's seccomp filter, installed as the threads start.
    pub(crate) filters: ThreadFilters,
}

/// A VM: built by [`crate::builder::build`], run by [`Vmm::run`].
pub struct Vmm {
    config: VmConfig,
    cmdline: String,
    origin: Origin,
    machine: Machine,
    snapshot_dir: Option<SnapshotDir>,
    devices_on_cmdline: bool,
    host: HostKind,
    vendor: CpuVendor,
    tsc: TscSource,
    workarounds: Workarounds,
    vm: Vm,
    mem: GuestMemoryMmap,
    /// Built vCPUs, until [`Self::run`] starts their threads.
    pending_vcpus: Vec<Vcpu>,
    vcpus: Vec<VcpuHandle>,
    devices: DeviceManager,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    rtc: Arc<Mutex<CmosRtc>>,
    events_tx: Sender<VmmEvent>,
    events_rx: Receiver<VmmEvent>,
    api: Option<ApiServer>,
    filters: ThreadFilters,
    state: VmState,
    started: Instant,
    watchdog: StallWatchdog,
    last_watch: Instant,
}

impl Vmm {
    pub(crate) fn new(built: BuiltVm) -> Self {
        let now = Instant::now();
        let stall_timeout = Duration::from_secs(built.config.stall_timeout_secs);
        Self {
            config: built.config,
            cmdline: built.cmdline,
            origin: built.origin,
            machine: built.machine,
            snapshot_dir: built.snapshot_dir,
            devices_on_cmdline: built.devices_on_cmdline,
            host: built.host,
            vendor: built.vendor,
            tsc: built.tsc,
            workarounds: built.workarounds,
            vm: built.vm,
            mem: built.mem,
            pending_vcpus: built.vcpus,
            vcpus: Vec::new(),
            devices: built.devices,
            serial: built.serial,
            i8042: built.i8042,
            rtc: built.rtc,
            events_tx: built.events_tx,
            events_rx: built.events_rx,
            api: built.api,
            filters: built.filters,
            state: VmState::Running,
            started: now,
            watchdog: StallWatchdog::new(stall_timeout, now),
            last_watch: now,
        }
    }

    /// The command line the guest gets, workarounds included.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The configuration the VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Running or paused.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// Time since the vCPUs started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The running vCPUs (their ids and exit counters).
    pub fn vcpus(&self) -> &[VcpuHandle] {
        &self.vcpus
    }

    /// Hands a new instance metadata document to the device that serves
    /// it; false when no device does.
    pub fn update_metadata(&mut self, doc: &ec2lab_vmm_api::metadata::InstanceMetadata) -> bool {
        let mut served = false;
        for slot in self.devices.virtio() {
            served |= lock(&slot.transport).device_mut().update_metadata(doc);
        }
        served
    }

    /// The hotplug memory's sizes; `None` when the VM has none.
    pub fn hotplug_memory(&self) -> Option<HotplugMemoryStatus> {
        self.devices.virtio().iter().find_map(|slot| {
            lock(&slot.transport)
                .device_mut()
                .as_hotplug_memory()
                .map(|m| hotplug_status(&m.status()))
        })
    }

    /// Asks the guest to plug `mib` MiB of the hotplug memory (fewer than
    /// it has: to unplug); the driver hears of it through a config-change
    /// interrupt and plugs or unplugs at its pace. `Ok(None)` when the VM
    /// has no hotplug memory.
    pub fn request_hotplug_memory(
        &mut self,
        mib: u64,
    ) -> Result<Option<HotplugMemoryStatus>, MemError> {
        for slot in self.devices.virtio() {
            let mut transport = lock(&slot.transport);
            let Some(device) = transport.device_mut().as_hotplug_memory() else {
                continue;
            };
            // A size past u64 is refused as too large for the region.
            device.set_requested_size(mib.saturating_mul(1 << 20))?;
            let status = hotplug_status(&device.status());
            transport.config_changed();
            log::info!("hotplug memory: {mib} MiB requested");
            return Ok(Some(status));
        }
        Ok(None)
    }

    /// The virtio devices, in guest order.
    pub fn virtio_devices(&self) -> &[VirtioSlot] {
        self.devices.virtio()
    }

    /// The stall the watchdog reports, if the guest is stalled.
    pub fn stall(&self) -> Option<&Stall> {
        self.watchdog.stall()
    }

    /// Parks every vCPU, then the device event thread. Succeeds only when
    /// all of them acknowledged within [`PAUSE_TIMEOUT`]; otherwise every
    /// part is resumed, the VM stays `Running`, and the error names the
    /// part that did not park. Pausing a paused VM does nothing.
    pub fn pause_vm(&mut self) -> Result<(), PauseError> {
        if self.state == VmState::Paused {
            return Ok(());
        }
        // vCPUs first, so no new queue notification arrives once the
        // device thread has parked; devices second, so whatever the last
        // notifications started is finished before the pause is reported.
        let vcpus: Vec<&dyn Pausable> = self.vcpus.iter().map(|h| h as &dyn Pausable).collect();
        pause::pause_all(&vcpus, PAUSE_TIMEOUT)?;
        if let Err(e) = pause::pause_all(&[&self.devices], PAUSE_TIMEOUT) {
            pause::resume_all(&vcpus);
            return Err(e);
        }
        self.state = VmState::Paused;
        Ok(())
    }

    /// Lets the devices, then the vCPUs, run again. Resuming a running VM
    /// does nothing.
    pub fn resume_vm(&mut self) {
        self.devices.resume();
        for h in &self.vcpus {
            h.resume();
        }
        self.state = VmState::Running;
    }

    /// Saves the paused VM into the snapshot directory: the state every
    /// vCPU read as it parked, the VM's interrupt controllers, PIT and
    /// clock, every device, and guest memory. Both files are written under
    /// temporary names and renamed into place, memory first, so the
    /// directory holds the previous snapshot until this one is complete.
    pub fn create_snapshot(&mut self) -> Result<SnapshotReport, SnapshotError> {
        if self.state != VmState::Paused {
            return Err(SnapshotError::NotPaused);
        }
        let dir = self
            .snapshot_dir
            .as_ref()
            .ok_or(SnapshotError::NoDirectory)?;
        let started = Instant::now();
        let vcpus = self
            .vcpus
            .iter()
            .map(|h| h.control().saved_state().map_err(SnapshotError::Vcpu))
            .collect::<Result<Vec<_>, _>>()?;
        let vm = persist::save_vm(self.vm.fd()).map_err(|e| SnapshotError::Vm(e.to_string()))?;
        let virtio = self
            .devices
            .virtio()
            .iter()
            .map(|slot| lock(&slot.transport).snapshot())
            .collect();
        let snapshot = Snapshot {
            machine: self.machine.clone(),
            memory_id: snapshot::new_memory_id(),
            cmdline: self.cmdline.clone(),
            devices_on_cmdline: self.devices_on_cmdline,
            vm,
            vcpus,
            serial: lock(&self.serial).snapshot(),
            i8042: lock(&self.i8042).snapshot(),
            rtc: lock(&self.rtc).snapshot(),
            virtio,
        };
        let state = snapshot::encode(&snapshot)?;
        let stats = dir.write(&state, &self.mem, snapshot.memory_id)?;
        let report = SnapshotReport {
            memory_bytes: stats.total,
            written_bytes: stats.written,
            millis: started.elapsed().as_millis() as u64,
        };
        log::info!(
            "snapshot written to {}: {} of {} MiB of memory in {} ms",
            dir.path().display(),
            report.written_bytes >> 20,
            report.memory_bytes >> 20,
            report.millis
        );
        Ok(report)
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) {
        lock(&self.i8042).send_ctrl_alt_del();
    }

    /// Runs the VM until it stops; returns why.
    pub fn run(mut self) -> VmExit {
        self.log_boot();
        let _terminal = if self.config.serial_out.is_none() {
            RawTerminal::enable()
        } else {
            None
        };
        let helper = self.filters.for_thread(ThreadKind::Helper);
        if _terminal.is_some() {
            if let Err(e) =
                console::spawn_input(self.serial.clone(), self.events_tx.clone(), helper.clone())
            {
                log::warn!("no console input: {e}");
            }
        }
        if let Err(e) = spawn_signal_thread(self.events_tx.clone(), helper) {
            return VmExit::VmmError(format!("cannot watch signals: {e}"));
        }
        let exit = match self.start().and_then(|()| self.confine_main_thread()) {
            Ok(()) => self.main_loop(),
            Err(exit) => exit,
        };
        self.shutdown();
        exit
    }

    fn log_boot(&self) {
        log::info!(
            "{}",
            self.workarounds.describe(self.host, self.vendor, self.tsc)
        );
        if matches!(self.tsc, TscSource::Calibrate) {
            log::warn!("KVM reported no TSC frequency; a guest that cannot calibrate will hang");
        }
        let boot::LoadedKernel {
            entry,
            format,
            decompressed,
            acpi,
            traits,
            ..
        } = match &self.origin {
            Origin::Kernel(kernel) => *kernel,
            Origin::Restored(dir) => {
                log::info!(
                    "restored from {} with {} vCPU(s), {} MiB; the guest booted with: {}",
                    dir.display(),
                    self.config.vcpus,
                    self.config.memory_mib,
                    self.cmdline
                );
                return;
            }
        };
        log::info!(
            "booting {} ({:?}{}, {} entry, ACPI {}{}{}) with {} vCPU(s), {} MiB: {}",
            self.config.kernel.display(),
            format,
            decompressed.map_or(String::new(), |c| format!(
                ", {} payload decompressed by the VMM",
                c.name()
            )),
            match entry {
                EntryMode::Pvh { .. } => "PVH",
                EntryMode::Linux64 { .. } => "64-bit",
            },
            match (acpi, self.devices_on_cmdline) {
                (boot::AcpiSupport::Absent, _) =>
                    "absent: devices on the command line, IRQs from the MP table",
                (_, true) => "off: devices on the command line, IRQs from the MP table",
                (boot::AcpiSupport::Present, false) => "present",
                (boot::AcpiSupport::Assumed, false) => "assumed (bzImage)",
            },
            if traits.btf { ", BTF present" } else { "" },
            if traits.syscall_via_pf {
                ", ec2lab syscall patch"
            } else {
                ""
            },
            self.config.vcpus,
            self.config.memory_mib,
            self.cmdline
        );
    }

    /// Installs the main thread's seccomp filter: last, once every other
    /// thread has started (a filter is inherited by the threads created
    /// after it, and theirs are narrower).
    fn confine_main_thread(&mut self) -> Result<(), VmExit> {
        let dirs = MainDirs {
            api: self.api.as_ref().map(ApiServer::dir_fd),
            snapshot: self.snapshot_dir.as_ref().map(SnapshotDir::raw_fd),
        };
        let filter = self
            .filters
            .main(dirs)
            .map_err(|e| VmExit::VmmError(e.to_string()))?;
        filter
            .apply()
            .map_err(|e| VmExit::VmmError(e.to_string()))?;
        if filter.is_enabled() {
            log::info!("seccomp filters installed in every VMM thread");
        } else {
            log::warn!("seccomp is off (--no-seccomp): the VMM's threads are not confined");
        }
        Ok(())
    }

    /// Starts the device event thread, then the vCPU threads (so the first
    /// queue notification finds the devices served).
    fn start(&mut self) -> Result<(), VmExit> {
        self.devices
            .start(self.filters.for_thread(ThreadKind::Devices))
            .map_err(|e| VmExit::VmmError(format!("cannot start the device event thread: {e}")))?;
        let now = Instant::now();
        self.started = now;
        self.watchdog = StallWatchdog::new(self.watchdog.timeout(), now);
        self.last_watch = now;
        for vcpu in std::mem::take(&mut self.pending_vcpus) {
            let handle = vcpu
                .start(self.filters.for_thread(ThreadKind::Vcpu))
                .map_err(|e| VmExit::VmmError(e.to_string()))?;
            self.vcpus.push(handle);
        }
        Ok(())
    }

    /// Serves guest exits, API requests and the watchdog until the VM must stop.
    fn main_loop(&mut self) -> VmExit {
        loop {
            let event = match self.events_rx.recv_timeout(WATCHDOG_TICK) {
                Ok(event) => event,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.watch();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return VmExit::VmmError("event channel closed".to_string());
                }
            };
            if self.last_watch.elapsed() >= WATCHDOG_TICK {
                self.watch();
            }
            match event {
                VmmEvent::Exit(e) => return e,
                VmmEvent::Api(req, reply) => {
                    let (response, stop) = api::handle(self, req);
                    let _ = reply.send(response);
                    if stop {
                        return VmExit::ApiShutdown;
                    }
                }
            }
        }
    }

    /// Stops the vCPUs, then the device thread, and removes the API socket.
    fn shutdown(&mut self) {
        for h in self.vcpus.iter_mut() {
            h.stop();
        }
        for h in &self.vcpus {
            log::info!("vcpu{} exits: {}", h.id(), h.control().stats.summary());
        }
        self.devices.stop(DEVICE_STOP_TIMEOUT);
        self.api = None;
    }

    /// One watchdog tick: feed it the guest's progress, sample the vCPUs
    /// when it asks, log a stall once and its end once.
    fn watch(&mut self) {
        let now = Instant::now();
        self.last_watch = now;
        if self.state == VmState::Paused {
            // A paused guest makes no progress on purpose.
            self.watchdog = StallWatchdog::new(self.watchdog.timeout(), now);
            return;
        }
        let progress = self
            .vcpus
            .iter()
            .map(|h| h.control().stats.guest_progress())
            .sum();
        match self.watchdog.observe(progress, now) {
            Next::Wait => {}
            Next::Resumed => log::info!("guest resumed making progress after a stall"),
            Next::Sample => {
                for h in &self.vcpus {
                    h.control().request_sample();
                    h.kick();
                }
                let samples: Vec<_> = self
                    .vcpus
                    .iter()
                    .map(|h| (h.id(), h.control().take_sample(SAMPLE_TIMEOUT)))
                    .collect();
                if let Some(stall) = self.watchdog.judge(&samples, now) {
                    log::warn!("{stall}");
                }
            }
        }
    }
}

fn spawn_signal_thread(events: Sender<VmmEvent>, filter: ThreadFilter) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            filter.apply_or_exit();
            if let Some(signo) = signals.forever().next() {
                let _ = events.send(VmmEvent::Exit(VmExit::Signal(signo)));
            }
        })?;
    Ok(())
}

/// The device's sizes in MiB, as the API reports them.
fn hotplug_status(m: &MemStatus) -> HotplugMemoryStatus {
    HotplugMemoryStatus {
        total_size_mib: m.region_size >> 20,
        block_size_mib: m.block_size >> 20,
        plugged_size_mib: m.plugged_size >> 20,
        requested_size_mib: m.requested_size >> 20,
    }
}
