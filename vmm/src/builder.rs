//! Assembles a VM from a [`VmConfig`] and runs its main loop.
//!
//! Build order puts every check of user input (config, kernel, initrd,
//! command line) before anything touches KVM, so bad input fails fast with
//! one clear error and nothing is left half-created.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{self, ActionType, ApiRequest, ApiResponse, ApiServer, VmStateRequest};
use crate::arch::x86_64::acpi::MmioDeviceInfo;
use crate::arch::x86_64::layout::{self, ACPI_SLEEP_CONTROL_PORT};
use crate::arch::x86_64::regs::EntryMode;
use crate::arch::x86_64::{acpi, boot, mptable};
use crate::config::{ConfigError, VmConfig};
use crate::console::{self, RawTerminal};
use crate::devices::bus::{lock, BusError};
use crate::devices::cmos::{self, CmosRtc};
use crate::devices::i8042::{self, I8042};
use crate::devices::power::{AcpiPowerRegister, PowerEvent, PowerHandler};
use crate::devices::serial::{self, SerialDevice};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::event::EventLoop;
use crate::devices::virtio::mmio::{self, MmioTransport, MMIO_LEN};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::Bus;
use crate::exit::VmExit;
use crate::host::{CpuVendor, HostKind, TscSource, Workarounds};
use crate::vstate::vcpu::{self, Activity, Request, Vcpu, VcpuContext, VcpuHandle};
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::watchdog::{Next, StallWatchdog};
use crate::vstate::{memory, vcpu::VcpuError};
use crate::VmmEvent;

