//! What other crates share with the agent: the wire protocols spoken over
//! the instance's vsock device with the control plane (the check-in) and
//! with `ec2lab connect` (sessions). The agent's own steps stay private to
//! its binary.

pub mod checkin_protocol;
pub mod session_protocol;
