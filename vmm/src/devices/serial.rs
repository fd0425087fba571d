//! COM1: a 16550A UART (vm-superio) on port 0x3f8, IRQ 4, whose output goes to
//! stdout or a file and whose input comes from the VMM's stdin.

use std::io::Write;

use vm_superio::serial::{NoEvents, SerialState};
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

/// The UART's registers and unread input, as a snapshot saves them
/// (vm-superio's `SerialState`, which has no serde of its own).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// A saved UART state vm-superio refuses (more input than its FIFO holds).
#[derive(Debug, thiserror::Error)]
#[error("the saved serial port state is invalid: {0}")]
pub struct SerialRestoreError(String);

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

    /// A UART in the state a snapshot saved.
    pub fn from_snapshot(
        irq: EventFd,
        out: Box<dyn Write + Send>,
        saved: &SerialSnapshot,
    ) -> Result<Self, SerialRestoreError> {
        let state = SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, EventFdTrigger::new(irq), NoEvents, out)
            .map_err(|e| SerialRestoreError(format!("{e:?}")))?;
        Ok(Self { uart })
    }

    /// The UART's state for a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
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
    fn a_restored_uart_has_the_saved_registers_and_unread_input() {
        let mut dev =
            SerialDevice::new(EventFd::new(0).expect("eventfd"), Box::new(Sink::default()));
        dev.write(3, &[0x03]); // LCR: 8N1
        dev.write(7, &[0x5a]); // scratch
        dev.write(1, &[0x01]); // IER
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        let saved = dev.snapshot();
        let json = serde_json::to_string(&saved).expect("serialise");
        let back: SerialSnapshot = serde_json::from_str(&json).expect("parse");
        let mut restored = SerialDevice::from_snapshot(
            EventFd::new(0).expect("eventfd"),
            Box::new(Sink::default()),
            &back,
        )
        .expect("restore");
        let read = |d: &mut SerialDevice, offset| {
            let mut b = [0u8];
            d.read(offset, &mut b);
            b[0]
        };
        assert_eq!(read(&mut restored, 3), 0x03);
        assert_eq!(read(&mut restored, 7), 0x5a);
        assert_eq!(read(&mut restored, 1), 0x01);
        assert_eq!(read(&mut restored, 0), b'a');
        assert_eq!(read(&mut restored, 0), b'b');
        let mut too_much = saved;
        too_much.in_buffer = vec![0; 4096];
        assert!(SerialDevice::from_snapshot(
            EventFd::new(0).expect("eventfd"),
            Box::new(Sink::default()),
            &too_much
        )
        .is_err());
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
