//! `ec2lab-vmm`: boot a kernel in a KVM VM from flags or a JSON config.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Parser;
use ec2lab_vmm::config::{
    self, BzImageDecompression, CpuTemplate, DiskConfig, HotplugMemoryConfig, NetConfig, VmConfig,
    VsockConfig,
};
use ec2lab_vmm::exit::{ExitRecord, EXIT_BAD_INPUT, EXIT_VMM_ERROR};
use ec2lab_vmm::{builder, rlimit, seccomp};
use ec2lab_vmm_api::flags;

/// Boots a Linux kernel (ELF vmlinux with or without a PVH note, or bzImage)
/// in a KVM virtual machine and prints its serial console.
///
/// Exit status: 0 guest powered off, 1 VMM error, 2 bad input, 3 guest
/// rebooted, 4 triple fault, 5 unhandled KVM exit or internal error,
/// 6 stopped through the API, 7 a thread made a system call its seccomp
/// allowlist forbids, 128+N stopped by signal N (143 for SIGTERM).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// JSON VM config (same fields as the flags); excludes the other VM flags.
    #[arg(long = flags::CONFIG, conflicts_with_all = ["kernel", "initrd", "cmdline", "vcpus", "memory_mib", "api_sock", "serial_out", "cpu_template", "hide_tsc_leaves", "bzimage_decompression", "stall_timeout_secs", "disk", "net", "rng", "vsock", "snapshot_dir", "jail"])]
    config: Option<PathBuf>,
    /// Kernel image.
    #[arg(long, required_unless_present = "config")]
    kernel: Option<PathBuf>,
    /// Initrd / initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0")]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// Control API socket (HTTP/JSON over a Unix socket).
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Write the serial console here instead of stdout.
    #[arg(long)]
    serial_out: Option<PathBuf>,
    /// Host adaptation: auto-detect, none, or force the kernel-emulating-host workarounds.
    #[arg(long, value_parser = cpu_template_parser(), default_value_t = CpuTemplate::Auto)]
    cpu_template: CpuTemplate,
    /// Withhold the TSC frequency CPUID leaves (0x15, 0x40000010), as AMD
    /// hosts do for 0x15: exercises the boot path of AMD guests anywhere.
    #[arg(long)]
    hide_tsc_leaves: bool,
    /// Who decompresses a bzImage's kernel.
    #[arg(long, value_parser = bzimage_decompression_parser(), default_value_t = BzImageDecompression::Auto)]
    bzimage_decompression: BzImageDecompression,
    /// Report the guest as stalled (API `stall`, log line) when a vCPU has
    /// spent this long running guest kernel code with no exit and no serial
    /// output; 0 turns the watchdog off.
    #[arg(long, default_value_t = config::DEFAULT_STALL_TIMEOUT_SECS)]
    stall_timeout_secs: u64,
    /// A virtio-blk disk: PATH or PATH,ro (repeatable; the first is /dev/vda).
    #[arg(long)]
    disk: Vec<DiskConfig>,
    /// A virtio-net card on an existing tap: tap=NAME[,mac=MAC] (repeatable; the first is eth0).
    #[arg(long)]
    net: Vec<NetConfig>,
    /// Give the guest a virtio-rng entropy device.
    #[arg(long)]
    rng: bool,
    /// A virtio-vsock device: cid=N,uds=PATH (host side: connect to PATH and
    /// send "CONNECT <port>"; guest connections to port P go to PATH_P).
    #[arg(long)]
    vsock: Option<VsockConfig>,
    /// Memory the guest can be given while it runs (virtio-mem), beyond
    /// --memory-mib: total=MIB[,block=MIB][,requested=MIB]; request more
    /// later with `PATCH /hotplug/memory`.
    #[arg(long)]
    hotplug_memory: Option<HotplugMemoryConfig>,
    /// An existing directory `PUT /snapshot/create` writes the paused VM
    /// into (files `state` and `memory`).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// Once the VM is built, confine the VMM to this directory (a mount
    /// namespace whose root it is, as Firecracker's jailer does); the
    /// --api-sock and vsock sockets must be inside it. Needs root.
    #[arg(long)]
    jail: Option<PathBuf>,
    /// Start from the snapshot in this directory instead of booting the
    /// kernel; the VM (from --config or the flags) must have the same vCPUs,
    /// memory and devices, and gets new backends for them. The guest runs
    /// on at once from where it was paused.
    #[arg(long = flags::RESTORE_FROM)]
    restore_from: Option<PathBuf>,
    /// When the VMM ends, write {"code": N, "reason": "..."} here: how a
    /// supervisor that is not the parent (a restarted control plane)
    /// learns why an instance stopped.
    #[arg(long = flags::EXIT_FILE)]
    exit_file: Option<PathBuf>,
    /// Run without the seccomp filters (for debugging only: the VMM's
    /// threads may then make any system call).
    #[arg(long)]
    no_seccomp: bool,
}

