//! Seccomp: one system-call allowlist per kind of VMM thread, installed
//! by each thread itself once set-up is over and before the guest runs.
//!
//! Like Firecracker, the lists are compiled with rust-vmm's `seccompiler`
//! and are as narrow as the thread's job: a vCPU thread may run KVM_RUN
//! and the handful of vCPU ioctls the exit handlers and the stall watchdog
//! use, but cannot open a file, create a socket or execute a program. The
//! ioctls are filtered by request number; file descriptors are not (they
//! are known only at run time), except where the main thread removes its
//! API socket (only in the socket's own directory, see
//! [`ThreadFilters::main`]).
//!
//! A syscall outside the list is trapped (SIGSYS), not killed outright
//! (Firecracker's SECCOMP_RET_KILL_PROCESS): the trap handler writes one
//! line naming the thread kind and the syscall number to stderr and to the
//! exit file, then ends the process with [`EXIT_SECCOMP`]. The control
//! plane then reports a clear reason in the instance's state reason,
//! where a kill would leave only "killed by signal 31" — or nothing at all
//! to a restarted control plane that is not the VMM's parent. The trap
//! costs nothing in safety: the forbidden call never runs, whatever the
//! handler does; a thread that blocks SIGSYS is killed by the kernel
//! instead.
//!
//! The lists were found by running the VMM's tests (tiny guests and a real
//! kernel with virtio-net, -blk, -rng and -vsock) under `strace -f` and
//! then with the filters on; glibc details that would otherwise reach a
//! filtered thread (malloc reading `/sys/devices/system/cpu/online` when a
//! thread first needs an arena) are settled in [`prepare_process`].

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use ec2lab_vmm_api::exit::EXIT_SECCOMP;

/// Errors compiling or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule or filter was rejected by seccompiler (a bug in this module).
    #[error("cannot compile the {kind} thread's seccomp filter: {source}")]
    Compile {
        /// The thread kind.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the {kind} thread's seccomp filter: {source}")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The kinds of VMM thread, each with its own allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: VM state, the API's requests, shutdown.
    Main,
    /// A vCPU thread: KVM_RUN and the exit handlers (PIO, MMIO, devices'
    /// registers).
    Vcpu,
    /// The virtio device event thread: queues, tap, disk files, vsock.
    Devices,
    /// The control API server thread and the HTTP server's own threads.
    Api,
    /// The signal watcher and the console input thread.
    Helper,
}

impl ThreadKind {
    /// The name used in messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Vcpu => "vcpu",
            Self::Devices => "devices",
            Self::Api => "api",
            Self::Helper => "helper",
        }
    }

    /// Parses [`Self::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Main,
            Self::Vcpu,
            Self::Devices,
            Self::Api,
            Self::Helper,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The environment variable that makes a thread try a forbidden syscall
/// (`socket(AF_INET, …)`) right after installing its filter, to prove the
/// filter is live. Only whoever starts the VMM sets its environment, so a
/// guest cannot reach this; the worst it does is stop the VMM it is set
/// for.
pub const SELF_TEST_ENV: &str = "EC2LAB_VMM_SECCOMP_SELF_TEST";

/// What the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Whether filters are installed (`--no-seccomp` turns them off, for
    /// debugging only).
    pub enabled: bool,
    /// The thread kind that makes a forbidden call after installing its
    /// filter ([`SELF_TEST_ENV`]).
    pub self_test: Option<ThreadKind>,
}

impl Policy {
    /// Filters on, self-test as the environment says.
    pub fn from_env(enabled: bool) -> Self {
        let self_test = std::env::var(SELF_TEST_ENV)
            .ok()
            .and_then(|name| ThreadKind::from_name(&name));
        Self { enabled, self_test }
    }

    /// No filters (unit tests, `--no-seccomp`).
    pub const fn disabled() -> Self {
        Self {
            enabled: false,
            self_test: None,
        }
    }
}

/// One thread's filter, handed to the code that spawns the thread; the
/// thread calls [`ThreadFilter::apply`] when its set-up is done.
#[derive(Clone, Debug)]
pub struct ThreadFilter {
    kind: ThreadKind,
    program: Option<Arc<BpfProgram>>,
    self_test: bool,
}

impl ThreadFilter {
    /// No filter: the thread runs unconfined (tests, `--no-seccomp`).
    pub fn none(kind: ThreadKind) -> Self {
        Self {
            kind,
            program: None,
            self_test: false,
        }
    }

