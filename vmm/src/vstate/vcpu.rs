//! vCPU threads: creation, the KVM_RUN loop, exit dispatch, and the kick
//! (immediate_exit + a signal) that brings a vCPU out of the guest for pause
//! and stop.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{
    kvm_run, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::emulate::{self, Emulated};
use super::persist::{self, PersistError, VcpuState};
use super::vm::Vm;
use super::watchdog::VcpuSample;
use crate::arch::x86_64::cpuid::{self, CpuidParams};
use crate::arch::x86_64::msr;
use crate::arch::x86_64::regs::{self, EntryMode};
use crate::devices::bus::lock;
use crate::devices::Bus;
use crate::diag;
use crate::exit::VmExit;
use crate::host::Workarounds;
use crate::pause::{self, ParkControl, Pausable};
use crate::seccomp::ThreadFilter;
use crate::VmmEvent;

/// Errors creating or configuring vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A vCPU ioctl failed.
    #[error("vcpu{id}: cannot {what}: {source}")]
    Kvm {
        /// The vCPU.
        id: u8,
        /// Which operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Boot register set-up failed.
    #[error("vcpu0: {0}")]
    Regs(#[from] regs::RegsError),
    /// The CPUID or MSR list could not be built.
    #[error("vcpu{0}: cannot build the CPUID/MSR list")]
    Fam(u8),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// The vCPU thread could not be started.
    #[error("cannot start vcpu{0} thread: {1}")]
    Spawn(u8, std::io::Error),
    /// Saved state could not be put back.
    #[error("vcpu{0}: {1}")]
    Restore(u8, PersistError),
}

/// Exit reasons we count, in the order they are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitKind {
    /// Port read.
    IoIn,
    /// Port write.
    IoOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// HLT reached userspace.
    Hlt,
    /// KVM_RUN interrupted (kick or signal).
    Interrupted,
    /// INT3 finished by the VMM.
    EmulatedInt3,
    /// FWAIT finished by the VMM.
    EmulatedFwait,
    /// LDMXCSR/STMXCSR finished by the VMM.
    EmulatedMxcsr,
    /// System event (shutdown / reset).
    SystemEvent,
    /// Triple fault.
    Shutdown,
    /// Anything else.
    Other,
}

const EXIT_KINDS: [(ExitKind, &str); 12] = [
    (ExitKind::IoIn, "io_in"),
    (ExitKind::IoOut, "io_out"),
    (ExitKind::MmioRead, "mmio_read"),
    (ExitKind::MmioWrite, "mmio_write"),
    (ExitKind::Hlt, "hlt"),
    (ExitKind::Interrupted, "interrupted"),
    (ExitKind::EmulatedInt3, "emulated_int3"),
    (ExitKind::EmulatedFwait, "emulated_fwait"),
    (ExitKind::EmulatedMxcsr, "emulated_mxcsr"),
    (ExitKind::SystemEvent, "system_event"),
    (ExitKind::Shutdown, "shutdown"),
    (ExitKind::Other, "other"),
];

/// Per-vCPU exit counters, readable from any thread.
#[derive(Debug, Default)]
pub struct ExitStats {
    counts: [AtomicU64; EXIT_KINDS.len()],
}