/// `--cpu-template`: the contract crate's names, each explained in
/// `--help` (its type cannot derive clap's `ValueEnum`: that crate stays
/// serde-only).
fn cpu_template_parser() -> impl TypedValueParser<Value = CpuTemplate> {
    let values = CpuTemplate::ALL.map(|template| {
        let help = match template {
            CpuTemplate::Auto => "Detect the host and apply workarounds only where needed",
            CpuTemplate::None => {
                "Never apply host workarounds (the right choice on bare-metal KVM)"
            }
            CpuTemplate::EmulatedKernel => {
                "Always apply the workarounds for KVM hosts that emulate guest kernel mode"
            }
        };
        PossibleValue::new(template.name()).help(help)
    });
    PossibleValuesParser::new(values).try_map(|name| name.parse::<CpuTemplate>())
}

/// `--bzimage-decompression`, explained value by value as `--cpu-template` is.
fn bzimage_decompression_parser() -> impl TypedValueParser<Value = BzImageDecompression> {
    let values = BzImageDecompression::ALL.map(|choice| {
        let help = match choice {
            BzImageDecompression::Auto => {
                "The VMM on hosts that emulate guest kernel mode (minutes faster there), the guest elsewhere (keeps KASLR)"
            }
            BzImageDecompression::Guest => "The kernel's own decompressor, as on real hardware",
            BzImageDecompression::Vmm => {
                "The VMM (gzip, xz, lz4, zstd), which loads the ELF inside; no KASLR"
            }
        };
        PossibleValue::new(choice.name()).help(help)
    });
    PossibleValuesParser::new(values).try_map(|name| name.parse::<BzImageDecompression>())
}

impl Args {
    fn into_config(self) -> Result<VmConfig, config::ConfigError> {
        if let Some(path) = &self.config {
            return config::from_file(path);
        }
        Ok(VmConfig {
            kernel: self.kernel.unwrap_or_default(),
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            api_sock: self.api_sock,
            serial_out: self.serial_out,
            cpu_template: self.cpu_template,
            hide_tsc_leaves: self.hide_tsc_leaves,
            bzimage_decompression: self.bzimage_decompression,
            stall_timeout_secs: self.stall_timeout_secs,
            disks: self.disk,
            nets: self.net,
            rng: self.rng,
            vsock: self.vsock,
            hotplug_memory: self.hotplug_memory,
            // Instance metadata comes only with a config file.
            metadata: None,
            snapshot_dir: self.snapshot_dir,
            jail: self.jail,
        })
    }
}

fn init_logging() {
    // virtio-queue reports every malformed ring at error level; a guest
    // could flood our stderr with those, so they stay off unless asked for.
    env_logger::Builder::from_env(
        env_logger::Env::new().filter_or("EC2LAB_VMM_LOG", "info,virtio_queue=off"),
    )
    .format(|buf, record| {
        use std::io::Write;
        writeln!(
            buf,
            "ec2lab-vmm: {}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        )
    })
    .init();
}

fn main() -> ExitCode {
    // A panic anywhere (a vCPU, the device thread, the API thread) ends the
    // VMM at once: a half-dead VMM must never go on serving a guest. The
    // workspace builds with unwinding so that the control plane can answer
    // a panicking API handler with InternalError; the VMM opts out here.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("ec2lab-vmm: {first}");
            return ExitCode::from(EXIT_BAD_INPUT as u8);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    init_logging();
    // Opened now, before any seccomp filter: no thread may open a file
    // once the guest runs, and the SIGSYS handler records its reason here.
    let mut exit_file = args.exit_file.as_ref().and_then(|path| {
        std::fs::File::create(path)
            .map_err(|e| log::error!("cannot open exit file {}: {e}", path.display()))
            .ok()
    });
    let exit_fd = exit_file.as_ref().map(AsRawFd::as_raw_fd);
    if let Err(e) = rlimit::apply() {
        eprintln!("ec2lab-vmm: error: {e}");
        return ExitCode::from(EXIT_VMM_ERROR as u8);
    }
    if let Err(e) = seccomp::prepare_process(exit_fd) {
        eprintln!("ec2lab-vmm: error: {e}");
        return ExitCode::from(EXIT_VMM_ERROR as u8);
    }
    let (code, reason) = run(args);
    if let Some(file) = &mut exit_file {
        let record = ExitRecord { code, reason };
        let text = serde_json::to_string(&record).unwrap_or_default();
        if let Err(e) = file.write_all(format!("{text}\n").as_bytes()) {
            log::error!("cannot write exit file: {e}");
        }
    }
    ExitCode::from(code as u8)
}

/// Builds and runs the VM; returns the exit status and why.
fn run(args: Args) -> (i32, String) {
    let policy = seccomp::Policy::from_env(!args.no_seccomp);
    let restore_from = args.restore_from.clone();
    let vmm = match args
        .into_config()
        .map_err(builder::BuildError::from)
        .and_then(|c| builder::build(&c, policy, restore_from.as_deref()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ec2lab-vmm: error: {e}");
            let code = if e.is_bad_input() {
                EXIT_BAD_INPUT
            } else {
                EXIT_VMM_ERROR
            };
            return (code, e.to_string());
        }
    };
    let exit = vmm.run();
    log::info!("{exit}");
    (exit.exit_code(), exit.to_string())
}
