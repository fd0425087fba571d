//! virtio-net on a Linux tap.

pub mod tap;
