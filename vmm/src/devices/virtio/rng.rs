//! virtio-rng: fills the guest's buffers from the host's getrandom(2).

use std::io::Write;

use virtio_queue::{Queue, Writer};
use vm_memory::GuestMemoryMmap;

use super::{
    device_type, drain_queue, ready_queue, DeviceCounters, UsedQueues, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Largest amount of entropy handed out per request, so one hostile request
/// cannot make the VMM allocate or block for long.
const MAX_REQUEST: usize = 64 * 1024;
const QUEUE_SIZES: &[u16] = &[256];

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    counters: DeviceCounters,
}

impl Rng {
    /// A new device.
    pub fn new() -> Self {
        Self::default()
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn name(&self) -> &'static str {
        "rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        queues: &mut [Queue],
    ) -> UsedQueues {
        let Some(queue) = ready_queue(queues, index) else {
            return UsedQueues::NONE;
        };
        let counters = &self.counters;
        let used = drain_queue(mem, queue, counters, |chain| {
            match Writer::new(mem, chain) {
                Ok(mut writer) => {
                    let mut buf = vec![0u8; writer.available_bytes().min(MAX_REQUEST)];
                    match getrandom(&mut buf).and_then(|()| writer.write_all(&buf)) {
                        Ok(()) => {
                            counters.ok(buf.len() as u64);
                            buf.len() as u32
                        }
                        Err(e) => {
                            log::warn!("virtio-rng: {e}");
                            counters.error();
                            0
                        }
                    }
                }
                Err(e) => {
                    log::debug!("virtio-rng: malformed chain: {e}");
                    counters.error();
                    0
                }
            }
        });
        UsedQueues::when(used, index)
    }

    fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_utils::{mem, writable};

    #[test]
    fn writable_buffers_are_filled_with_entropy() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let desc = writable(0x10_0000, 64);
        vq.build_desc_chain(&[desc]).expect("chain");
        let mut q: Queue = vq.create_queue().expect("queue");
        let mut rng = Rng::new();
        assert!(rng.process_queue(&m, 0, std::slice::from_mut(&mut q)).any());
        let used = vq.used().ring().ref_at(0).expect("used").load();
        assert_eq!(used.len(), 64);
        let mut buf = [0u8; 64];
        m.read_slice(&mut buf, GuestAddress(0x10_0000))
            .expect("read");
        assert_ne!(buf, [0u8; 64], "64 random bytes are not all zero");
    }

    #[test]
    fn buffers_outside_guest_memory_are_refused_not_fatal() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let desc = writable(0xffff_0000, 64);
        vq.build_desc_chain(&[desc]).expect("chain");
        let mut q: Queue = vq.create_queue().expect("queue");
        let mut rng = Rng::new();
        assert!(rng.process_queue(&m, 0, std::slice::from_mut(&mut q)).any());
        assert_eq!(vq.used().ring().ref_at(0).expect("used").load().len(), 0);
        assert_eq!(
            rng.counters()
                .errors
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    /// A driver gone wrong gets no panic and only its own buffers back.
    #[test]
    fn a_driver_gone_wrong_gets_no_panic() {
        crate::devices::virtio::fuzz::drive(
            &mut Rng::new(),
            crate::fuzzing::iterations(),
            0x5eed,
            &[],
        )
        .assert_returns_most();
    }
}
