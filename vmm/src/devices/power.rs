//! The hardware-reduced ACPI sleep control and reset register (one I/O port,
//! declared in the FADT): S5 → power off, the reset value → reset.

use super::BusDevice;
use crate::arch::x86_64::acpi::{S5_SLEEP_TYPE, SLEEP_ENABLE};
use crate::arch::x86_64::layout::ACPI_RESET_VALUE;

/// What the guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    /// Enter S5 (soft off).
    Poweroff,
    /// Reset the machine.
    Reset,
}

/// Receives power events.
pub trait PowerHandler: Send {
    /// Called on the vCPU thread that wrote the register.
    fn power_event(&mut self, event: PowerEvent);
}

/// The register.
pub struct AcpiPowerRegister {
    handler: Box<dyn PowerHandler>,
}

impl AcpiPowerRegister {
    /// A register reporting to `handler`.
    pub fn new(handler: Box<dyn PowerHandler>) -> Self {
        Self { handler }
    }

    /// Decodes a write to the register.
    pub fn decode(value: u8) -> Option<PowerEvent> {
        if value & SLEEP_ENABLE != 0 && (value >> 2) & 0x7 == S5_SLEEP_TYPE {
            Some(PowerEvent::Poweroff)
        } else if value == ACPI_RESET_VALUE {
            Some(PowerEvent::Reset)
        } else {
            None
        }
    }
}

impl BusDevice for AcpiPowerRegister {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: report "woken" so a guest polling for the end of a
        // sleep transition never spins forever.
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = 0x80;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(event) = data.first().copied().and_then(Self::decode) {
            self.handler.power_event(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_sleep_enable_is_poweroff() {
        assert_eq!(AcpiPowerRegister::decode(0x34), Some(PowerEvent::Poweroff));
    }

    #[test]
    fn reset_value_is_reset() {
        assert_eq!(AcpiPowerRegister::decode(1), Some(PowerEvent::Reset));
    }

    #[test]
    fn other_writes_are_ignored() {
        // Clearing WAK_STS, S5 without SLP_EN, S3 with SLP_EN.
        for v in [0x80, 0x14, 0x2c, 0] {
            assert_eq!(AcpiPowerRegister::decode(v), None, "{v:#x}");
        }
    }
}
