//! The links of a VPC's namespace, over netlink (rtnetlink): subnet
//! bridges with the router's and the DNS server's addresses, and the
//! instances' taps as bridge ports.
//!
//! Every call is idempotent (a link or address that is already there is
//! adopted), so the same code builds the fabric at launch and rebuilds it
//! after a daemon restart. Each call runs on a short-lived thread inside
//! the namespace with a one-thread runtime for the netlink socket
//! ([`netns::run_in`]): a fresh thread and socket cost tens of
//! microseconds, far below a launch's other costs.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::netns::{self, NetnsError};

/// Errors of fabric changes.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// Entering or making the namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink request failed.
    #[error("in {ns}: {what} {link}: {source}")]
    Netlink {
        /// The namespace.
        ns: String,
        /// The step.
        what: &'static str,
        /// The link it was about.
        link: String,
        /// What the kernel (or the crate) said (boxed: it is large, and
        /// every fabric result would pay for it).
        source: Box<rtnetlink::Error>,
    },
    /// Creating a tap (`/dev/net/tun`).
    #[error("in {ns}: tap {tap}: {what}: {source}")]
    Tap {
        /// The namespace.
        ns: String,
        /// The tap.
        tap: String,
        /// The step.
        what: &'static str,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// A link named in a request does not exist.
    #[error("in {ns}: no link {link}")]
    NoLink {
        /// The namespace.
        ns: String,
        /// The link.
        link: String,
    },
    /// The netlink socket or its runtime could not be made.
    #[error("in {ns}: netlink socket: {source}")]
    Socket {
        /// The namespace.
        ns: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether a netlink failure is the kernel's `errno`.
fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// Runs `op` with a netlink handle inside namespace `ns`.
fn with_netlink<T, F, Fut>(ns: &str, op: F) -> Result<T, FabricError>
where
    T: Send + 'static,
    F: FnOnce(Handle, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, FabricError>>,
{
    let owner = ns.to_string();
    netns::run_in(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| FabricError::Socket {
                ns: owner.clone(),
                source,
            })?;
        runtime.block_on(async move {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|source| FabricError::Socket {
                    ns: owner.clone(),
                    source,
                })?;
            tokio::spawn(connection);
            op(handle, owner).await
        })
    })?
}

/// The index of link `name`, if it exists.
async fn link_index(handle: &Handle, ns: &str, name: &str) -> Result<Option<u32>, FabricError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(source) => Err(FabricError::Netlink {
            ns: ns.to_string(),
            what: "look up",
            link: name.to_string(),
            source: Box::new(source),
        }),
    }
}

async fn require_index(handle: &Handle, ns: &str, name: &str) -> Result<u32, FabricError> {
    link_index(handle, ns, name)
        .await?
        .ok_or_else(|| FabricError::NoLink {
            ns: ns.to_string(),
            link: name.to_string(),
        })
}

/// Sets link `message` (by index) as given: up, enslaved, …
async fn set_link(
    handle: &Handle,
    ns: &str,
    name: &str,
    what: &'static str,
    message: LinkMessage,
) -> Result<(), FabricError> {
    handle
        .link()
        .set(message)
        .execute()
        .await
        .map_err(|source| FabricError::Netlink {
            ns: ns.to_string(),
            what,
            link: name.to_string(),
            source: Box::new(source),
        })
}

/// Brings the namespace's loopback up (a fresh namespace has it down).
pub fn set_loopback_up(ns: &str) -> Result<(), FabricError> {
    with_netlink(ns, |handle, ns| async move {
        let lo = require_index(&handle, &ns, "lo").await?;
        set_link(
            &handle,
            &ns,
            "lo",
            "bring up",
            LinkUnspec::new_with_index(lo).up().build(),
        )
        .await
    })
}

/// Makes bridge `bridge` exist, up, with each of `addresses` (address,
/// prefix length) on it.
pub fn ensure_bridge(
    ns: &str,
    bridge: &str,
    addresses: &[(Ipv4Addr, u8)],
) -> Result<(), FabricError> {
    let bridge = bridge.to_string();
    let addresses = addresses.to_vec();
    with_netlink(ns, move |handle, ns| async move {
        let fail = |what, source| FabricError::Netlink {
            ns: ns.clone(),
            what,
            link: bridge.clone(),
            source: Box::new(source),
        };
        if let Err(e) = handle
            .link()
            .add(LinkBridge::new(&bridge).build())
            .execute()
            .await
        {
            if !is_errno(&e, libc::EEXIST) {
                return Err(fail("create bridge", e));
            }
        }
        let index = require_index(&handle, &ns, &bridge).await?;
        for (address, prefix) in addresses {
            if let Err(e) = handle
                .address()
                .add(index, address.into(), prefix)
                .execute()
                .await
            {
                if !is_errno(&e, libc::EEXIST) {
                    return Err(fail("add an address to", e));
                }
            }
        }
        set_link(
            &handle,
            &ns,
            &bridge,
            "bring up",
            LinkUnspec::new_with_index(index).up().build(),
        )
        .await
    })
}

