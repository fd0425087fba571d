//! A guest that feeds garbage to every virtio device cannot crash or hang
//! the VMM: `guests/virtio_garbage.S` writes pseudo-random values to every
//! register of the virtio-mmio windows and repeatedly brings devices up with
//! rings in a sea of random bytes, so the devices walk junk descriptor
//! chains. The VMM must keep answering its API, leave the read-only disk
//! untouched, count the errors, and power off when the guest asks.

mod common;

use std::time::Duration;

use common::{api, build_guest, status, Vmm};

#[test]
fn garbage_from_the_guest_neither_crashes_nor_hangs_the_vmm() {
    require_kvm!("garbage_from_the_guest_neither_crashes_nor_hangs_the_vmm");
    let guest = build_guest("virtio_garbage");
    let rw = guest.scratch("rw.img");
    let ro = guest.scratch("ro.img");
    std::fs::write(&rw, vec![0u8; 1 << 20]).expect("rw image");
    std::fs::write(&ro, vec![0x77u8; 1 << 20]).expect("ro image");
    let sock = guest.scratch("api.sock");
    let mut vmm = Vmm::spawn([
        "--kernel".to_string(),
        guest.elf.display().to_string(),
        "--disk".to_string(),
        rw.display().to_string(),
        "--disk".to_string(),
        format!("{},ro", ro.display()),
        "--rng".to_string(),
        "--api-sock".to_string(),
        sock.display().to_string(),
    ]);
    api::wait_ready(&mut vmm, &sock);
    vmm.wait_for_stdout("garbage ready", Duration::from_secs(60));
    // The VMM answers while the guest is at it.
    let vm = api::get_vm(&sock);
    assert_eq!(vm["devices"].as_array().map(Vec::len), Some(3), "{vm}");
    vmm.wait_for_stdout("garbage done", Duration::from_secs(120));
    let out = vmm.wait(Duration::from_secs(30));
    out.assert_code(status::POWEROFF);
    assert!(
        std::fs::read(&ro)
            .expect("ro image")
            .iter()
            .all(|b| *b == 0x77),
        "the read-only disk changed"
    );
    assert!(
        out.stderr.lines().count() < 100,
        "the guest flooded the VMM's log:\n{}",
        out.stderr
    );
}
