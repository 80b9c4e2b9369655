//! The pod side of a link: a TUN device (layer 3, no packet information, virtio-net headers with
//! TSO/checksum offload) made inside the pod namespace and configured there with netlink (MTU, up,
//! addresses, routes).
//!
//! The device is not persistent: it exists as long as its fd is open, so dropping the returned
//! [`SyncDevice`] removes the interface (with its addresses and routes). A failure after the device
//! was created drops it, so nothing is left behind.

use ipnet::IpNet;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec};
use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use super::WireguardError;
use crate::executor::ops;
use crate::netns::Netns;

/// What the pod interface should look like.
#[derive(Debug, Clone)]
pub struct PodInterface {
    /// The interface name (at most 15 bytes).
    pub name: String,
    /// Its MTU (NSM: uplink MTU − 80 for WireGuard).
    pub mtu: u32,
    /// Addresses to add (IPv4 and/or IPv6, with prefix length).
    pub addresses: Vec<IpNet>,
    /// Destinations routed into the interface (scope link, no gateway).
    pub routes: Vec<IpNet>,
}

/// Refuses names the kernel would refuse, with a reason (the plan's check).
pub(crate) fn check_name(name: &str) -> Result<(), WireguardError> {
    match crate::plan::invalid_interface_name(name) {
        Some(reason) => Err(WireguardError::BadInterfaceName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Creates and configures the TUN device in `pod` (with `netlink`, a handle already in `pod`, if
/// given; else with a socket of its own); returns it with its interface index. See the module doc.
pub(crate) async fn create(
    pod: &Netns,
    want: &PodInterface,
    netlink: Option<&Handle>,
) -> Result<(SyncDevice, u32), WireguardError> {
    check_name(&want.name)?;
    let netns = pod.to_string();
    let handle = match netlink {
        Some(h) => h.clone(),
        None => pod
            .netlink()
            .map_err(|e| WireguardError::io(format!("netlink socket in {netns}"), e))?,
    };
    let taken = || WireguardError::NameTaken {
        name: want.name.clone(),
        netns: netns.clone(),
    };
    if ops::link_by_name(&handle, &want.name)
        .await
        .map_err(|e| configure_err(want, &netns, "look up the name", e))?
        .is_some()
    {
        return Err(taken());
    }
    let device = open_tun(pod, &want.name).await.map_err(|source| {
        // A name taken between the look-up and the ioctl: EBUSY (an attached TUN) or EINVAL
        // (a device of another kind).
        match source.raw_os_error().map(Errno::from_raw) {
            Some(Errno::EBUSY | Errno::EINVAL) => taken(),
            _ => WireguardError::Tun {
                name: want.name.clone(),
                netns: netns.clone(),
                source,
            },
        }
    })?;
    // From here on, an error drops `device`, which removes the interface again.
    let index = configure(&handle, want, &netns).await?;
    device
        .set_nonblocking(true)
        .map_err(|e| WireguardError::io(format!("make {} non-blocking", want.name), e))?;
    Ok((device, index))
}

/// Opens the TUN on a thread inside `pod` (the device belongs to the namespace of the opener).
async fn open_tun(pod: &Netns, name: &str) -> std::io::Result<SyncDevice> {
    let pod = pod.try_clone()?;
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        pod.run(|| {
            DeviceBuilder::new()
                .name(name)
                .layer(Layer::L3)
                .packet_information(false)
                // virtio-net headers with TSO/checksum offload: the pod's TCP hands over 64 KB
                // super-frames (split by tun-rs, one read instead of ~45), and decrypted segments
                // are coalesced (GRO) before they are written (BENCHMARKS.md).
                .offload(true)
                .build_sync()
        })?
    })
    .await
    .map_err(|e| std::io::Error::other(format!("TUN thread: {e}")))?
}

/// Sets MTU and up, adds the addresses and routes; returns the interface index.
async fn configure(h: &Handle, want: &PodInterface, netns: &str) -> Result<u32, WireguardError> {
    let index = ops::link_by_name(h, &want.name)
        .await
        .map_err(|e| configure_err(want, netns, "look up the new device", e))?
        .map(|link| link.header.index)
        .ok_or_else(|| WireguardError::Tun {
            name: want.name.clone(),
            netns: netns.to_string(),
            source: std::io::Error::other("the device vanished right after it was made"),
        })?;
    let up = LinkUnspec::new_with_index(index).mtu(want.mtu).up().build();
    h.link()
        .set(up)
        .execute()
        .await
        .map_err(|e| configure_err(want, netns, &format!("set MTU {} and up", want.mtu), e))?;
    for net in &want.addresses {
        ops::add_address(h, index, *net)
            .await
            .map_err(|e| configure_err(want, netns, &format!("add address {net}"), e))?;
    }
    for net in &want.routes {
        // Scope link without a gateway: a TUN has no neighbours.
        ops::add_route(h, index, *net, None)
            .await
            .map_err(|e| configure_err(want, netns, &format!("add route {net}"), e))?;
    }
    Ok(index)
}

fn configure_err(
    want: &PodInterface,
    netns: &str,
    step: &str,
    source: rtnetlink::Error,
) -> WireguardError {
    WireguardError::Configure {
        name: want.name.clone(),
        netns: netns.to_string(),
        step: step.to_string(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_refused() {
        for ok in ["nsm-1", "a", "exactly15bytes_"] {
            check_name(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("sixteen-bytes-xx", "longer than 15"),
            ("a/b", "'/'"),
            ("a b", "blank"),
            ("..", "reserved"),
        ] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