/// Makes port `link` (a tap, or a test's veth) a port of `bridge`, up.
pub fn attach_to_bridge(ns: &str, link: &str, bridge: &str) -> Result<(), FabricError> {
    let (link, bridge) = (link.to_string(), bridge.to_string());
    with_netlink(ns, move |handle, ns| async move {
        let port = require_index(&handle, &ns, &link).await?;
        let controller = require_index(&handle, &ns, &bridge).await?;
        set_link(
            &handle,
            &ns,
            &link,
            "attach",
            LinkUnspec::new_with_index(port)
                .controller(controller)
                .up()
                .build(),
        )
        .await
    })
}

/// Deletes link `name`; a missing link is fine.
pub fn remove_link(ns: &str, name: &str) -> Result<(), FabricError> {
    let name = name.to_string();
    with_netlink(ns, move |handle, ns| async move {
        let Some(index) = link_index(&handle, &ns, &name).await? else {
            return Ok(());
        };
        match handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(source) => Err(FabricError::Netlink {
                ns,
                what: "delete",
                link: name,
                source: Box::new(source),
            }),
        }
    })
}

/// The names of the namespace's links.
pub fn link_names(ns: &str) -> Result<Vec<String>, FabricError> {
    with_netlink(ns, |handle, ns| async move {
        let mut names = Vec::new();
        let mut links = handle.link().get().execute();
        loop {
            match links.try_next().await {
                Ok(Some(link)) => names.extend(link.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })),
                Ok(None) => return Ok(names),
                Err(source) => {
                    return Err(FabricError::Netlink {
                        ns,
                        what: "list",
                        link: String::new(),
                        source: Box::new(source),
                    })
                }
            }
        }
    })
}

/// `TUNSETPERSIST` (linux/if_tun.h: _IOW('T', 203, int)).
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

/// Makes persistent tap `tap` in namespace `ns` with the flags the VMM
/// opens it with (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: a tap made with
/// other flags would refuse the VMM's TUNSETIFF), then puts it on
/// `bridge`. A tap cannot be made over netlink (the kernel refuses
/// `RTM_NEWLINK` for tun), hence the ioctl. An existing tap is kept.
pub fn ensure_tap(ns: &str, tap: &str, bridge: &str) -> Result<(), FabricError> {
    // A tap already there may be held by a running VMM (the daemon was
    // restarted): a second TUNSETIFF on it would fail with EBUSY.
    let exists = {
        let name = tap.to_string();
        with_netlink(ns, move |handle, ns| async move {
            Ok(link_index(&handle, &ns, &name).await?.is_some())
        })?
    };
    if !exists {
        make_tap(ns, tap)?;
    }
    attach_to_bridge(ns, tap, bridge)
}

fn make_tap(ns: &str, tap: &str) -> Result<(), FabricError> {
    let (owner, name) = (ns.to_string(), tap.to_string());
    netns::run_in(ns, move || -> Result<(), FabricError> {
        let fail = |what, source| FabricError::Tap {
            ns: owner.clone(),
            tap: name.clone(),
            what,
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| fail("open /dev/net/tun", e))?;
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        let bytes = name.as_bytes();
        if bytes.len() >= req.ifr_name.len() {
            return Err(fail("name", std::io::ErrorKind::InvalidInput.into()));
        }
        for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq, and `req` is a live,
        // initialised one.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
            return Err(fail("TUNSETIFF", std::io::Error::last_os_error()));
        }
        // SAFETY: TUNSETPERSIST takes an int by value on a tun fd.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_int) } != 0 {
            return Err(fail("TUNSETPERSIST", std::io::Error::last_os_error()));
        }
        Ok(())
    })?
}

