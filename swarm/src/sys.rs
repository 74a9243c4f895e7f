//! What the agent asks of the system: an interface's IPv4 address and random bytes.

use std::io::Read;
use std::net::Ipv4Addr;

/// The first IPv4 address of `interface`, or `None` while it has none.
pub fn ipv4_of(interface: &str) -> Result<Option<Ipv4Addr>, nix::Error> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter(|a| a.interface_name == interface)
        .find_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip())))
}

/// 32 bytes from the kernel's random source (a container's `/dev/urandom`).
pub fn nonce() -> std::io::Result<crate::join::Nonce> {
    let mut nonce = [0; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    Ok(nonce)
}
