//! The lab's VPC networking on the host: today, the security group
//! ruleset renderer (`rules`); the fabric (namespaces, bridges, taps,
//! DHCP/DNS) that applies it lives beside it.

pub mod rules;