impl ExitStats {
    /// Counts one exit.
    pub fn inc(&self, kind: ExitKind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Exits the guest caused: everything but kicks, which are ours.
    pub fn guest_progress(&self) -> u64 {
        EXIT_KINDS
            .iter()
            .filter(|(kind, _)| *kind != ExitKind::Interrupted)
            .map(|(kind, _)| self.counts[*kind as usize].load(Ordering::Relaxed))
            .sum()
    }

    /// The counters by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        EXIT_KINDS
            .iter()
            .map(|(kind, name)| (*name, self.counts[*kind as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// `name=count` pairs for the exit log line, in a fixed order.
    pub fn summary(&self) -> String {
        EXIT_KINDS
            .iter()
            .map(|(kind, name)| {
                format!(
                    "{name}={}",
                    self.counts[*kind as usize].load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// RFLAGS interrupt-enable flag.
const RFLAGS_IF: u64 = 1 << 9;

pub use crate::pause::{Activity, Request};

/// Shared between a vCPU thread and the VMM.
#[derive(Debug)]
pub struct VcpuControl {
    park: ParkControl,
    /// Exit counters.
    pub stats: ExitStats,
    sample_wanted: AtomicBool,
    sample: Mutex<Option<VcpuSample>>,
    /// The state the thread read when it last parked for a pause (what a
    /// snapshot saves), or why it could not.
    saved: Mutex<Option<Result<VcpuState, String>>>,
}

impl VcpuControl {
    fn new() -> Self {
        Self {
            park: ParkControl::new(),
            stats: ExitStats::default(),
            sample_wanted: AtomicBool::new(false),
            sample: Mutex::new(None),
            saved: Mutex::new(None),
        }
    }

    /// Asks the thread to record where the guest is at its next return from
    /// KVM_RUN (the caller kicks it).
    pub fn request_sample(&self) {
        *lock(&self.sample) = None;
        self.sample_wanted.store(true, Ordering::Release);
    }

    /// The sample recorded since [`Self::request_sample`], waiting up to `timeout`.
    pub fn take_sample(&self, timeout: std::time::Duration) -> Option<VcpuSample> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = lock(&self.sample).take() {
                return Some(s);
            }
            if std::time::Instant::now() >= deadline {
                self.sample_wanted.store(false, Ordering::Release);
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Sets the request (the caller kicks the thread afterwards).
    pub fn request(&self, request: Request) {
        self.park.request(request);
    }

    /// Waits until the thread's activity satisfies `done`, up to `timeout`.
    pub fn wait_for(&self, done: impl Fn(Activity) -> bool, timeout: std::time::Duration) -> bool {
        self.park.wait_for(done, timeout)
    }

    /// The thread's current activity.
    pub fn activity(&self) -> Activity {
        self.park.activity()
    }

    /// The vCPU's state as the thread read it when it parked; meaningful
    /// only while the VM is paused (it is not refreshed while running).
    pub fn saved_state(&self) -> Result<VcpuState, String> {
        lock(&self.saved)
            .clone()
            .unwrap_or_else(|| Err("the vCPU has not parked".to_string()))
    }
}

thread_local! {
    /// This thread's kvm_run mapping, so the kick signal handler can set immediate_exit.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by the
        // vCPU thread before it first enters KVM_RUN and cleared before the
        // VcpuFd (and so the mapping) is dropped. A byte store is
        // async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal)
}

/// A configured vCPU, not yet running.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    mem: GuestMemoryMmap,
    pio: Bus,
    mmio: Bus,
    workarounds: Workarounds,
    events: Sender<VmmEvent>,
    stopping: Arc<AtomicBool>,
    control: Arc<VcpuControl>,
    tsc_khz: Option<u32>,
    snapshot_msrs: Option<Arc<[u32]>>,
}

/// Everything vCPUs share.
pub struct VcpuContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Host adaptations.
    pub workarounds: Workarounds,
    /// Where vCPUs report fatal exits.
    pub events: Sender<VmmEvent>,
    /// Set by a device when the guest asked to power off or reset: the vCPU
    /// that made the request must not execute another guest instruction.
    pub stopping: Arc<AtomicBool>,
    /// Total vCPUs.
    pub count: u8,
    /// Withhold the TSC frequency CPUID leaves (see `CpuidParams`).
    pub hide_tsc_leaves: bool,
    /// For a VM that can be snapshotted, the MSRs a snapshot saves
    /// (KVM_GET_MSR_INDEX_LIST); each vCPU then reads its state whenever
    /// it parks for a pause. `None`: the VM has no snapshot directory and
    /// a pause reads nothing.
    pub snapshot_msrs: Option<Arc<[u32]>>,
}

impl Vcpu {
    /// Creates vCPU `id` with its CPUID, MSRs, LAPIC and, for the boot vCPU
    /// of a VM that boots a kernel (`entry`), its registers. A restored VM
    /// passes no entry and calls [`Self::restore`] instead.
    pub fn new(
        vm: &Vm,
        id: u8,
        ctx: &VcpuContext,
        entry: Option<EntryMode>,
    ) -> Result<Self, VcpuError> {
        let kvm_err = |what| move |source| VcpuError::Kvm { id, what, source };
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("create the vCPU"))?;

        let mut cpuid: CpuId = vm
            .kvm()
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let has_leaf =
            |cpuid: &CpuId, leaf: u32| cpuid.as_slice().iter().any(|e| e.function == leaf);
        let max_basic_leaf = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0)
            .map_or(0, |e| e.eax);
        // Empty slots for the TSC frequency leaves, filled by normalize():
        // 0x15 only where the host's basic range reaches it (Intel), the
        // hypervisor timing leaf wherever KVM's own leaves are present.
        let mut extra = Vec::new();
        if !has_leaf(&cpuid, cpuid::LEAF_TSC_FREQ) && max_basic_leaf >= cpuid::LEAF_TSC_FREQ {
            extra.push(cpuid::LEAF_TSC_FREQ);
        }
        if has_leaf(&cpuid, cpuid::LEAF_HYPERVISOR_BASE)
            && !has_leaf(&cpuid, cpuid::LEAF_HYPERVISOR_TIMING)
        {
            extra.push(cpuid::LEAF_HYPERVISOR_TIMING);
        }
        for function in extra {
            let leaf = kvm_bindings::kvm_cpuid_entry2 {
                function,
                ..Default::default()
            };
            cpuid.push(leaf).map_err(|_| VcpuError::Fam(id))?;
        }
        let tsc_khz = fd.get_tsc_khz().ok();
        cpuid::normalize(
            cpuid.as_mut_slice(),
            CpuidParams {
                vcpu_id: id,
                vcpu_count: ctx.count,
                tsc_deadline: vm.fd().check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
                hidden: ctx.workarounds.hidden_features(),
                tsc_khz,
                hide_tsc_leaves: ctx.hide_tsc_leaves,
            },
        );
        fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;

        let msrs = msr::boot_msrs().map_err(|_| VcpuError::Fam(id))?;
        let written = fd.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
        if written != msrs.as_slice().len() {
            log::warn!(
                "vcpu{id}: KVM accepted {written} of {} boot MSRs",
                msrs.as_slice().len()
            );
        }

        set_lint(&fd).map_err(kvm_err("configure the local APIC"))?;
        if let (0, Some(entry)) = (id, entry) {
            regs::setup_boot_vcpu(&fd, &ctx.mem, entry)?;
        }
        Ok(Self {
            id,
            fd,
            mem: ctx.mem.clone(),
            pio: ctx.pio.clone(),
            mmio: ctx.mmio.clone(),
            workarounds: ctx.workarounds,
            events: ctx.events.clone(),
            stopping: ctx.stopping.clone(),
            control: Arc::new(VcpuControl::new()),
            tsc_khz,
            snapshot_msrs: ctx.snapshot_msrs.clone(),
        })
    }

    /// Puts back the state a snapshot saved for this vCPU.
    pub fn restore(&self, state: &VcpuState) -> Result<(), VcpuError> {
        persist::restore_vcpu(&self.fd, state).map_err(|e| VcpuError::Restore(self.id, e))
    }

    /// The TSC frequency KVM runs this vCPU at, if KVM says.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.tsc_khz
    }

    /// The control block shared with the VMM.
    pub fn control(&self) -> Arc<VcpuControl> {
        self.control.clone()
    }

    /// Starts the vCPU thread, which installs `filter` before it first
    /// enters the guest.
    pub fn start(self, filter: ThreadFilter) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let control = self.control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if let Err(e) = filter.apply() {
                    let _ = self
                        .events
                        .send(VmmEvent::Exit(VmExit::VmmError(e.to_string())));
                    self.control.park.set_activity(Activity::Exited);
                    return;
                }
                self.run()
            })
            .map_err(|e| VcpuError::Spawn(id, e))?;
        Ok(VcpuHandle {
            id,
            thread: Some(thread),
            control,
        })
    }

    fn run(mut self) {
        KVM_RUN.with(|p| p.set(self.fd.get_kvm_run()));
        let control = self.control.clone();
        while control.park.wait_runnable(|| {
            self.settle();
            self.save_parked_state();
        }) {
            if let Step::Stop(exit) = self.run_once() {
                let _ = self.events.send(VmmEvent::Exit(exit));
                break;
            }
            if self.stopping.load(Ordering::Acquire) {
                // The device that set the flag has reported the exit already.
                break;
            }
        }
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
        control.park.set_activity(Activity::Exited);
    }

    /// Before parking for a pause: re-enters KVM with immediate_exit set,
    /// so the access that made the last exit (an IN whose value KVM has not
    /// yet put in RAX, an MMIO read, the rest of a string instruction) is
    /// completed inside KVM without running further guest code. A paused
    /// vCPU is then never half-way through an instruction, which is what
    /// Cloud Hypervisor does and what a snapshot of its registers needs.
    fn settle(&mut self) {
        // Completing an access can make another exit (a split MMIO access);
        // each is served as usual. KVM returns EINTR once nothing is left;
        // the bound only guards against a KVM that never does.
        for _ in 0..8 {
            self.fd.set_kvm_immediate_exit(1);
            match self.run_once() {
                Step::Interrupted => return,
                Step::Continue => {}
                Step::Stop(exit) => {
                    // The main loop stops the VM on this event; this vCPU
                    // parks meanwhile and leaves on the exit request.
                    self.fd.set_kvm_immediate_exit(0);
                    let _ = self.events.send(VmmEvent::Exit(exit));
                    return;
                }
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        log::warn!(
            "vcpu{}: KVM kept exiting while settling for a pause",
            self.id
        );
    }

    /// Reads this vCPU's state for a snapshot, once settled: the state no
    /// longer changes until the VM resumes, and the VMM cannot read it
    /// itself (the vCPU's descriptor belongs to this thread).
    fn save_parked_state(&self) {
        let Some(msrs) = &self.snapshot_msrs else {
            return;
        };
        let state = persist::save_vcpu(&self.fd, msrs).map_err(|e| format!("vcpu{}: {e}", self.id));
        *lock(&self.control.saved) = Some(state);
    }

    /// Where the guest is now (for the stall watchdog); `None` when KVM
    /// refuses to say.
    fn sample(&self) -> Option<VcpuSample> {
        let regs = self.fd.get_regs().ok()?;
        let sregs = self.fd.get_sregs().ok()?;
        let mp_state = self.fd.get_mp_state().ok()?;
        Some(VcpuSample {
            rip: regs.rip,
            kernel_mode: sregs.cs.dpl == 0,
            halted: mp_state.mp_state == kvm_bindings::KVM_MP_STATE_HALTED,
            interrupts_enabled: regs.rflags & RFLAGS_IF != 0,
        })
    }

    /// One KVM_RUN and its exit.
    fn run_once(&mut self) -> Step {
        match self.run_exit() {
            Ok(None) => Step::Continue,
            Ok(Some(exit)) => Step::Stop(exit),
            Err(Interrupted) => Step::Interrupted,
        }
    }

    /// One KVM_RUN and its exit; `Some` when the VM must stop, `Err` when
    /// KVM_RUN was interrupted (a kick) before the guest made an exit.
    fn run_exit(&mut self) -> Result<Option<VmExit>, Interrupted> {
        let stats = &self.control.stats;
        let id = self.id;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                stats.inc(ExitKind::Interrupted);
                if self.control.sample_wanted.swap(false, Ordering::AcqRel) {
                    let sample = self.sample();
                    *lock(&self.control.sample) = sample;
                }
                return Err(Interrupted);
            }
            Err(e) => {
                return Ok(Some(VmExit::Unhandled {
                    vcpu: id,
                    reason: format!("KVM_RUN failed: {e}"),
                }));
            }
        };
        let fatal = match exit {
            VcpuExit::IoIn(port, data) => {
                stats.inc(ExitKind::IoIn);
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                return Ok(None);
            }
            VcpuExit::IoOut(port, data) => {
                stats.inc(ExitKind::IoOut);
                self.pio.write(u64::from(port), data);
                return Ok(None);
            }
            VcpuExit::MmioRead(addr, data) => {
                stats.inc(ExitKind::MmioRead);
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                return Ok(None);
            }
            VcpuExit::MmioWrite(addr, data) => {
                stats.inc(ExitKind::MmioWrite);
                self.mmio.write(addr, data);
                return Ok(None);
            }
            VcpuExit::Hlt => {
                stats.inc(ExitKind::Hlt);
                return Ok(None);
            }
            VcpuExit::SystemEvent(kind, _) => {
                stats.inc(ExitKind::SystemEvent);
                return Ok(Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::GuestPoweroff,
                    KVM_SYSTEM_EVENT_RESET => VmExit::GuestReset,
                    other => VmExit::Unhandled {
                        vcpu: id,
                        reason: format!("system event {other}"),
                    },
                }));
            }
            VcpuExit::Shutdown => {
                stats.inc(ExitKind::Shutdown);
                Fatal::TripleFault
            }
            VcpuExit::InternalError => Fatal::Internal,
            VcpuExit::FailEntry(reason, cpu) => Fatal::Other(format!(
                "KVM entry failure: hardware reason {reason:#x} on cpu {cpu}"
            )),
            other => Fatal::Other(format!("unhandled KVM exit {other:?}")),
        };
        let reason = match fatal {
            Fatal::TripleFault => {
                log::error!(
                    "vcpu{id}: triple fault\n{}",
                    diag::dump(&self.fd, &self.mem)
                );
                return Ok(Some(VmExit::TripleFault { vcpu: id }));
            }
            Fatal::Internal => {
                let (suberror, data) = internal_error(&mut self.fd);
                if self.workarounds.emulated_kernel {
                    match emulate::handle(&self.fd, &self.mem, suberror) {
                        Some(Emulated::Int3) => {
                            stats.inc(ExitKind::EmulatedInt3);
                            return Ok(None);
                        }
                        Some(Emulated::Fwait | Emulated::FwaitFault) => {
                            stats.inc(ExitKind::EmulatedFwait);
                            return Ok(None);
                        }
                        Some(Emulated::Mxcsr) => {
                            stats.inc(ExitKind::EmulatedMxcsr);
                            return Ok(None);
                        }
                        None => {}
                    }
                }
                format!(
                    "KVM internal error: {} (data {data:x?})",
                    suberror_name(suberror)
                )
            }
            Fatal::Other(reason) => reason,
        };
        stats.inc(ExitKind::Other);
        log::error!("vcpu{id}: {reason}\n{}", diag::dump(&self.fd, &self.mem));
        Ok(Some(VmExit::Unhandled { vcpu: id, reason }))
    }
}

