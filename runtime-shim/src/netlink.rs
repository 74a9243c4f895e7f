//! `runtime.json` `interfaces`: network links moved into, or created for, the container's
//! network namespace between create and start (LinuxKit's `prepareProcess`), with a few
//! hand-written rtnetlink `RTM_NEWLINK` requests.
//!
//! Semantics: a `peer` without `add` means `veth`; a `veth` pair, or any link with
//! `createInRoot`, is created in the root namespace and then moved (the veth peer stays in
//! the root namespace); another `add` type is created directly in the container's
//! namespace; no `add` moves an existing link.

use std::io;

use keel_bundle::Interface;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};
use std::os::fd::{AsRawFd, OwnedFd};

/// Errors applying `interfaces`.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] io::Error),
    #[error("interface entry has no name")]
    NoName,
    #[error("veth {0} needs a peer name")]
    NoPeer(String),
    #[error("interface {0} not found")]
    NotFound(String, #[source] nix::Error),
    #[error("cannot create {kind} link {name}")]
    Create {
        name: String,
        kind: String,
        #[source]
        err: io::Error,
    },
    #[error("cannot move interface {name} into the namespace of pid {pid}")]
    Move {
        name: String,
        pid: i32,
        #[source]
        err: io::Error,
    },
}

const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// A netlink message under construction: header, `ifinfomsg`, attributes.
struct LinkMsg {
    buf: Vec<u8>,
}

