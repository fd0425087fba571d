//! What other crates share with the agent: the check-in wire protocol the
//! control plane answers on the host side of the instance's vsock device.
//! The agent's own steps stay private to its binary.

pub mod checkin_protocol;