    /// Installs the filter on the calling thread (and so on every thread it
    /// spawns from now on). Does nothing without a filter.
    pub fn apply(&self) -> Result<(), SeccompError> {
        let Some(program) = &self.program else {
            return Ok(());
        };
        THREAD_KIND.with(|k| k.set(Some(self.kind)));
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
            kind: self.kind,
            source,
        })?;
        if self.self_test {
            log::warn!(
                "{SELF_TEST_ENV}: the {} thread now makes a forbidden system call",
                self.kind
            );
            // SAFETY: socket(2) with constant arguments; the filter traps
            // it before it runs, and the result is not used.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: `fd` was just returned by socket(2) and is ours.
                unsafe { libc::close(fd) };
            }
        }
        Ok(())
    }

    /// [`Self::apply`] for threads with no way to report to the main
    /// loop: a thread must never run on unconfined when a filter was asked
    /// for, so failing to install one ends the VMM (it cannot happen once
    /// the kernel accepted the first filter; the lists are fixed).
    pub fn apply_or_exit(&self) {
        if let Err(e) = self.apply() {
            log::error!("{e}");
            std::process::exit(crate::exit::EXIT_VMM_ERROR);
        }
    }

    /// Whether a filter will be installed.
    pub fn is_enabled(&self) -> bool {
        self.program.is_some()
    }
}

/// The compiled filters of every thread kind but the main thread's, which
/// depends on the API socket's directory and is compiled by
/// [`ThreadFilters::main`] when the threads are running.
#[derive(Clone, Debug)]
pub struct ThreadFilters {
    policy: Policy,
    vcpu: Option<Arc<BpfProgram>>,
    devices: Option<Arc<BpfProgram>>,
    api: Option<Arc<BpfProgram>>,
    helper: Option<Arc<BpfProgram>>,
}

impl ThreadFilters {
    /// Compiles the filters (none when the policy disables them).
    pub fn new(policy: Policy) -> Result<Self, SeccompError> {
        if !policy.enabled {
            return Ok(Self {
                policy,
                vcpu: None,
                devices: None,
                api: None,
                helper: None,
            });
        }
        let compile = |kind| {
            compile(kind, rules(kind, MainDirs::default()))
                .map(Arc::new)
                .map(Some)
        };
        Ok(Self {
            policy,
            vcpu: compile(ThreadKind::Vcpu)?,
            devices: compile(ThreadKind::Devices)?,
            api: compile(ThreadKind::Api)?,
            helper: compile(ThreadKind::Helper)?,
        })
    }

    /// The filter of a thread of `kind` (not [`ThreadKind::Main`]).
    pub fn for_thread(&self, kind: ThreadKind) -> ThreadFilter {
        let program = match kind {
            ThreadKind::Main => None,
            ThreadKind::Vcpu => self.vcpu.clone(),
            ThreadKind::Devices => self.devices.clone(),
            ThreadKind::Api => self.api.clone(),
            ThreadKind::Helper => self.helper.clone(),
        };
        ThreadFilter {
            kind,
            self_test: program.is_some() && self.policy.self_test == Some(kind),
            program,
        }
    }

    /// The main thread's filter, which may touch files only through the
    /// directories in `dirs`.
    pub fn main(&self, dirs: MainDirs) -> Result<ThreadFilter, SeccompError> {
        let program = if self.policy.enabled {
            Some(Arc::new(compile(
                ThreadKind::Main,
                rules(ThreadKind::Main, dirs),
            )?))
        } else {
            None
        };
        Ok(ThreadFilter {
            kind: ThreadKind::Main,
            self_test: program.is_some() && self.policy.self_test == Some(ThreadKind::Main),
            program,
        })
    }

    /// How many syscalls each kind's list allows (for the log and docs).
    pub fn sizes() -> Vec<(ThreadKind, usize)> {
        [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Devices,
            ThreadKind::Api,
            ThreadKind::Helper,
        ]
        .into_iter()
        .map(|k| {
            let dirs = MainDirs {
                api: Some(0),
                snapshot: Some(1),
            };
            (k, rules(k, dirs).len())
        })
        .collect()
    }
}

fn compile(kind: ThreadKind, rules: Rules) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Compile { kind, source };
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