/// Makes veth `name` in namespace `ns` whose peer `peer` is a port of
/// `peer_bridge` in namespace `peer_ns`, both ends up. A `name` that
/// exists is kept (its peer went with it if it ever went: a veth pair
/// lives and dies together).
pub fn ensure_veth_to(
    ns: &str,
    name: &str,
    peer_ns: &str,
    peer: &str,
    peer_bridge: &str,
) -> Result<(), FabricError> {
    let target = netns::open(peer_ns)?;
    let (name, peer) = (name.to_string(), peer.to_string());
    let made = {
        let (name, peer) = (name.clone(), peer.clone());
        with_netlink(ns, move |handle, ns| async move {
            if link_index(&handle, &ns, &name).await?.is_some() {
                return Ok(false);
            }
            let fail = |what, source| FabricError::Netlink {
                ns: ns.clone(),
                what,
                link: name.clone(),
                source: Box::new(source),
            };
            // A peer left by an interrupted earlier attempt goes first.
            if let Some(stale) = link_index(&handle, &ns, &peer).await? {
                let _ = handle.link().del(stale).execute().await;
            }
            handle
                .link()
                .add(rtnetlink::LinkVeth::new(&name, &peer).build())
                .execute()
                .await
                .map_err(|e| fail("create veth", e))?;
            let far = require_index(&handle, &ns, &peer).await?;
            set_link(
                &handle,
                &ns,
                &peer,
                "move to its namespace",
                LinkUnspec::new_with_index(far)
                    .setns_by_fd(target.as_raw_fd())
                    .build(),
            )
            .await?;
            let near = require_index(&handle, &ns, &name).await?;
            set_link(
                &handle,
                &ns,
                &name,
                "bring up",
                LinkUnspec::new_with_index(near).up().build(),
            )
            .await?;
            Ok(true)
        })?
    };
    if made {
        attach_to_bridge(peer_ns, &peer, peer_bridge)?;
    }
    Ok(())
}

/// Makes the IPv4 addresses of `link` exactly `wanted` (each a /32).
pub fn set_host_addresses(ns: &str, link: &str, wanted: &[Ipv4Addr]) -> Result<(), FabricError> {
    let (link, wanted) = (link.to_string(), wanted.to_vec());
    with_netlink(ns, move |handle, ns| async move {
        use rtnetlink::packet_route::address::AddressAttribute;
        let index = require_index(&handle, &ns, &link).await?;
        let fail = |what, source| FabricError::Netlink {
            ns: ns.clone(),
            what,
            link: link.clone(),
            source: Box::new(source),
        };
        let mut have = Vec::new();
        let mut stream = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(|e| fail("list addresses of", e))?
        {
            let ip = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                have.push((ip, message));
            }
        }
        // Add before removing: a link that is left with no address at all,
        // even for a moment, loses every route through it (the kernel's
        // fib_disable_ip).
        for ip in wanted.iter().copied() {
            if have.iter().any(|(h, _)| *h == ip) {
                continue;
            }
            if let Err(e) = handle.address().add(index, ip.into(), 32).execute().await {
                if !is_errno(&e, libc::EEXIST) {
                    return Err(fail("add an address to", e));
                }
            }
        }
        for (ip, message) in have.iter() {
            if !wanted.contains(ip) {
                handle
                    .address()
                    .del(message.clone())
                    .execute()
                    .await
                    .map_err(|e| fail("remove an address from", e))?;
            }
        }
        Ok(())
    })
}

/// Makes the namespace's default route go through `gateway` on `link`
/// (on-link: the gateway need not be in a block `link` has an address in).
pub fn ensure_default_route(ns: &str, link: &str, gateway: Ipv4Addr) -> Result<(), FabricError> {
    let link = link.to_string();
    with_netlink(ns, move |handle, ns| async move {
        let index = require_index(&handle, &ns, &link).await?;
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gateway)
            .output_interface(index)
            .onlink()
            .build();
        match handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(source) => Err(FabricError::Netlink {
                ns,
                what: "add the default route via",
                link,
                source: Box::new(source),
            }),
        }
    })
}

/// Forgets what namespace `ns` has learnt about the link-layer addresses
/// of `addresses` (its ARP cache), so the next packet asks again. A public
/// address that moved to another VPC's gateway would otherwise keep going
/// to the old gateway's MAC until the entry went stale.
pub fn forget_neighbours(ns: &str, addresses: &[Ipv4Addr]) -> Result<(), FabricError> {
    let addresses = addresses.to_vec();
    with_netlink(ns, move |handle, ns| async move {
        use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
        let fail = |what, source| FabricError::Netlink {
            ns: ns.clone(),
            what,
            link: String::new(),
            source: Box::new(source),
        };
        let mut doomed = Vec::new();
        let mut stream = handle
            .neighbours()
            .get()
            .set_address_family(rtnetlink::packet_route::AddressFamily::Inet)
            .execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(|e| fail("list neighbours", e))?
        {
            let known = message.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))
                    if addresses.contains(ip))
            });
            if known {
                doomed.push(message);
            }
        }
        for message in doomed {
            match handle.neighbours().del(message).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::ENOENT) => {}
                Err(e) => return Err(fail("forget a neighbour", e)),
            }
        }
        Ok(())
    })
}

/// Adds `address`/32 to `link` (kept if there).
pub fn add_host_address(ns: &str, link: &str, address: Ipv4Addr) -> Result<(), FabricError> {
    let link = link.to_string();
    with_netlink(ns, move |handle, ns| async move {
        let index = require_index(&handle, &ns, &link).await?;
        match handle
            .address()
            .add(index, address.into(), 32)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(source) => Err(FabricError::Netlink {
                ns,
                what: "add an address to",
                link,
                source: Box::new(source),
            }),
        }
    })
}
