use std::path::Path;

use kvm_bindings::{kvm_msr_entry, kvm_xsave};

use super::*;
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::vstate::persist::{VcpuState, VmState};

fn machine() -> Machine {
    Machine {
        vendor: "AMD".into(),
        emulated_kernel: true,
        vcpus: 2,
        memory_bytes: 256 << 20,
        hotplug_bytes: 0,
        devices: vec!["block".into(), "net".into(), "rng".into()],
    }
}

fn vcpu(rip: u64) -> VcpuState {
    let mut xsave = kvm_xsave::default();
    xsave.region[0] = 0x037f;
    xsave.region[1023] = 0xdead_beef;
    let mut state = VcpuState {
        cpuid: vec![Default::default(); 3],
        mp_state: Default::default(),
        regs: Default::default(),
        sregs: Default::default(),
        xsave,
        xcrs: None,
        debugregs: Default::default(),
        lapic: Default::default(),
        msrs: vec![kvm_msr_entry {
            index: 0x10,
            data: 123_456_789,
            ..Default::default()
        }],
        events: Default::default(),
        tsc_khz: Some(2_596_126),
    };
    state.regs.rip = rip;
    state.regs.r12 = 42;
    state.lapic.regs[0x20] = 1;
    state
}

fn snapshot() -> Snapshot {
    let serial = SerialDevice::new(
        vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd"),
        Box::new(std::io::sink()),
    );
    struct NoReset;
    impl crate::devices::i8042::ResetHandler for NoReset {
        fn reset(&mut self) {}
    }
    let kbd = I8042::new(
        vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd"),
        Box::new(NoReset),
    );
    let mut vm = VmState {
        pit: Default::default(),
        clock: Default::default(),
        irqchips: vec![Default::default(); 3],
    };
    vm.clock.clock = 987_654_321;
    Snapshot {
        machine: machine(),
        memory_id: 0x1234_5678_9abc_def0,
        cmdline: "console=ttyS0".into(),
        devices_on_cmdline: false,
        vm,
        vcpus: vec![vcpu(0x1000), vcpu(0x2000)],
        serial: serial.snapshot(),
        i8042: kbd.snapshot(),
        rtc: crate::devices::cmos::CmosSnapshot { index: 0x0b },
        virtio: Vec::new(),
    }
}

fn path() -> &'static Path {
    Path::new("/snap/state")
}

#[test]
fn state_round_trips_through_the_file_format() {
    let original = snapshot();
    let bytes = encode(&original).expect("encode");
    assert_eq!(&bytes[..8], MAGIC);
    let back = decode(&bytes, path()).expect("decode");
    assert_eq!(back.machine, original.machine);
    assert_eq!(back.memory_id, original.memory_id);
    assert_eq!(back.vm.clock.clock, 987_654_321);
    assert_eq!(back.vm.irqchips.len(), 3);
    assert_eq!(back.vcpus.len(), 2);
    assert_eq!(back.vcpus[1].regs.rip, 0x2000);
    assert_eq!(back.vcpus[0].regs.r12, 42);
    assert_eq!(back.vcpus[0].xsave.region[1023], 0xdead_beef);
    assert_eq!(back.vcpus[0].lapic.regs[0x20], 1);
    assert_eq!(back.vcpus[0].msrs[0].data, 123_456_789);
    assert_eq!(back.vcpus[0].tsc_khz, Some(2_596_126));
    assert_eq!(back.serial, original.serial);
    assert_eq!(back.i8042, original.i8042);
    // Encoding is deterministic: the same state, the same bytes.
    assert_eq!(encode(&back).expect("encode again"), bytes);
}

#[test]
fn every_damaged_state_file_is_refused_with_its_own_error() {
    let bytes = encode(&snapshot()).expect("encode");

    for at in [HEADER_LEN, bytes.len() / 2, bytes.len() - 1] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 1;
        assert!(
            matches!(decode(&flipped, path()), Err(SnapshotError::Checksum(_))),
            "byte {at} flipped"
        );
    }
    let mut bad_sum = bytes.clone();
    bad_sum[HEADER_LEN - 1] ^= 1;
    assert!(matches!(
        decode(&bad_sum, path()),
        Err(SnapshotError::Checksum(_))
    ));

    for len in [0, 7, HEADER_LEN - 1, HEADER_LEN, bytes.len() - 1] {
        let err = decode(&bytes[..len], path()).expect_err("truncated");
        assert!(
            matches!(
                err,
                SnapshotError::Truncated(_) | SnapshotError::BadMagic(_)
            ),
            "{len} bytes: {err}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(b' ');
    assert!(decode(&longer, path()).is_err(), "trailing bytes");

    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(matches!(
        decode(&magic, path()),
        Err(SnapshotError::BadMagic(_))
    ));

    let mut version = bytes.clone();
    version[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let err = decode(&version, path()).expect_err("future version");
    assert_eq!(
        err.to_string(),
        format!(
            "/snap/state is a version {} snapshot; this ec2lab-vmm reads version {VERSION}",
            VERSION + 1
        )
    );

    // A length that would run past the end of memory is just truncation.
    let mut huge = bytes.clone();
    huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        decode(&huge, path()),
        Err(SnapshotError::Truncated(_))
    ));

    // A well-formed file whose JSON is not a snapshot.
    let payload = br#"{"machine": 1}"#;
    let mut other = Vec::new();
    other.extend_from_slice(MAGIC);
    other.extend_from_slice(&VERSION.to_le_bytes());
    other.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    other.extend_from_slice(&Sha256::digest(payload));
    other.extend_from_slice(payload);
    assert!(matches!(
        decode(&other, path()),
        Err(SnapshotError::Decode { .. })
    ));
}

/// An edit that makes a machine another one.
type ChangeMachine = Box<dyn Fn(&mut Machine)>;

#[test]
fn a_snapshot_fits_only_the_same_machine_on_the_same_kind_of_host() {
    let saved = machine();
    saved.check_fits(&machine()).expect("same machine");
    let cases: Vec<(ChangeMachine, &str)> = vec![
        (
            Box::new(|m| m.vendor = "Intel".into()),
            "taken on an AMD host, this host is Intel",
        ),
        (
            Box::new(|m| m.emulated_kernel = false),
            "CPU template emulated-kernel, this VM has none",
        ),
        (Box::new(|m| m.vcpus = 1), "it has 2 vCPU(s), the config 1"),
        (
            Box::new(|m| m.memory_bytes = 512 << 20),
            "it has 256 MiB of memory, the config 512",
        ),
        (
            Box::new(|m| m.hotplug_bytes = 768 << 20),
            "it has 0 MiB of hotplug memory, the config 768",
        ),
        (
            Box::new(|m| m.devices.swap(0, 1)),
            "it has the devices [block, net, rng], the config [net, block, rng]",
        ),
    ];
    for (change, message) in cases {
        let mut here = machine();
        change(&mut here);
        let err = saved.check_fits(&here).expect_err(message);
        assert!(
            matches!(err, SnapshotError::DoesNotFit(_)) && err.to_string().contains(message),
            "{err}"
        );
    }
}

#[test]
fn memory_ids_differ() {
    let ids: std::collections::HashSet<u64> = (0..64).map(|_| new_memory_id()).collect();
    assert_eq!(ids.len(), 64);
}