// ioctl request numbers (asm-generic/ioctl.h): direction, size, type, number.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    const KVMIO: u64 = 0xAE;
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// The vCPU ioctls used once the guest runs: KVM_RUN; the registers, FPU
/// and event state the instruction emulation for kernel-emulating hosts
/// reads and writes (KVM_SET_SREGS sets CR2 for a #PF it raises);
/// KVM_TRANSLATE and the MP state for the stall watchdog's samples and the
/// crash dumps.
const KVM_VCPU_RUN_IOCTLS: [u64; 11] = {
    use kvm_bindings::kvm_vcpu_events;
    use kvm_bindings::{kvm_fpu, kvm_mp_state, kvm_regs, kvm_sregs, kvm_translation};
    use std::mem::size_of;
    [
        ioc(IOC_NONE, 0x80, 0),                                        // KVM_RUN
        ioc(IOC_READ, 0x81, size_of::<kvm_regs>()),                    // KVM_GET_REGS
        ioc(IOC_WRITE, 0x82, size_of::<kvm_regs>()),                   // KVM_SET_REGS
        ioc(IOC_READ, 0x83, size_of::<kvm_sregs>()),                   // KVM_GET_SREGS
        ioc(IOC_READ | IOC_WRITE, 0x85, size_of::<kvm_translation>()), // KVM_TRANSLATE
        ioc(IOC_READ, 0x8c, size_of::<kvm_fpu>()),                     // KVM_GET_FPU
        ioc(IOC_WRITE, 0x8d, size_of::<kvm_fpu>()),                    // KVM_SET_FPU
        ioc(IOC_READ, 0x98, size_of::<kvm_mp_state>()),                // KVM_GET_MP_STATE
        ioc(IOC_READ, 0x9f, size_of::<kvm_vcpu_events>()),             // KVM_GET_VCPU_EVENTS
        ioc(IOC_WRITE, 0xa0, size_of::<kvm_vcpu_events>()),            // KVM_SET_VCPU_EVENTS
        ioc(IOC_WRITE, 0x84, size_of::<kvm_sregs>()),                  // KVM_SET_SREGS
    ]
};

/// What a vCPU thread reads of itself when it parks for a pause, so that a
/// snapshot can save it (see `vstate::persist::save_vcpu`; registers, MP
/// state and events are in [`KVM_VCPU_RUN_IOCTLS`]).
const KVM_VCPU_SAVE_IOCTLS: [u64; 7] = {
    use kvm_bindings::{kvm_cpuid2, kvm_debugregs, kvm_lapic_state, kvm_msrs, kvm_xcrs, kvm_xsave};
    use std::mem::size_of;
    [
        ioc(IOC_READ | IOC_WRITE, 0x91, size_of::<kvm_cpuid2>()), // KVM_GET_CPUID2
        ioc(IOC_READ, 0xa4, size_of::<kvm_xsave>()),              // KVM_GET_XSAVE
        ioc(IOC_READ, 0xa6, size_of::<kvm_xcrs>()),               // KVM_GET_XCRS
        ioc(IOC_READ, 0xa1, size_of::<kvm_debugregs>()),          // KVM_GET_DEBUGREGS
        ioc(IOC_READ, 0x8e, size_of::<kvm_lapic_state>()),        // KVM_GET_LAPIC
        ioc(IOC_READ | IOC_WRITE, 0x88, size_of::<kvm_msrs>()),   // KVM_GET_MSRS
        ioc(IOC_NONE, 0xa3, 0),                                   // KVM_GET_TSC_KHZ
    ]
};

/// What the main thread reads of the VM for a snapshot (see
/// `vstate::persist::save_vm`).
const KVM_VM_SAVE_IOCTLS: [u64; 3] = {
    use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
    use std::mem::size_of;
    [
        ioc(IOC_READ, 0x9f, size_of::<kvm_pit_state2>()), // KVM_GET_PIT2
        ioc(IOC_READ, 0x7c, size_of::<kvm_clock_data>()), // KVM_GET_CLOCK
        ioc(IOC_READ | IOC_WRITE, 0x62, size_of::<kvm_irqchip>()), // KVM_GET_IRQCHIP
    ]
};

/// Sockets' non-blocking mode (std's `set_nonblocking`) and the tap's
/// offloads, which change when the guest (re)negotiates virtio-net.
const DEVICE_IOCTLS: [u64; 2] = [libc::FIONBIO, libc::TUNSETOFFLOAD];

