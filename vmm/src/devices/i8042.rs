//! A minimal i8042 keyboard controller: enough for Linux to find it, to
//! reset the machine (command 0xFE, how `reboot=k` and many kernels reboot),
//! and to deliver Ctrl-Alt-Del so that a guest's init can shut down cleanly.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// Data port.
pub const DATA_PORT: u64 = 0x60;
/// Status / command port.
pub const COMMAND_PORT: u64 = 0x64;
/// Keyboard interrupt line.
pub const KBD_GSI: u32 = 1;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
const STATUS_KBD_UNLOCKED: u8 = 1 << 4;

const CTR_KBD_INT: u8 = 1 << 0;
const CTR_POST_OK: u8 = 1 << 2;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;

/// Scan code set 2 make codes for Ctrl, Alt, Delete.
const CTRL_ALT_DEL: &[u8] = &[0x14, 0x11, 0xe0, 0x71];
/// Bound on queued output so a guest that never reads cannot grow it.
const MAX_QUEUED: usize = 64;

/// What the controller asks of the VMM.
pub trait ResetHandler: Send {
    /// The guest pulsed the CPU reset line.
    fn reset(&mut self);
}

/// The controller's state, as a snapshot saves it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042Snapshot {
    ctr: u8,
    pending_command: Option<u8>,
    status_last_command: bool,
    output: Vec<u8>,
}

/// The controller.
pub struct I8042 {
    ctr: u8,
    pending_command: Option<u8>,
    status_last_command: bool,
    output: VecDeque<u8>,
    irq: EventFd,
    reset: Box<dyn ResetHandler>,
}

impl I8042 {
    /// A controller raising `irq` for keyboard data and calling `reset` on 0xFE.
    pub fn new(irq: EventFd, reset: Box<dyn ResetHandler>) -> Self {
        Self {
            ctr: CTR_POST_OK | CTR_KBD_INT,
            pending_command: None,
            status_last_command: false,
            output: VecDeque::new(),
            irq,
            reset,
        }
    }

    /// The controller's state for a snapshot.
    pub fn snapshot(&self) -> I8042Snapshot {
        I8042Snapshot {
            ctr: self.ctr,
            pending_command: self.pending_command,
            status_last_command: self.status_last_command,
            output: self.output.iter().copied().collect(),
        }
    }

    /// Takes the state a snapshot saved (queued output beyond the bound is
    /// dropped, as it would have been).
    pub fn restore(&mut self, saved: &I8042Snapshot) {
        self.ctr = saved.ctr;
        self.pending_command = saved.pending_command;
        self.status_last_command = saved.status_last_command;
        self.output = saved.output.iter().copied().take(MAX_QUEUED).collect();
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < MAX_QUEUED {
            self.output.push_back(byte);
        }
    }

    fn push_kbd(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.push(*b);
        }
        self.raise_kbd_irq();
    }

    fn raise_kbd_irq(&self) {
        if self.ctr & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.write(1) {
                log::warn!("i8042: cannot raise IRQ: {e}");
            }
        }
    }

    /// Injects the Ctrl-Alt-Del key presses.
    pub fn send_ctrl_alt_del(&mut self) {
        self.push_kbd(CTRL_ALT_DEL);
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_SYSTEM_FLAG | STATUS_KBD_UNLOCKED;
        if !self.output.is_empty() {
            s |= STATUS_OUTPUT_FULL;
        }
        if self.status_last_command {
            s |= STATUS_LAST_WAS_COMMAND;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        self.status_last_command = true;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending_command = Some(cmd),
            CMD_SELF_TEST => self.push(0x55),
            CMD_TEST_KBD | CMD_TEST_AUX => self.push(0x00),
            CMD_READ_OUTPUT_PORT => self.push(0x01),
            CMD_DISABLE_KBD | CMD_ENABLE_KBD | CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            CMD_RESET_CPU => self.reset.reset(),
            other => log::debug!("i8042: ignoring command {other:#x}"),
        }
    }

    fn data(&mut self, value: u8) {
        self.status_last_command = false;
        match self.pending_command.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(_) => {}
            None => match value {
                KBD_RESET => self.push_kbd(&[KBD_ACK, KBD_SELF_TEST_PASSED]),
                KBD_GET_ID => self.push_kbd(&[KBD_ACK, 0xab, 0x83]),
                _ => self.push_kbd(&[KBD_ACK]),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => {
                let byte = self.output.pop_front().unwrap_or(0);
                // Each byte loaded into the output buffer interrupts anew, as
                // on the real controller: Linux reads one byte per interrupt.
                if !self.output.is_empty() {
                    self.raise_kbd_irq();
                }
                byte
            }
            4 => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 => self.data(value),
            4 => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    struct CountResets(Arc<AtomicUsize>);

    impl ResetHandler for CountResets {
        fn reset(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn controller() -> (I8042, Arc<AtomicUsize>, EventFd) {
        let resets = Arc::new(AtomicUsize::new(0));
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let dev = I8042::new(
            irq.try_clone().expect("clone"),
            Box::new(CountResets(resets.clone())),
        );
        (dev, resets, irq)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_requests_a_reset() {
        let (mut dev, resets, _) = controller();
        dev.write(4, &[CMD_RESET_CPU]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn linux_probe_sequence_is_answered() {
        let (mut dev, _, _) = controller();
        assert_ne!(read(&mut dev, 4), 0xff, "controller present");
        dev.write(4, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, 0), 0x55);
        dev.write(4, &[CMD_READ_CTR]);
        let ctr = read(&mut dev, 0);
        dev.write(4, &[CMD_WRITE_CTR]);
        dev.write(0, &[ctr | 0x40]);
        dev.write(4, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, 0), ctr | 0x40);
        assert_eq!(read(&mut dev, 4) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn ctrl_alt_del_queues_scancodes_and_interrupts() {
        let (mut dev, _, irq) = controller();
        dev.send_ctrl_alt_del();
        assert_eq!(irq.read().expect("irq"), 1);
        let got: Vec<u8> = (0..4).map(|_| read(&mut dev, 0)).collect();
        assert_eq!(got, CTRL_ALT_DEL);
    }

    #[test]
    fn every_queued_byte_gets_its_own_interrupt() {
        let (mut dev, _, irq) = controller();
        dev.send_ctrl_alt_del();
        let mut interrupts = irq.read().expect("irq");
        for _ in 0..CTRL_ALT_DEL.len() {
            read(&mut dev, 0);
            interrupts += irq.read().unwrap_or(0);
        }
        assert_eq!(interrupts, CTRL_ALT_DEL.len() as u64);
    }

    #[test]
    fn a_restored_controller_goes_on_where_the_saved_one_was() {
        let (mut dev, _, _) = controller();
        dev.write(4, &[0x60]); // "write CTR" command, pending its data byte
        dev.send_ctrl_alt_del();
        let saved = dev.snapshot();
        let (mut restored, _, _) = controller();
        restored.restore(
            &serde_json::from_str(&serde_json::to_string(&saved).expect("ser")).expect("de"),
        );
        assert_eq!(restored.snapshot(), saved);
        assert_eq!(read(&mut restored, 0), CTRL_ALT_DEL[0]);
    }

    #[test]
    fn output_queue_is_bounded() {
        let (mut dev, _, _) = controller();
        for _ in 0..1000 {
            dev.write(4, &[CMD_SELF_TEST]);
        }
        assert_eq!(dev.output.len(), MAX_QUEUED);
    }
}