/// Errors building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kernel, initrd or command line problem.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The serial output file could not be opened.
    #[error("cannot open serial output: {0}")]
    SerialOut(std::io::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// KVM VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPUs.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Device wiring.
    #[error("cannot wire devices: {0}")]
    Bus(#[from] BusError),
    /// Device eventfds.
    #[error("cannot create device eventfd: {0}")]
    EventFd(std::io::Error),
    /// Control API.
    #[error(transparent)]
    Api(#[from] api::ApiError),
    /// A disk image.
    #[error(transparent)]
    Disk(#[from] BlockError),
    /// A network card's tap.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The vsock device's socket.
    #[error(transparent)]
    Vsock(#[from] VsockError),
}

impl BuildError {
    /// Whether the user's input is at fault (exit status 2) rather than the host.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            BuildError::Config(_)
                | BuildError::Boot(_)
                | BuildError::SerialOut(_)
                | BuildError::Api(_)
                | BuildError::Disk(_)
                | BuildError::Net(_)
                | BuildError::Vsock(_)
        )
    }
}

/// Reports power events from the ACPI register and the i8042 to the main
/// loop, and stops the requesting vCPU before its next guest instruction.
struct EventSink {
    events: Sender<VmmEvent>,
    stopping: Arc<AtomicBool>,
}

impl EventSink {
    fn stop(&self, exit: VmExit) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.events.send(VmmEvent::Exit(exit));
    }
}

impl PowerHandler for EventSink {
    fn power_event(&mut self, event: PowerEvent) {
        self.stop(match event {
            PowerEvent::Poweroff => VmExit::GuestPoweroff,
            PowerEvent::Reset => VmExit::GuestReset,
        });
    }
}

impl i8042::ResetHandler for EventSink {
    fn reset(&mut self) {
        self.stop(VmExit::GuestReset);
    }
}

/// A built VM, ready to run.
pub struct Vmm {
    config: VmConfig,
    cmdline: String,
    entry: EntryMode,
    format: boot::KernelFormat,
    acpi: boot::AcpiSupport,
    devices_on_cmdline: bool,
    host: HostKind,
    vendor: CpuVendor,
    tsc: TscSource,
    workarounds: Workarounds,
    // Kept alive for as long as vCPUs may touch them.
    _vm: Vm,
    _mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    events_tx: Sender<VmmEvent>,
    events_rx: Receiver<VmmEvent>,
    api: Option<ApiServer>,
    devices: Vec<(Arc<Mutex<MmioTransport>>, MmioDeviceInfo)>,
}

/// The first interrupt line handed to virtio devices (1 is the i8042, 4 COM1).
const FIRST_VIRTIO_GSI: u32 = 5;

/// Opens every configured virtio device's backend, in guest order: disks
/// (vda, vdb, ...), network cards (eth0, ...), the entropy device, vsock.
fn open_virtio_devices(config: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, BuildError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &config.disks {
        devices.push(Box::new(Block::open(&disk.path, disk.read_only)?));
    }
    for net in &config.nets {
        devices.push(Box::new(Net::open(&net.tap, net.mac.map(|m| m.0))?));
    }
    if config.rng {
        devices.push(Box::new(Rng::new()));
    }
    if let Some(vsock) = &config.vsock {
        devices.push(Box::new(Vsock::new(vsock.cid, &vsock.uds)?));
    }
    Ok(devices)
}

/// The command-line declaration of each virtio-mmio device, for kernels that
/// cannot read them from the DSDT (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
fn cmdline_device_params(devices: &[MmioDeviceInfo]) -> String {
    devices
        .iter()
        .map(|d| {
            format!(
                "virtio_mmio.device={}K@{:#x}:{}",
                MMIO_LEN / 1024,
                d.base,
                d.gsi
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the user's command line switches ACPI off (`acpi=off`), which
/// leaves the kernel where a kernel without ACPI is.
fn cmdline_disables_acpi(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|p| p == "acpi=off")
}

/// Builds the VM described by `config`.
pub fn build(config: &VmConfig) -> Result<Vmm, BuildError> {
    config.validate(crate::config::host_memory_mib())?;
    let host = HostKind::detect();
    let vendor = CpuVendor::detect();
    let workarounds = Workarounds::new(config.cpu_template, host);
    let vcpu_count = config.vcpus as u8;
    let mem_size = config.memory_bytes();

    let mem = memory::create(mem_size)?;
    let kernel = boot::load_kernel(&mem, &config.kernel, mem_size)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&mem, path, &kernel, mem_size)?),
        None => None,
    };
    let virtio_devices = open_virtio_devices(config)?;
    let virtio_info: Vec<MmioDeviceInfo> = (0..virtio_devices.len())
        .map(|i| MmioDeviceInfo {
            base: layout::MMIO_DEVICES_START + i as u64 * MMIO_LEN,
            gsi: FIRST_VIRTIO_GSI + i as u32,
        })
        .collect();
    let devices_on_cmdline = !kernel.acpi.uses_dsdt() || cmdline_disables_acpi(&config.cmdline);
    let user_cmdline = if devices_on_cmdline {
        format!(
            "{} {}",
            config.cmdline.trim(),
            cmdline_device_params(&virtio_info)
        )
        .trim()
        .to_string()
    } else {
        config.cmdline.clone()
    };
    // Checked before KVM is touched, with the longest TSC parameter there is.
    let longest = workarounds.extend_cmdline(&user_cmdline, TscSource::Cmdline(u32::MAX));
    if longest.len() >= layout::CMDLINE_MAX_SIZE {
        return Err(ConfigError::CmdlineTooLong(longest.len()).into());
    }

    let vm = Vm::new(&mem)?;
    let (events_tx, events_rx) = mpsc::channel();
    let stopping = Arc::new(AtomicBool::new(false));
    let sink = || EventSink {
        events: events_tx.clone(),
        stopping: stopping.clone(),
    };
    let serial_out =
        console::open_output(config.serial_out.as_deref()).map_err(BuildError::SerialOut)?;

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&serial_irq, serial::COM1_GSI)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, serial_out)));
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&kbd_irq, i8042::KBD_GSI)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(kbd_irq, Box::new(sink()))));
    let power = Arc::new(Mutex::new(AcpiPowerRegister::new(Box::new(sink()))));
    let rtc = Arc::new(Mutex::new(CmosRtc::new()));

    let mut pio = Bus::new();
    pio.insert(serial.clone(), serial::COM1_PORT, serial::COM1_PORT_LEN)?;
    pio.insert(rtc, cmos::PORT, cmos::PORT_LEN)?;
    pio.insert(
        i8042.clone(),
        i8042::DATA_PORT,
        i8042::COMMAND_PORT - i8042::DATA_PORT + 1,
    )?;
    pio.insert(power, u64::from(ACPI_SLEEP_CONTROL_PORT), 1)?;
    let mut mmio = Bus::new();
    let mut event_loop = EventLoop::new().map_err(BuildError::EventFd)?;
    let mut transports = Vec::new();
    for (device, info) in virtio_devices.into_iter().zip(&virtio_info) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        vm.register_irqfd(&irq, info.gsi)?;
        let queues = device.queue_max_sizes().len();
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            mem.clone(),
            Arc::new(VirtioInterrupt::new(irq)),
        )));
        let mut queue_events = Vec::with_capacity(queues);
        for queue in 0..queues {
            let event = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
            vm.register_ioevent(&event, info.base + mmio::QUEUE_NOTIFY, queue as u32)?;
            queue_events.push(event);
        }
        event_loop
            .add_device(&transport, queue_events)
            .map_err(BuildError::EventFd)?;
        mmio.insert(transport.clone(), info.base, MMIO_LEN)?;
        transports.push((transport, *info));
    }
    event_loop.spawn().map_err(BuildError::EventFd)?;

    vcpu::install_kick_handler()?;
    let ctx = VcpuContext {
        mem: mem.clone(),
        pio,
        mmio,
        workarounds,
        events: events_tx.clone(),
        stopping: stopping.clone(),
        count: vcpu_count,
        hide_tsc_leaves: config.hide_tsc_leaves,
    };
    let vcpus = (0..vcpu_count)
        .map(|id| Vcpu::new(&vm, id, &ctx, kernel.entry))
        .collect::<Result<Vec<_>, _>>()?;

    // The command line and the tables that point at it go in last: the TSC
    // frequency it may carry is known only once KVM has made a vCPU.
    let tsc = workarounds.tsc_source(&user_cmdline, vcpus.first().and_then(Vcpu::tsc_khz));
    let cmdline = workarounds.extend_cmdline(&user_cmdline, tsc);
    if cmdline.len() >= layout::CMDLINE_MAX_SIZE {
        return Err(ConfigError::CmdlineTooLong(cmdline.len()).into());
    }
    boot::write_cmdline(&mem, &cmdline)?;
    mptable::setup(&mem, vcpu_count)?;
    let acpi = acpi::setup(&mem, vcpu_count, &virtio_info)?;
    boot::write_boot_params(
        &mem,
        &kernel,
        &boot::BootInfo {
            cmdline_len: cmdline.len(),
            initrd,
            rsdp: acpi.rsdp,
            mem_size,
        },
    )?;

    let api = match &config.api_sock {
        Some(path) => Some(api::start(path, events_tx.clone())?),
        None => None,
    };

    Ok(Vmm {
        config: config.clone(),
        cmdline,
        entry: kernel.entry,
        format: kernel.format,
        acpi: kernel.acpi,
        devices_on_cmdline,
        host,
        vendor,
        tsc,
        workarounds,
        _vm: vm,
        _mem: mem,
        vcpus,
        serial,
        i8042,
        events_tx,
        events_rx,
        api,
        devices: transports,
    })
}

