//! COM1: a 16550A UART (vm-superio) on port 0x3f8, IRQ 4, whose output goes to
//! stdout or a file and whose input comes from the VMM's stdin.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// COM1's port base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's port range length.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's interrupt line (GSI).
pub const COM1_GSI: u32 = 4;

/// Raises the UART interrupt by signalling an eventfd registered as a KVM irqfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// The UART as a bus device.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A UART interrupting through `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger::new(irq), out),
        }
    }

    /// Queues host input for the guest; returns how many bytes the FIFO took.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(offset), 1) => data[0] = self.uart.read(offset),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            // A failed write to the console sink or interrupt must not stop the guest.
            if let Err(e) = self.uart.write(offset, *value) {
                log::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            crate::devices::bus::lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_sink() {
        let sink = Sink::default();
        let mut dev = SerialDevice::new(EventFd::new(0).expect("eventfd"), Box::new(sink.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(*crate::devices::bus::lock(&sink.0), b"hi\n");
    }

    #[test]
    fn input_is_readable_from_rbr_and_raises_the_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = SerialDevice::new(irq.try_clone().expect("clone"), Box::new(Sink::default()));
        // Enable the "received data available" interrupt (IER bit 0).
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert!(irq.read().expect("irq raised") >= 1);
        let mut data = [0u8];
        dev.read(0, &mut data);
        assert_eq!(data[0], b'x');
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let mut dev =
            SerialDevice::new(EventFd::new(0).expect("eventfd"), Box::new(Sink::default()));
        let mut data = [0u8; 2];
        dev.read(0, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        dev.write(0, &[1, 2]);
    }
}
