//! virtio-vsock (virtio spec 5.10) with Firecracker's host side: guest
//! stream sockets become AF_UNIX connections on the host.
//!
//! - Host to guest: a host program connects to the device's socket path,
//!   writes `CONNECT <port>\n`, and once the guest accepts reads
//!   `OK <host port>\n`; from then on the connection is the stream.
//! - Guest to host: a guest connection to CID 2 port P becomes a connection
//!   to the socket `<path>_<P>`, if a host program listens there.
//!
//! Queues: rx (0) carries packets to the guest, tx (1) from it; the event
//! queue (2) is only for transport resets, sent once after a restore from a
//! snapshot (the host ends of every connection are gone), as Firecracker
//! does; otherwise its buffers stay where the guest put them.
//!
//! The layers: [`packet`] is the wire header, [`connection`] one stream's
//! state and credit, [`unix`] the host sockets, [`muxer`] the routing
//! between them; this module moves packets between the queues and the muxer.

pub mod connection;
pub mod muxer;
pub mod packet;
pub mod unix;

use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vm_memory::GuestMemoryMmap;

use self::muxer::Muxer;
use self::packet::HDR_LEN;
use super::{
    device_type, read_config_bytes, ready_queue, BackendEvents, DeviceCounters, UsedQueues,
    VirtioDevice, VIRTIO_F_VERSION_1,
};

/// The host's context id, as seen from the guest.
pub const HOST_CID: u64 = 2;
/// Lowest context id a guest may have (0 and 1 are reserved, 2 is the host).
pub const MIN_GUEST_CID: u64 = 3;

/// Packets to the guest.
pub const RX_QUEUE: usize = 0;
/// Packets from the guest.
pub const TX_QUEUE: usize = 1;
/// Transport events (a reset after a restore).
pub const EVENT_QUEUE: usize = 2;
/// `struct virtio_vsock_event`'s id for a transport reset (spec 5.10.6.7).
const EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZES: &[u16] = &[256, 256, 256];

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("vsock guest CID {0} is reserved; guest CIDs start at {MIN_GUEST_CID}")]
    InvalidCid(u64),
    /// Something other than a socket is at the socket path.
    #[error("vsock socket path {path} exists and is not a socket; not removing it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket could not be removed.
    #[error("cannot remove stale vsock socket {path}: {source}")]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listening socket could not be set up.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
}