/// What one KVM_RUN came to.
enum Step {
    /// An exit that was served; the guest may go on.
    Continue,
    /// KVM_RUN returned before any exit (a kick, or immediate_exit).
    Interrupted,
    /// The VM must stop.
    Stop(VmExit),
}

/// KVM_RUN was interrupted before the guest made an exit.
struct Interrupted;

enum Fatal {
    TripleFault,
    Internal,
    Other(String),
}

fn internal_error(fd: &mut VcpuFd) -> (u32, Vec<u64>) {
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
    // active member of the exit union, as KVM's ABI specifies.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    (internal.suberror, internal.data[..n].to_vec())
}

fn suberror_name(suberror: u32) -> String {
    match suberror {
        1 => "emulation failure".to_string(),
        2 => "simultaneous exception".to_string(),
        3 => "delivery event".to_string(),
        4 => "unexpected exit reason".to_string(),
        other => format!("suberror {other}"),
    }
}

/// Local APIC LINT0 = ExtINT (the PIC), LINT1 = NMI, as firmware leaves them.
fn set_lint(fd: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_NMI: u32 = 0x4;
    const APIC_MODE_EXTINT: u32 = 0x7;
    let mut lapic = fd.get_lapic()?;
    // The register page is `c_char`s; a register is a little-endian u32.
    let mut set = |offset: usize, mode: u32| {
        let reg = &mut lapic.regs[offset..offset + 4];
        let mut bytes = [0u8; 4];
        for (b, r) in bytes.iter_mut().zip(reg.iter()) {
            *b = *r as u8;
        }
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (r, b) in reg.iter_mut().zip(value.to_le_bytes()) {
            *r = b as _;
        }
    };
    set(APIC_LVT0, APIC_MODE_EXTINT);
    set(APIC_LVT1, APIC_MODE_NMI);
    fd.set_lapic(&lapic)
}

