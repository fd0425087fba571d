//! Emulated devices and the buses that route guest I/O to them.

pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod manager;
pub mod power;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice};