impl Vsock {
    /// A device giving the guest context id `guest_cid`, reachable from the
    /// host through a socket it binds at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        // The upper half of the 64-bit CID is reserved by the spec.
        if guest_cid < MIN_GUEST_CID || guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let listener = unix::bind_listener(uds_path)?;
        Ok(Self {
            guest_cid,
            muxer: Muxer::new(guest_cid, uds_path.to_path_buf(), listener),
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Guest connections to port P go to `<uds_path>_P` from now on (the
    /// same sockets, named as a jailed VMM sees them).
    pub fn connect_through(&mut self, uds_path: PathBuf) {
        self.muxer.connect_through(uds_path);
    }

    /// Open connections, including host connections that have not yet sent
    /// their CONNECT line.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Bytes of memory the connections hold for their host sockets (at
    /// most `muxer::BUFFER_BUDGET`).
    pub fn held_bytes(&self) -> usize {
        self.muxer.held_bytes()
    }

    /// Serves every backend descriptor that is ready now, found with
    /// poll(2) instead of the event thread's epoll: for tests, and for a
    /// caller that runs the device without an event thread.
    pub fn poll_all(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> UsedQueues {
        let fds = self.muxer.fds();
        let mut pollfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|(fd, _)| libc::pollfd {
                fd: *fd,
                events: libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP,
                revents: 0,
            })
            .collect();
        // SAFETY: `pollfds` is a live, writable array of `pollfds.len()`
        // pollfd structs; a zero timeout never blocks.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 0) };
        if n <= 0 {
            return UsedQueues::NONE;
        }
        let mut used = UsedQueues::NONE;
        for (p, (_, token)) in pollfds.iter().zip(&fds) {
            if p.revents != 0 {
                // poll and epoll share the bit values on Linux.
                used |= self.process_backend(mem, *token, p.revents as u16 as u32, queues);
            }
        }
        used
    }

    /// Serves the tx queue; returns whether chains were used.
    fn drain_tx(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> bool {
        let Some(tx) = ready_queue(queues, TX_QUEUE) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = tx.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            self.muxer.handle_tx_chain(mem, chain);
            if tx.add_used(mem, head, 0).is_err() {
                self.muxer.counters().error();
            }
            used = true;
        }
        used
    }

    /// Hands the guest what it is owed, as far as its rx buffers go;
    /// returns whether buffers were used.
    fn fill_rx(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> bool {
        let Some(rx) = ready_queue(queues, RX_QUEUE) else {
            return false;
        };
        let mut used = false;
        while self.muxer.has_rx_work() {
            let Some(chain) = rx.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match Writer::new(mem, chain) {
                Ok(mut writer) if writer.available_bytes() >= HDR_LEN => {
                    match self.muxer.next_rx_packet(&mut writer) {
                        Some(n) => n,
                        None => {
                            // Nothing was owed after all; leave the buffer.
                            rx.go_to_previous_position();
                            break;
                        }
                    }
                }
                Ok(_) | Err(_) => {
                    log::debug!("virtio-vsock: rx buffer too small or outside guest memory");
                    self.muxer.counters().error();
                    0
                }
            };
            if rx.add_used(mem, head, written).is_err() {
                self.muxer.counters().error();
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn name(&self) -> &'static str {
        "vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        queues: &mut [Queue],
    ) -> UsedQueues {
        match index {
            RX_QUEUE => UsedQueues::when(self.fill_rx(mem, queues), RX_QUEUE),
            TX_QUEUE => {
                let tx = UsedQueues::when(self.drain_tx(mem, queues), TX_QUEUE);
                tx | UsedQueues::when(self.fill_rx(mem, queues), RX_QUEUE)
            }
            _ => UsedQueues::NONE,
        }
    }

    fn counters(&self) -> &DeviceCounters {
        self.muxer.counters()
    }

    fn register_backend(&mut self, events: BackendEvents) -> std::io::Result<()> {
        self.muxer.register(events)
    }

    fn process_backend(
        &mut self,
        mem: &GuestMemoryMmap,
        token: u32,
        events: u32,
        queues: &mut [Queue],
    ) -> UsedQueues {
        let active = !queues.is_empty();
        self.muxer.host_event(token, events, active);
        UsedQueues::when(self.fill_rx(mem, queues), RX_QUEUE)
    }

    fn activate(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> UsedQueues {
        UsedQueues::when(self.fill_rx(mem, queues), RX_QUEUE)
    }

    fn reset(&mut self) {
        self.muxer.reset();
    }

    /// After a restore the guest still has connections whose host ends
    /// belonged to another process: the transport-reset event makes its
    /// driver drop them all (and re-read the CID), so its sockets fail
    /// at once instead of waiting on peers that are gone.
    fn restored(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> UsedQueues {
        let mut used = UsedQueues::NONE;
        if let Some(events) = ready_queue(queues, EVENT_QUEUE) {
            if let Some(chain) = events.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let written = match Writer::new(mem, chain) {
                    Ok(mut w) => w.write_obj(EVENT_TRANSPORT_RESET.to_le()).map_or(0, |()| 4),
                    Err(_) => 0,
                };
                if events.add_used(mem, head, written).is_err() || written == 0 {
                    self.muxer.counters().error();
                }
                used |= UsedQueues::one(EVENT_QUEUE);
            } else {
                log::warn!("virtio-vsock: no event buffer for the transport reset after a restore");
            }
        }
        used | self.activate(mem, queues)
    }
}

#[cfg(test)]
mod tests;