/// A running vCPU thread.
pub struct VcpuHandle {
    id: u8,
    thread: Option<JoinHandle<()>>,
    control: Arc<VcpuControl>,
}

impl VcpuHandle {
    /// The vCPU index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The shared control block.
    pub fn control(&self) -> &Arc<VcpuControl> {
        &self.control
    }

    /// Brings the thread out of KVM_RUN so it sees a new request.
    pub fn kick(&self) {
        if let Some(t) = &self.thread {
            if self.control.activity() != Activity::Exited {
                if let Err(e) = t.kill(kick_signal()) {
                    log::debug!("vcpu{}: kick: {e}", self.id);
                }
            }
        }
    }

    /// Asks the thread to exit, kicks it, and joins it.
    pub fn stop(&mut self) {
        self.control.request(Request::Exit);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.control.activity() != Activity::Exited && std::time::Instant::now() < deadline {
            self.kick();
            self.control.wait_for(
                |a| a == Activity::Exited,
                std::time::Duration::from_millis(10),
            );
        }
        if self.control.activity() == Activity::Exited {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            log::warn!(
                "vcpu{} did not leave KVM_RUN; abandoning its thread",
                self.id
            );
        }
    }
}

impl Pausable for VcpuHandle {
    fn name(&self) -> String {
        format!("vcpu{}", self.id)
    }

    /// The kick brings the thread out of KVM_RUN (or makes its next KVM_RUN
    /// return at once) so it reaches its safe point promptly.
    fn request_pause(&self) {
        self.control.request(Request::Pause);
        self.kick();
    }

    fn wait_paused(&self, deadline: Instant) -> bool {
        self.control
            .wait_for(|a| a != Activity::Running, pause::remaining(deadline))
    }

    fn resume(&self) {
        self.control.request(Request::Run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_summary_lists_every_counter() {
        let s = ExitStats::default();
        s.inc(ExitKind::MmioWrite);
        s.inc(ExitKind::MmioWrite);
        s.inc(ExitKind::IoOut);
        let text = s.summary();
        assert!(
            text.starts_with("io_in=0 io_out=1 mmio_read=0 mmio_write=2"),
            "{text}"
        );
        assert_eq!(s.snapshot()["mmio_write"], 2);
        assert_eq!(s.snapshot().len(), EXIT_KINDS.len());
    }
}