/// Restoring the terminal the VMM put in raw mode.
const TERMINAL_IOCTLS: [u64; 4] = [libc::TCGETS, libc::TCSETS, libc::TCSETSW, libc::TCSETSF];

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    #[allow(clippy::expect_used)]
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

/// Rules allowing `syscall` when argument `arg` (32 bits) is one of `values`.
fn when_arg_is(arg: u8, values: &[u64]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|v| {
            #[allow(clippy::expect_used)]
            SeccompRule::new(vec![cond(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                *v,
            )])
            .expect("one condition")
        })
        .collect()
}

/// Adds rules for `syscall`, keeping an unconditional allow unconditional.
fn add(rules: &mut Rules, syscall: libc::c_long, more: Vec<SeccompRule>) {
    match rules.get_mut(&syscall) {
        Some(existing) if existing.is_empty() => {}
        Some(_) if more.is_empty() => {
            rules.insert(syscall, Vec::new());
        }
        Some(existing) => existing.extend(more),
        None => {
            rules.insert(syscall, more);
        }
    }
}

fn allow_all(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for s in syscalls {
        add(rules, *s, Vec::new());
    }
}

/// The directories the main thread reaches files through, opened before
/// any filter is installed.
#[derive(Clone, Copy, Debug, Default)]
pub struct MainDirs {
    /// Where the API server removes its socket (the only `unlinkat`).
    pub api: Option<i32>,
    /// Where `PUT /snapshot/create` writes (`snapshot::SnapshotDir`): the
    /// only directory files may be created and renamed in.
    pub snapshot: Option<i32>,
}

/// Writing a snapshot: files are created only in the snapshot directory
/// `fd`, with exactly the flags `snapshot::SnapshotDir` uses, sized,
/// written at offsets, synced, and renamed into place within it; the page
/// map and the restored memory file are read at offsets.
fn snapshot_files(rules: &mut Rules, fd: i32) {
    use libc::*;
    let dir = |arg| cond(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, fd as u64);
    let flags = crate::snapshot::CREATE_FLAGS as u64;
    #[allow(clippy::expect_used)]
    let create = SeccompRule::new(vec![
        dir(0),
        cond(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, flags),
    ])
    .expect("two conditions");
    add(rules, SYS_openat, vec![create]);
    for rename in [SYS_renameat, SYS_renameat2] {
        #[allow(clippy::expect_used)]
        let within = SeccompRule::new(vec![dir(0), dir(2)]).expect("two conditions");
        add(rules, rename, vec![within]);
    }
    allow_all(rules, &[SYS_ftruncate, SYS_pwrite64, SYS_fsync]);
    // Which pages to skip unread (`snapshot::residency`): the page map,
    // opened at start, and the data ranges of a restored VM's memory file.
    allow_all(rules, &[SYS_pread64, SYS_lseek]);
}

