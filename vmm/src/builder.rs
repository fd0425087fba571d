//! Assembles a VM from a [`VmConfig`]: memory, kernel, firmware tables,
//! devices, vCPUs. It starts no thread and runs nothing; the [`Vmm`] it
//! returns does (see [`crate::vmm`]).
//!
//! Build order puts every check of user input (config, kernel, initrd,
//! command line) before anything touches KVM, so bad input fails fast with
//! one clear error and nothing is left half-created.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::api;
use crate::arch::x86_64::acpi::MmioDeviceInfo;
use crate::arch::x86_64::layout::{self, ACPI_SLEEP_CONTROL_PORT};
use crate::arch::x86_64::{acpi, boot, mptable, smbios};
use crate::config::{BzImageDecompression, ConfigError, Validate, VmConfig};
use crate::console;
use crate::devices::bus::{lock, BusError};
use crate::devices::cmos::{self, CmosRtc};
use crate::devices::i8042::{self, I8042};
use crate::devices::manager::DeviceManager;
use crate::devices::power::{AcpiPowerRegister, PowerEvent, PowerHandler};
use crate::devices::serial::{self, SerialDevice};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mem::{Mem, MemConfig, MemError};
use crate::devices::virtio::mmio::{self, MmioTransport, MMIO_LEN};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::Bus;
use crate::exit::VmExit;
use crate::host::{CpuVendor, HostKind, TscSource, Workarounds};
use crate::jail::{Jail, JailError};
use crate::privilege::{self, PrivilegeError};
use crate::seccomp::{Policy, SeccompError, ThreadFilters, ThreadKind};
use crate::snapshot::{self, Machine, Snapshot, SnapshotDir, SnapshotError};
use crate::vmm::{BuiltVm, Origin, Vmm};
use crate::vstate::persist::{self, PersistError};
use crate::vstate::vcpu::{self, Vcpu, VcpuContext};
use crate::vstate::vm::{Vm, VmError};
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
    /// The SMBIOS tables could not be written.
    #[error(transparent)]
    Smbios(#[from] smbios::SmbiosError),
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
    /// The hotplug memory device could not be set up.
    #[error("hotplug memory: {0}")]
    HotplugMemory(#[from] MemError),
    /// The seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Dropping capabilities.
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    /// The jail directory, a socket outside it, or entering it.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// The snapshot directory could not be opened.
    #[error("cannot open the snapshot directory {0}: {1}")]
    SnapshotDir(PathBuf, std::io::Error),
    /// The snapshot to restore from is unreadable, corrupt or does not fit.
    #[error("cannot restore: {0}")]
    Snapshot(#[from] SnapshotError),
    /// KVM refused the snapshot's VM state.
    #[error("cannot restore: {0}")]
    Restore(PersistError),
    /// The snapshot's serial port state is invalid.
    #[error("cannot restore: {0}")]
    RestoreSerial(#[from] serial::SerialRestoreError),
    /// A virtio device's saved state does not fit.
    #[error("cannot restore: {0}")]
    RestoreTransport(#[from] mmio::TransportRestoreError),
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
                | BuildError::SnapshotDir(..)
                | BuildError::Snapshot(_)
                | BuildError::RestoreSerial(_)
                | BuildError::RestoreTransport(_)
                | BuildError::Jail(JailError::Root { .. } | JailError::Outside { .. })
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

/// What the guest starts from.
enum Start {
    /// A kernel loaded into fresh memory.
    Boot {
        kernel: boot::LoadedKernel,
        initrd: Option<boot::InitrdPlacement>,
    },
    /// A snapshot (from this directory) whose memory is mapped.
    Restore(Box<Snapshot>, PathBuf),
}

/// The first interrupt line handed to virtio devices (1 is the i8042, 4 COM1).
const FIRST_VIRTIO_GSI: u32 = 5;

/// Opens every configured virtio device's backend, in guest order: disks
/// (vda, vdb, ...), network cards (eth0, ...), the entropy device, vsock.
/// With a `jail`, vsock connects to its sockets by their paths inside it.
fn open_virtio_devices(
    config: &VmConfig,
    jail: Option<&Jail>,
) -> Result<Vec<Box<dyn VirtioDevice>>, BuildError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &config.disks {
        devices.push(Box::new(Block::open(&disk.path, disk.read_only)?));
    }
    for (index, net) in config.nets.iter().enumerate() {
        let mut card = Net::open(&net.tap, net.mac.map(|m| m.0))?;
        // The metadata service answers on the primary interface, as on EC2.
        if let (0, Some(metadata)) = (index, &config.metadata) {
            card.serve_metadata(metadata.clone())?;
        }
        devices.push(Box::new(card));
    }
    if config.rng {
        devices.push(Box::new(Rng::new()));
    }
    if let Some(hotplug) = &config.hotplug_memory {
        devices.push(Box::new(Mem::new(MemConfig {
            addr: layout::hotplug_start(config.memory_bytes()),
            region_size: hotplug.total_size_mib << 20,
            block_size: hotplug.block_size_mib << 20,
            requested_size: hotplug.requested_size_mib << 20,
        })?));
    }
    if let Some(vsock) = &config.vsock {
        // Checked before the device binds its socket, so that a refusal
        // leaves no socket behind.
        let jailed = jail
            .map(|jail| jail.inside("vsock socket", &vsock.uds))
            .transpose()?;
        let mut device = Vsock::new(vsock.cid, &vsock.uds)?;
        if let Some(path) = jailed {
            device.connect_through(path);
        }
        devices.push(Box::new(device));
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

/// Builds the VM described by `config`; its threads will be confined as
/// `seccomp` says. With `restore_from`, the VM is the snapshot in that
/// directory instead of a fresh boot of `config.kernel`: `config` must
/// describe the same machine (vCPUs, memory, devices) and supplies the
/// backends (taps, disks, sockets), which are new.
pub fn build(
    config: &VmConfig,
    seccomp: Policy,
    restore_from: Option<&Path>,
) -> Result<Vmm, BuildError> {
    config.validate(crate::config::host_memory_mib())?;
    let filters = ThreadFilters::new(seccomp)?;
    let host = HostKind::detect();
    let vendor = CpuVendor::detect();
    let workarounds = Workarounds::new(config.cpu_template, host);
    let vcpu_count = config.vcpus as u8;
    let mem_size = config.memory_bytes();
    let hotplug_size = config.hotplug_memory.map_or(0, |h| h.total_size_mib << 20);

    let snapshot_dir = match &config.snapshot_dir {
        Some(path) => {
            Some(SnapshotDir::open(path).map_err(|e| BuildError::SnapshotDir(path.clone(), e))?)
        }
        None => None,
    };
    let loaded = restore_from
        .map(|dir| snapshot::load(dir).map(|loaded| (loaded, dir.to_path_buf())))
        .transpose()?;
    // Checked before anything is built: the jail, and that the sockets
    // used by path at run time lie inside it.
    let jail = config.jail.as_deref().map(Jail::new).transpose()?;
    let api_sock = match (&config.api_sock, &jail) {
        (Some(path), Some(jail)) => Some(jail.inside("API socket", path)?),
        (path, None) => path.clone(),
        (None, Some(_)) => None,
    };
    let virtio_devices = open_virtio_devices(config, jail.as_ref())?;
    let machine = Machine {
        vendor: vendor.name().to_string(),
        emulated_kernel: workarounds.emulated_kernel,
        vcpus: vcpu_count,
        memory_bytes: mem_size,
        hotplug_bytes: hotplug_size,
        devices: virtio_devices
            .iter()
            .map(|d| d.name().to_string())
            .collect(),
    };
    let virtio_info: Vec<MmioDeviceInfo> = (0..virtio_devices.len())
        .map(|i| MmioDeviceInfo {
            base: layout::MMIO_DEVICES_START + i as u64 * MMIO_LEN,
            gsi: FIRST_VIRTIO_GSI + i as u32,
        })
        .collect();

    // Guest memory, and what the guest starts from: a kernel loaded into
    // fresh memory, or a snapshot's memory and state.
    let (mem, start) = match loaded {
        Some((loaded, dir)) => {
            loaded.snapshot.machine.check_fits(&machine)?;
            let ranges = layout::memory_ranges(mem_size, hotplug_size);
            let mem = snapshot::memory::map(&loaded.memory, &ranges)
                .map_err(snapshot::SnapshotError::from)?;
            (mem, Start::Restore(Box::new(loaded.snapshot), dir))
        }
        None => {
            let mem = memory::create(mem_size, hotplug_size)?;
            let decompress = match config.bzimage_decompression {
                BzImageDecompression::Auto => workarounds.emulated_kernel,
                BzImageDecompression::Guest => false,
                BzImageDecompression::Vmm => true,
            };
            let kernel = boot::load_kernel(&mem, &config.kernel, mem_size, decompress)?;
            let initrd = match &config.initrd {
                Some(path) => Some(boot::load_initrd(&mem, path, &kernel, mem_size)?),
                None => None,
            };
            (mem, Start::Boot { kernel, initrd })
        }
    };
    let (user_cmdline, devices_on_cmdline) = match &start {
        Start::Boot { kernel, .. } => {
            let on_cmdline = !kernel.acpi.uses_dsdt() || cmdline_disables_acpi(&config.cmdline);
            let cmdline = if on_cmdline {
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
            let longest =
                workarounds.extend_cmdline(&cmdline, TscSource::Cmdline(u32::MAX), kernel.traits);
            if longest.len() >= layout::CMDLINE_MAX_SIZE {
                return Err(ConfigError::CmdlineTooLong(longest.len()).into());
            }
            (cmdline, on_cmdline)
        }
        Start::Restore(snapshot, _) => (snapshot.cmdline.clone(), snapshot.devices_on_cmdline),
    };

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
    let serial = match &start {
        Start::Boot { .. } => SerialDevice::new(serial_irq, serial_out),
        Start::Restore(snapshot, _) => {
            SerialDevice::from_snapshot(serial_irq, serial_out, &snapshot.serial)?
        }
    };
    let serial = Arc::new(Mutex::new(serial));
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&kbd_irq, i8042::KBD_GSI)?;
    let mut keyboard = I8042::new(kbd_irq, Box::new(sink()));
    if let Start::Restore(snapshot, _) = &start {
        keyboard.restore(&snapshot.i8042);
    }
    let i8042 = Arc::new(Mutex::new(keyboard));
    let power = Arc::new(Mutex::new(AcpiPowerRegister::new(Box::new(sink()))));
    let mut clock = CmosRtc::new();
    if let Start::Restore(snapshot, _) = &start {
        clock.restore(&snapshot.rtc);
    }
    let rtc = Arc::new(Mutex::new(clock));

    let mut pio = Bus::new();
    pio.insert(serial.clone(), serial::COM1_PORT, serial::COM1_PORT_LEN)?;
    pio.insert(rtc.clone(), cmos::PORT, cmos::PORT_LEN)?;
    pio.insert(
        i8042.clone(),
        i8042::DATA_PORT,
        i8042::COMMAND_PORT - i8042::DATA_PORT + 1,
    )?;
    pio.insert(power, u64::from(ACPI_SLEEP_CONTROL_PORT), 1)?;
    let mut mmio = Bus::new();
    let mut devices = DeviceManager::new().map_err(BuildError::EventFd)?;
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
        mmio.insert(transport.clone(), info.base, MMIO_LEN)?;
        devices
            .add_virtio(transport, *info, queue_events)
            .map_err(BuildError::EventFd)?;
    }

    vcpu::install_kick_handler()?;
    // Only a VM with somewhere to write a snapshot reads state for one.
    let snapshot_msrs: Option<Arc<[u32]>> =
        snapshot_dir
            .as_ref()
            .map(|_| match vm.kvm().get_msr_index_list() {
                Ok(list) => list.as_slice().into(),
                Err(e) => {
                    log::warn!("KVM lists no MSRs ({e}); snapshots will hold none");
                    Arc::from(Vec::new())
                }
            });
    let ctx = VcpuContext {
        mem: mem.clone(),
        pio,
        mmio,
        workarounds,
        events: events_tx.clone(),
        stopping: stopping.clone(),
        count: vcpu_count,
        hide_tsc_leaves: config.hide_tsc_leaves,
        snapshot_msrs,
    };
    let entry = match &start {
        Start::Boot { kernel, .. } => Some(kernel.entry),
        Start::Restore(..) => None,
    };
    let vcpus = (0..vcpu_count)
        .map(|id| Vcpu::new(&vm, id, &ctx, entry))
        .collect::<Result<Vec<_>, _>>()?;

    let tsc = workarounds.tsc_source(&user_cmdline, vcpus.first().and_then(Vcpu::tsc_khz));
    let (cmdline, origin) = match start {
        Start::Boot { kernel, initrd } => {
            // The command line and the tables that point at it go in last:
            // the TSC frequency it may carry is known only once KVM has
            // made a vCPU.
            let cmdline = workarounds.extend_cmdline(&user_cmdline, tsc, kernel.traits);
            if cmdline.len() >= layout::CMDLINE_MAX_SIZE {
                return Err(ConfigError::CmdlineTooLong(cmdline.len()).into());
            }
            boot::write_cmdline(&mem, &cmdline)?;
            mptable::setup(&mem, vcpu_count)?;
            let acpi = acpi::setup(&mem, vcpu_count, &virtio_info)?;
            // An instance's firmware says it is an EC2 instance.
            if let Some(metadata) = &config.metadata {
                smbios::setup(&mem, metadata)?;
            }
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
            (cmdline, Origin::Kernel(kernel))
        }
        Start::Restore(snapshot, dir) => {
            // Interrupt controllers first, then each vCPU, then the
            // devices, which may raise interrupts as they come back.
            persist::restore_vm(vm.fd(), &snapshot.vm).map_err(BuildError::Restore)?;
            for (vcpu, state) in vcpus.iter().zip(&snapshot.vcpus) {
                vcpu.restore(state)?;
            }
            for (slot, saved) in devices.virtio().iter().zip(&snapshot.virtio) {
                lock(&slot.transport).restore(saved)?;
            }
            (user_cmdline, Origin::Restored(dir))
        }
    };

    // Everything is open (KVM, taps, disks, memory, the console): with a
    // jail, the host's file system goes from view now, while this is the
    // only thread and still privileged.
    if let Some(jail) = &jail {
        jail.enter()?;
        log::info!(
            "confined to {} (a mount namespace of its own)",
            jail.root().display()
        );
    }

    // Everything privileged is done (KVM, taps, disks, memory): no thread
    // but this one exists yet, and every thread started from here on
    // inherits an empty capability set.
    let dropped = privilege::drop_all()?;
    if dropped.effective_before > 0 {
        log::info!(
            "dropped all {} capabilities before starting threads",
            dropped.effective_before
        );
    }

    let api = match &api_sock {
        Some(path) => Some(api::start(
            path,
            events_tx.clone(),
            filters.for_thread(ThreadKind::Api),
        )?),
        None => None,
    };

    Ok(Vmm::new(BuiltVm {
        config: config.clone(),
        cmdline,
        origin,
        machine,
        snapshot_dir,
        devices_on_cmdline,
        host,
        vendor,
        tsc,
        workarounds,
        vm,
        mem,
        vcpus,
        devices,
        serial,
        i8042,
        rtc,
        events_tx,
        events_rx,
        api,
        filters,
    }))
}