/// How long pause waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the main loop looks at the stall watchdog.
const WATCHDOG_TICK: Duration = Duration::from_secs(1);
/// How long a kicked vCPU has to record its sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);

struct Running {
    handles: Vec<VcpuHandle>,
    started: Instant,
    paused: bool,
    watchdog: StallWatchdog,
    last_watch: Instant,
}

impl Running {
    /// One watchdog tick: feed it the guest's progress, sample the vCPUs
    /// when it asks, log a stall once and its end once.
    fn watch(&mut self) {
        let now = Instant::now();
        self.last_watch = now;
        if self.paused {
            // A paused guest makes no progress on purpose.
            self.watchdog = StallWatchdog::new(self.watchdog.timeout(), now);
            return;
        }
        let progress = self
            .handles
            .iter()
            .map(|h| h.control().stats.guest_progress())
            .sum();
        match self.watchdog.observe(progress, now) {
            Next::Wait => {}
            Next::Resumed => log::info!("guest resumed making progress after a stall"),
            Next::Sample => {
                for h in &self.handles {
                    h.control().request_sample();
                    h.kick();
                }
                let samples: Vec<_> = self
                    .handles
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

impl Vmm {
    /// The command line the guest gets, workarounds included.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Runs the VM until it stops; returns why.
    pub fn run(self) -> VmExit {
        log::info!(
            "{}",
            self.workarounds.describe(self.host, self.vendor, self.tsc)
        );
        if matches!(self.tsc, TscSource::Calibrate) {
            log::warn!("KVM reported no TSC frequency; a guest that cannot calibrate will hang");
        }
        log::info!(
            "booting {} ({:?}, {} entry, ACPI {}) with {} vCPU(s), {} MiB: {}",
            self.config.kernel.display(),
            self.format,
            match self.entry {
                EntryMode::Pvh { .. } => "PVH",
                EntryMode::Linux64 { .. } => "64-bit",
            },
            match (self.acpi, self.devices_on_cmdline) {
                (boot::AcpiSupport::Absent, _) =>
                    "absent: devices on the command line, IRQs from the MP table",
                (_, true) => "off: devices on the command line, IRQs from the MP table",
                (boot::AcpiSupport::Present, false) => "present",
                (boot::AcpiSupport::Assumed, false) => "assumed (bzImage)",
            },
            self.config.vcpus,
            self.config.memory_mib,
            self.cmdline
        );
        let _terminal = if self.config.serial_out.is_none() {
            RawTerminal::enable()
        } else {
            None
        };
        if _terminal.is_some() {
            if let Err(e) = console::spawn_input(self.serial.clone(), self.events_tx.clone()) {
                log::warn!("no console input: {e}");
            }
        }
        if let Err(e) = spawn_signal_thread(self.events_tx.clone()) {
            return VmExit::VmmError(format!("cannot watch signals: {e}"));
        }

        let mut running = Running {
            handles: Vec::new(),
            started: Instant::now(),
            paused: false,
            watchdog: StallWatchdog::new(
                Duration::from_secs(self.config.stall_timeout_secs),
                Instant::now(),
            ),
            last_watch: Instant::now(),
        };
        let mut exit = None;
        for v in self.vcpus {
            match v.start() {
                Ok(h) => running.handles.push(h),
                Err(e) => {
                    exit = Some(VmExit::VmmError(e.to_string()));
                    break;
                }
            }
        }
        let exit = match exit {
            Some(e) => e,
            None => loop {
                let event = match self.events_rx.recv_timeout(WATCHDOG_TICK) {
                    Ok(event) => event,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        running.watch();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break VmExit::VmmError("event channel closed".to_string());
                    }
                };
                if running.last_watch.elapsed() >= WATCHDOG_TICK {
                    running.watch();
                }
                match event {
                    VmmEvent::Exit(e) => break e,
                    VmmEvent::Api(req, reply) => {
                        let (response, stop) = handle_api(
                            req,
                            &mut running,
                            &self.config,
                            &self.cmdline,
                            &self.i8042,
                            &self.devices,
                        );
                        let _ = reply.send(response);
                        if stop {
                            break VmExit::ApiShutdown;
                        }
                    }
                }
            },
        };
        for h in running.handles.iter_mut() {
            h.stop();
        }
        for h in &running.handles {
            log::info!("vcpu{} exits: {}", h.id(), h.control().stats.summary());
        }
        drop(self.api);
        exit
    }
}

fn handle_api(
    req: ApiRequest,
    running: &mut Running,
    config: &VmConfig,
    cmdline: &str,
    i8042: &Arc<Mutex<I8042>>,
    devices: &[(Arc<Mutex<MmioTransport>>, MmioDeviceInfo)],
) -> (ApiResponse, bool) {
    match req {
        ApiRequest::Describe => {
            let vcpus: Vec<_> = running
                .handles
                .iter()
                .map(|h| json!({ "id": h.id(), "exits": h.control().stats.snapshot() }))
                .collect();
            let devices: Vec<_> = devices
                .iter()
                .map(|(t, info)| {
                    let t = lock(t);
                    json!({
                        "type": t.device().name(),
                        "mmio_base": info.base,
                        "gsi": info.gsi,
                        "active": t.is_active(),
                        "counters": t.device().counters().snapshot(),
                    })
                })
                .collect();
            let body = json!({
                "state": if running.paused { "Paused" } else { "Running" },
                "devices": devices,
                "config": config,
                "cmdline": cmdline,
                "uptime_ms": running.started.elapsed().as_millis() as u64,
                "vcpus": vcpus,
                "stall": running.watchdog.stall(),
            });
            (ApiResponse::Json(body), false)
        }
        ApiRequest::SetState(VmStateRequest::Paused) => {
            for h in &running.handles {
                h.control().request(Request::Pause);
                h.kick();
            }
            let all_parked = running.handles.iter().all(|h| {
                h.control()
                    .wait_for(|a| a != Activity::Running, PAUSE_TIMEOUT)
            });
            running.paused = true;
            if all_parked {
                (ApiResponse::NoContent, false)
            } else {
                (
                    ApiResponse::Error(500, "a vCPU did not pause in time".to_string()),
                    false,
                )
            }
        }
        ApiRequest::SetState(VmStateRequest::Resumed) => {
            for h in &running.handles {
                h.control().request(Request::Run);
            }
            running.paused = false;
            (ApiResponse::NoContent, false)
        }
        ApiRequest::Action(ActionType::SendCtrlAltDel) => {
            lock(i8042).send_ctrl_alt_del();
            (ApiResponse::NoContent, false)
        }
        ApiRequest::Action(ActionType::Shutdown) => (ApiResponse::NoContent, true),
    }
}

fn spawn_signal_thread(events: Sender<VmmEvent>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            if let Some(signo) = signals.forever().next() {
                let _ = events.send(VmmEvent::Exit(VmExit::Signal(signo)));
            }
        })?;
    Ok(())
}