/// The allowlist of `kind`. `dirs` only matters for the main thread.
fn rules(kind: ThreadKind, dirs: MainDirs) -> Rules {
    use libc::*;
    let mut rules = Rules::new();
    // What Rust's std and glibc need in any thread: memory (malloc, thread
    // stacks, guard pages), locks and channels (futex), sleeping, logging
    // to stderr, dropping descriptors, the per-thread random keys of
    // HashMap, and ending the thread or the process.
    allow_all(
        &mut rules,
        &[
            SYS_brk,
            SYS_clock_gettime,
            SYS_clock_nanosleep,
            SYS_close,
            SYS_exit,
            SYS_exit_group,
            SYS_futex,
            SYS_getpid,
            SYS_getrandom,
            SYS_gettid,
            SYS_madvise,
            SYS_mmap,
            SYS_mprotect,
            SYS_mremap,
            SYS_munmap,
            SYS_nanosleep,
            SYS_restart_syscall,
            SYS_rt_sigprocmask,
            SYS_rt_sigreturn,
            SYS_sched_yield,
            SYS_sigaltstack,
            SYS_write,
        ],
    );
    // std checks a descriptor is open before closing it (debug builds);
    // the other two read and set a descriptor's flags.
    add(
        &mut rules,
        SYS_fcntl,
        when_arg_is(1, &[F_GETFD as u64, F_GETFL as u64, F_SETFL as u64]),
    );
    // signal-hook's handler, in whichever thread the signal lands, wakes
    // the signal thread with send(…, MSG_DONTWAIT).
    add(
        &mut rules,
        SYS_sendto,
        when_arg_is(3, &[MSG_DONTWAIT as u64]),
    );
    // A panic aborts (panic = "abort"): raise(SIGABRT).
    add(&mut rules, SYS_tgkill, when_arg_is(2, &[SIGABRT as u64]));

    match kind {
        ThreadKind::Main => {
            // Kicking vCPUs out of KVM_RUN (pause, watchdog samples, stop).
            add(
                &mut rules,
                SYS_tgkill,
                when_arg_is(2, &[crate::vstate::vcpu::kick_signal() as u64]),
            );
            let mut ioctls = TERMINAL_IOCTLS.to_vec();
            ioctls.extend(KVM_VM_SAVE_IOCTLS);
            add(&mut rules, SYS_ioctl, when_arg_is(1, &ioctls));
            // PUT /metadata re-arms the metadata service's TCP timer, so
            // what the new document ends (connections, when the endpoint
            // is turned off) leaves at once.
            allow_all(&mut rules, &[SYS_timerfd_settime]);
            if let Some(fd) = dirs.snapshot {
                snapshot_files(&mut rules, fd);
            }
            if let Some(fd) = dirs.api {
                #[allow(clippy::expect_used)]
                let rule = SeccompRule::new(vec![
                    cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, fd as u64),
                    cond(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0),
                ])
                .expect("two conditions");
                add(&mut rules, SYS_unlinkat, vec![rule]);
            }
        }
        ThreadKind::Vcpu => {
            // A guest's register writes activate devices (epoll
            // registration, tap offloads) and raise interrupts (eventfd
            // writes, allowed above).
            let mut ioctls = KVM_VCPU_RUN_IOCTLS.to_vec();
            ioctls.extend(KVM_VCPU_SAVE_IOCTLS);
            ioctls.extend(DEVICE_IOCTLS);
            add(&mut rules, SYS_ioctl, when_arg_is(1, &ioctls));
            // Activating a device serves its queues once from the vCPU
            // thread (virtio-net reads the frames that queued on the tap
            // while the driver set up), so a vCPU needs the devices' I/O.
            device_io(&mut rules);
            // The serial console's log is cut in place when it reaches its
            // cap (console::CappedLog), from the vCPU writing the port.
            allow_all(&mut rules, &[SYS_ftruncate]);
        }
        ThreadKind::Devices => device_io(&mut rules),
        ThreadKind::Api => {
            add(&mut rules, SYS_ioctl, when_arg_is(1, &[FIONBIO]));
            add(
                &mut rules,
                SYS_fcntl,
                when_arg_is(1, &[F_DUPFD_CLOEXEC as u64]),
            );
            // tiny_http serves each connection from a pool of threads it
            // grows on demand: thread creation is allowed here (they
            // inherit this filter). clone3's flags are in memory and
            // cannot be checked; clone is held to CLONE_THREAD.
            #[allow(clippy::expect_used)]
            let thread_only = SeccompRule::new(vec![cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(CLONE_THREAD as u64),
                CLONE_THREAD as u64,
            )])
            .expect("one condition");
            add(&mut rules, SYS_clone, vec![thread_only]);
            allow_all(
                &mut rules,
                &[
                    SYS_accept4,
                    SYS_clone3,
                    SYS_getsockname,
                    SYS_poll,
                    SYS_prctl,
                    SYS_read,
                    SYS_recvfrom,
                    SYS_rseq,
                    SYS_sched_getaffinity,
                    SYS_set_robust_list,
                    SYS_shutdown,
                    SYS_writev,
                ],
            );
            add(&mut rules, SYS_sendto, Vec::new());
        }
        ThreadKind::Helper => {
            // Terminal input; the signal pipe.
            allow_all(&mut rules, &[SYS_read, SYS_recvfrom, SYS_poll]);
        }
    }
    rules
}