impl LinkMsg {
    fn new(flags: u16, index: i32) -> Self {
        let mut buf = Vec::with_capacity(NLMSG_HDRLEN + IFINFOMSG_LEN + 64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, fixed in finish()
        buf.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        Self::push_ifinfo(&mut buf, index);
        Self { buf }
    }

    fn push_ifinfo(buf: &mut Vec<u8>, index: i32) {
        buf.push(libc::AF_UNSPEC as u8);
        buf.push(0);
        buf.extend_from_slice(&0u16.to_ne_bytes()); // type
        buf.extend_from_slice(&index.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // flags
        buf.extend_from_slice(&0u32.to_ne_bytes()); // change mask
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Starts an attribute; returns its offset for [`LinkMsg::end`].
    fn begin(&mut self, kind: u16) -> usize {
        self.pad();
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self.pad();
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let at = self.begin(kind);
        self.buf.extend_from_slice(payload);
        self.end(at);
    }

    fn name(&mut self, kind: u16, name: &str) {
        let mut s = name.as_bytes().to_vec();
        s.push(0);
        self.attr(kind, &s);
    }

    fn finish(mut self) -> Vec<u8> {
        self.pad();
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `RTM_NEWLINK` creating link `name` of `kind` (a veth with `peer`), in the namespace of
/// `ns_pid` when given.
fn create_request(name: &str, kind: &str, peer: Option<&str>, ns_pid: Option<i32>) -> Vec<u8> {
    let mut m = LinkMsg::new(NLM_F_CREATE | NLM_F_EXCL, 0);
    m.name(IFLA_IFNAME, name);
    if let Some(pid) = ns_pid {
        m.attr(IFLA_NET_NS_PID, &pid.to_ne_bytes());
    }
    let info = m.begin(IFLA_LINKINFO);
    m.name(IFLA_INFO_KIND, kind);
    if let Some(peer) = peer {
        let data = m.begin(IFLA_INFO_DATA);
        let peer_at = m.begin(VETH_INFO_PEER);
        LinkMsg::push_ifinfo(&mut m.buf, 0);
        m.name(IFLA_IFNAME, peer);
        m.end(peer_at);
        m.end(data);
    }
    m.end(info);
    m.finish()
}

/// `RTM_NEWLINK` moving link `index` into the network namespace of `pid`.
fn move_request(index: i32, pid: i32) -> Vec<u8> {
    let mut m = LinkMsg::new(0, index);
    m.attr(IFLA_NET_NS_PID, &pid.to_ne_bytes());
    m.finish()
}

/// The errno carried by an `NLMSG_ERROR` reply (0 is an ack), if `reply` starts with one.
fn reply_errno(reply: &[u8]) -> Option<i32> {
    if reply.len() < NLMSG_HDRLEN + 4 {
        return None;
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != NLMSG_ERROR {
        return None;
    }
    let b = &reply[NLMSG_HDRLEN..NLMSG_HDRLEN + 4];
    Some(-i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn open() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?)
}

/// Sends one request and waits for its ack.
fn request(sock: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    sendto(
        sock.as_raw_fd(),
        msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        match reply_errno(&buf[..n]) {
            Some(0) => return Ok(()),
            Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
            // Not an ack (should not happen for these requests): keep reading.
            None => continue,
        }
    }
}

fn index_of(name: &str) -> Result<i32, NetlinkError> {
    let index = nix::net::if_::if_nametoindex(name)
        .map_err(|e| NetlinkError::NotFound(name.to_owned(), e))?;
    i32::try_from(index).map_err(|_| NetlinkError::NotFound(name.to_owned(), nix::Error::ERANGE))
}

/// Applies `interfaces` for the container whose init is `pid` (in the root namespace).
pub fn apply_interfaces(pid: i32, interfaces: &[Interface]) -> Result<(), NetlinkError> {
    if interfaces.is_empty() {
        return Ok(());
    }
    let sock = open().map_err(NetlinkError::Socket)?;
    for iface in interfaces {
        let name = iface.name.as_str();
        if name.is_empty() {
            return Err(NetlinkError::NoName);
        }
        let peer = iface.peer.as_deref().filter(|p| !p.is_empty());
        let add = match iface.add.as_deref().filter(|a| !a.is_empty()) {
            Some(a) => Some(a),
            None if peer.is_some() => Some("veth"),
            None => None,
        };
        let in_root = iface.create_in_root || add == Some("veth");
        let must_move = in_root || add.is_none();
        if let Some(kind) = add {
            let peer = if kind == "veth" {
                Some(peer.ok_or_else(|| NetlinkError::NoPeer(name.to_owned()))?)
            } else {
                None
            };
            let msg = create_request(name, kind, peer, (!in_root).then_some(pid));
            request(&sock, &msg).map_err(|err| NetlinkError::Create {
                name: name.to_owned(),
                kind: kind.to_owned(),
                err,
            })?;
            log::info!("created interface {name} type {kind}");
        }
        if must_move {
            let index = index_of(name)?;
            request(&sock, &move_request(index, pid)).map_err(|err| NetlinkError::Move {
                name: name.to_owned(),
                pid,
                err,
            })?;
            log::info!("moved interface {name} to pid {pid}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn move_request_layout() {
        let m = move_request(7, 1234);
        assert_eq!(m.len(), NLMSG_HDRLEN + IFINFOMSG_LEN + 8);
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(u16_at(&m, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        let idx = NLMSG_HDRLEN + 4;
        assert_eq!(
            i32::from_ne_bytes([m[idx], m[idx + 1], m[idx + 2], m[idx + 3]]),
            7
        );
        let attr = NLMSG_HDRLEN + IFINFOMSG_LEN;
        assert_eq!(u16_at(&m, attr), 8);
        assert_eq!(u16_at(&m, attr + 2), IFLA_NET_NS_PID);
        assert_eq!(
            i32::from_ne_bytes([m[attr + 4], m[attr + 5], m[attr + 6], m[attr + 7]]),
            1234
        );
    }

    #[test]
    fn veth_request_nests_the_peer() {
        let m = create_request("eth1", "veth", Some("veth-peer"), None);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u16_at(&m, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        // IFLA_IFNAME "eth1\0" = 4 + 5 bytes, padded to 12.
        let a = NLMSG_HDRLEN + IFINFOMSG_LEN;
        assert_eq!(u16_at(&m, a), 9);
        assert_eq!(u16_at(&m, a + 2), IFLA_IFNAME);
        assert_eq!(&m[a + 4..a + 9], b"eth1\0");
        let info = a + 12;
        assert_eq!(u16_at(&m, info + 2), IFLA_LINKINFO);
        assert_eq!(u16_at(&m, info) as usize, m.len() - info);
        // kind "veth\0"
        assert_eq!(u16_at(&m, info + 6), IFLA_INFO_KIND);
        assert_eq!(&m[info + 8..info + 13], b"veth\0");
        let data = info + 4 + 12;
        assert_eq!(u16_at(&m, data + 2), IFLA_INFO_DATA);
        assert_eq!(u16_at(&m, data + 6), VETH_INFO_PEER);
        // peer: ifinfomsg then its name
        let peer_name = data + 8 + IFINFOMSG_LEN;
        assert_eq!(u16_at(&m, peer_name + 2), IFLA_IFNAME);
        assert_eq!(&m[peer_name + 4..peer_name + 14], b"veth-peer\0");
    }

    #[test]
    fn generic_link_in_namespace_has_pid_and_no_data() {
        let m = create_request("wg0", "wireguard", None, Some(99));
        let a = NLMSG_HDRLEN + IFINFOMSG_LEN + 8; // after "wg0\0"
        assert_eq!(u16_at(&m, a + 2), IFLA_NET_NS_PID);
        let info = a + 8;
        assert_eq!(u16_at(&m, info + 2), IFLA_LINKINFO);
        assert_eq!(u16_at(&m, info) as usize, 4 + 4 + 10 + 2); // kind "wireguard\0" padded
    }

    #[test]
    fn acks_and_errors_decode() {
        let mut reply = vec![0u8; 36];
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(reply_errno(&reply), Some(0));
        reply[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(reply_errno(&reply), Some(17));
        reply[4..6].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(reply_errno(&reply), None);
        assert_eq!(reply_errno(&[0u8; 4]), None);
    }

    #[test]
    fn bad_entries_are_refused_before_any_request() {
        let no_name = Interface::default();
        assert!(matches!(
            apply_interfaces(1, &[no_name]),
            Err(NetlinkError::NoName)
        ));
        let veth = Interface {
            name: "x0".into(),
            add: Some("veth".into()),
            ..Interface::default()
        };
        assert!(matches!(
            apply_interfaces(1, &[veth]),
            Err(NetlinkError::NoPeer(_))
        ));
    }
}