/// What serving virtio queues needs: the device event thread's list,
/// and part of a vCPU's (see above).
fn device_io(rules: &mut Rules) {
    use libc::*;
    add(rules, SYS_ioctl, when_arg_is(1, &DEVICE_IOCTLS));
    // vsock connects guest connections to the host's Unix sockets.
    add(rules, SYS_socket, when_arg_is(0, &[AF_UNIX as u64]));
    allow_all(
        rules,
        &[
            // Queue, interrupt and tap events; vsock connections; the
            // metadata service's TCP timer.
            SYS_epoll_ctl,
            SYS_epoll_pwait,
            SYS_epoll_wait,
            SYS_poll,
            SYS_ppoll,
            SYS_read,
            SYS_readv,
            SYS_timerfd_settime,
            SYS_writev,
            // Disk images.
            SYS_fallocate,
            SYS_fdatasync,
            SYS_fsync,
            SYS_lseek,
            SYS_pread64,
            SYS_preadv,
            SYS_preadv2,
            SYS_pwrite64,
            SYS_pwritev,
            SYS_pwritev2,
            // vsock's Unix sockets.
            SYS_accept4,
            SYS_connect,
            SYS_recvfrom,
            SYS_recvmsg,
            SYS_sendmsg,
            SYS_sendto,
            SYS_shutdown,
        ],
    );
}

thread_local! {
    /// This thread's kind, for the SIGSYS handler's message.
    static THREAD_KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// The exit file, opened before any filter (no thread may open files
/// afterwards), so the SIGSYS handler can record why the VMM stopped.
static EXIT_FD: AtomicI32 = AtomicI32::new(-1);

/// Process-wide set-up before any thread is filtered: records the exit
/// file's descriptor for the SIGSYS handler, installs that handler, and
/// caps glibc's malloc arenas so no thread's first allocation reads
/// `/sys/devices/system/cpu/online` (glibc does that to size its arena
/// limit unless one is set; it also bounds the VMM's memory overhead).
pub fn prepare_process(exit_fd: Option<i32>) -> Result<(), SeccompError> {
    EXIT_FD.store(exit_fd.unwrap_or(-1), Ordering::Release);
    // SAFETY: mallopt only changes glibc's allocator settings.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 4) };
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO
    // signature and only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// A small fixed buffer for composing the handler's message without
/// allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) -> &mut Self {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    fn push_num(&mut self, mut n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The reason recorded for a forbidden call, the same in the log and the
/// exit file.
fn reason(line: &mut Line, kind: Option<ThreadKind>, syscall: u64) {
    line.push(b"seccomp: the ")
        .push(kind.map_or("unknown", ThreadKind::name).as_bytes())
        .push(b" thread made system call ")
        .push_num(syscall)
        .push(b", which its allowlist forbids");
}

/// The offset of `si_syscall` in a SIGSYS siginfo (x86_64): signo, errno,
/// code, padding, then `si_call_addr` (8 bytes), then `si_syscall`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers,
    // and for SIGSYS from seccomp its si_syscall is an int at this offset.
    let syscall = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let kind = THREAD_KIND.with(Cell::get);
    let mut text = Line::new();
    reason(&mut text, kind, syscall as u64);

    let mut log = Line::new();
    log.push(b"ec2lab-vmm: error: ")
        .push(text.as_bytes())
        .push(b"\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by
    // every thread's filter; the buffers outlive the calls.
    unsafe {
        libc::write(2, log.as_bytes().as_ptr().cast(), log.len);
        let fd = EXIT_FD.load(Ordering::Acquire);
        if fd >= 0 {
            let mut record = Line::new();
            record
                .push(b"{\"code\":")
                .push_num(EXIT_SECCOMP as u64)
                .push(b",\"reason\":\"")
                .push(text.as_bytes())
                .push(b"\"}\n");
            libc::write(fd, record.as_bytes().as_ptr().cast(), record.len);
        }
        libc::_exit(EXIT_SECCOMP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        // The values from <linux/kvm.h> on x86_64, as strace decodes them.
        assert_eq!(KVM_VCPU_RUN_IOCTLS[0], 0xae80, "KVM_RUN");
        assert_eq!(KVM_VCPU_RUN_IOCTLS[1], 0x8090_ae81, "KVM_GET_REGS");
        assert_eq!(KVM_VCPU_RUN_IOCTLS[2], 0x4090_ae82, "KVM_SET_REGS");
        assert_eq!(KVM_VCPU_RUN_IOCTLS[3], 0x8138_ae83, "KVM_GET_SREGS");
        assert_eq!(KVM_VCPU_RUN_IOCTLS[4], 0xc018_ae85, "KVM_TRANSLATE");
        assert_eq!(KVM_VCPU_RUN_IOCTLS[5], 0x81a0_ae8c, "KVM_GET_FPU");
        assert_eq!(KVM_VCPU_RUN_IOCTLS[7], 0x8004_ae98, "KVM_GET_MP_STATE");
        assert_eq!(KVM_VCPU_RUN_IOCTLS[8], 0x8040_ae9f, "KVM_GET_VCPU_EVENTS");
        assert_eq!(KVM_VCPU_RUN_IOCTLS[10], 0x4138_ae84, "KVM_SET_SREGS");
        assert_eq!(KVM_VCPU_SAVE_IOCTLS[0], 0xc008_ae91, "KVM_GET_CPUID2");
        assert_eq!(KVM_VCPU_SAVE_IOCTLS[1], 0x9000_aea4, "KVM_GET_XSAVE");
        assert_eq!(KVM_VCPU_SAVE_IOCTLS[2], 0x8188_aea6, "KVM_GET_XCRS");
        assert_eq!(KVM_VCPU_SAVE_IOCTLS[3], 0x8080_aea1, "KVM_GET_DEBUGREGS");
        assert_eq!(KVM_VCPU_SAVE_IOCTLS[4], 0x8400_ae8e, "KVM_GET_LAPIC");
        assert_eq!(KVM_VCPU_SAVE_IOCTLS[5], 0xc008_ae88, "KVM_GET_MSRS");
        assert_eq!(KVM_VCPU_SAVE_IOCTLS[6], 0xaea3, "KVM_GET_TSC_KHZ");
        assert_eq!(KVM_VM_SAVE_IOCTLS[0], 0x8070_ae9f, "KVM_GET_PIT2");
        assert_eq!(KVM_VM_SAVE_IOCTLS[1], 0x8030_ae7c, "KVM_GET_CLOCK");
        assert_eq!(KVM_VM_SAVE_IOCTLS[2], 0xc208_ae62, "KVM_GET_IRQCHIP");
    }

    #[test]
    fn every_thread_kind_compiles_and_none_may_open_files_but_snapshots_or_execute() {
        for kind in [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Devices,
            ThreadKind::Api,
            ThreadKind::Helper,
        ] {
            let r = rules(
                kind,
                MainDirs {
                    api: Some(3),
                    snapshot: Some(4),
                },
            );
            compile(kind, r.clone()).expect("compiles");
            // The main thread creates snapshot files, in one directory only.
            let openat = r.get(&libc::SYS_openat);
            match kind {
                ThreadKind::Main => assert_eq!(openat.map(Vec::len), Some(1), "{kind}"),
                _ => assert!(openat.is_none(), "{kind}: openat"),
            }
            for forbidden in [
                libc::SYS_open,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_unlink,
            ] {
                assert!(!r.contains_key(&forbidden), "{kind}: {forbidden}");
            }
        }
    }

    #[test]
    fn only_device_code_may_create_sockets_and_only_unix_ones() {
        for kind in [ThreadKind::Main, ThreadKind::Api, ThreadKind::Helper] {
            assert!(
                !rules(kind, MainDirs::default()).contains_key(&libc::SYS_socket),
                "{kind}"
            );
        }
        for kind in [ThreadKind::Devices, ThreadKind::Vcpu] {
            assert_eq!(
                rules(kind, MainDirs::default())[&libc::SYS_socket].len(),
                1,
                "{kind}"
            );
        }
    }

    #[test]
    fn allowlist_sizes() {
        // Printed for the docs (`cargo test allowlist_sizes -- --nocapture`).
        for (kind, n) in ThreadFilters::sizes() {
            println!("{kind}: {n} system calls");
            assert!(n > 20, "{kind}");
        }
    }

    #[test]
    fn the_handler_reason_names_the_thread_and_the_call() {
        let mut line = Line::new();
        reason(&mut line, Some(ThreadKind::Api), 41);
        assert_eq!(
            std::str::from_utf8(line.as_bytes()).expect("ascii"),
            "seccomp: the api thread made system call 41, which its allowlist forbids"
        );
    }

    #[test]
    fn disabled_policy_compiles_nothing() {
        let filters = ThreadFilters::new(Policy::disabled()).expect("nothing to compile");
        assert!(!filters.for_thread(ThreadKind::Vcpu).is_enabled());
        assert!(!filters
            .main(MainDirs::default())
            .expect("main")
            .is_enabled());
    }
}
