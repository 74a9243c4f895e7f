//! The DHCP server and ARP responder of a cluster network: answers a node's DHCPDISCOVER and
//! DHCPREQUEST with the one address keel assigned to that node's MAC, and ARP requests for its
//! own address (so unicast renewals reach it). It answers nothing else: an unknown MAC, a
//! malformed or truncated packet, or a request for another address gets no lease.
//!
//! The leases carry an address and a netmask only — no router and no DNS server — so a node's
//! default route and resolver stay on its user-mode NIC.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Group addresses (broadcast and multicast) have the low bit of the first byte set.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes separated by colons")]
pub struct BadMac(String);

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Mac, BadMac> {
        let bad = || BadMac(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

/// The network's own identity and the address each node's MAC gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub mac: Mac,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub leases: BTreeMap<Mac, Ipv4Addr>,
}

/// How long a lease lasts. Long: the addresses never change, and a renewal is traffic that
/// only proves what both sides know.
pub const LEASE_SECONDS: u32 = 86_400;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETH_HEADER: usize = 14;
const UDP_HEADER: usize = 8;
const IP_PROTO_UDP: u8 = 17;
const BOOTP_SERVER_PORT: u16 = 67;
const BOOTP_CLIENT_PORT: u16 = 68;
/// The fixed part of a BOOTP message, up to and including the magic cookie.
const BOOTP_FIXED: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Replies are padded to BOOTP's minimum message size: some clients drop shorter ones.
const BOOTP_MIN: usize = 300;

// DHCP message types (option 53).
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

// DHCP options.
const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_REQUESTED_ADDR: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_END: u8 = 255;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at + 4)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

/// A DHCP client message, as far as this server reads it.
#[derive(Debug, PartialEq, Eq)]
struct ClientMessage {
    kind: u8,
    xid: [u8; 4],
    flags: [u8; 2],
    client: Mac,
    ciaddr: Ipv4Addr,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

impl Server {
    /// What the network answers to `frame`, an Ethernet frame a node sent: a DHCP or ARP
    /// reply for that node, or `None` when the frame is not for this server.
    pub fn answer(&self, frame: &[u8]) -> Option<Vec<u8>> {
        match be16(frame, 12)? {
            ETHERTYPE_IPV4 => self.answer_dhcp(frame),
            ETHERTYPE_ARP => self.answer_arp(frame),
            _ => None,
        }
    }

    /// True when `frame` is addressed to this server alone (its MAC), so the switch need not
    /// pass it on.
    pub fn is_for_server(&self, frame: &[u8]) -> bool {
        frame.get(..6) == Some(&self.mac.0[..])
    }

    fn answer_arp(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let arp = frame.get(ETH_HEADER..ETH_HEADER + 28)?;
        // Ethernet/IPv4, a request, for this server's address.
        if arp[..8] != [0, 1, 8, 0, 6, 4, 0, 1] || ipv4_at(arp, 24)? != self.addr {
            return None;
        }
        let sender_mac = &arp[8..14];
        let sender_ip = &arp[14..18];
        let mut reply = Vec::with_capacity(ETH_HEADER + 28);
        reply.extend_from_slice(sender_mac);
        reply.extend_from_slice(&self.mac.0);
        reply.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        reply.extend_from_slice(&self.mac.0);
        reply.extend_from_slice(&self.addr.octets());
        reply.extend_from_slice(sender_mac);
        reply.extend_from_slice(sender_ip);
        Some(reply)
    }

    fn answer_dhcp(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let msg = parse_client_message(frame)?;
        let Some(&assigned) = self.leases.get(&msg.client) else {
            log::debug!("dhcp: no lease for {}", msg.client);
            return None;
        };
        let reply = match msg.kind {
            DISCOVER => OFFER,
            REQUEST => {
                // A client that chose another server is not ours to answer.
                if msg.server_id.is_some_and(|id| id != self.addr) {
                    return None;
                }
                let wanted = msg
                    .requested
                    .or((!msg.ciaddr.is_unspecified()).then_some(msg.ciaddr));
                if wanted.is_some_and(|w| w != assigned) {
                    NAK
                } else {
                    ACK
                }
            }
            _ => return None,
        };
        Some(self.reply(&msg, reply, assigned))
    }

    fn reply(&self, msg: &ClientMessage, kind: u8, assigned: Ipv4Addr) -> Vec<u8> {
        let yiaddr = if kind == NAK {
            Ipv4Addr::UNSPECIFIED
        } else {
            assigned
        };
        let mut bootp = vec![0u8; BOOTP_FIXED];
        bootp[0] = 2; // BOOTREPLY
        bootp[1] = 1; // Ethernet
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&msg.xid);
        bootp[10..12].copy_from_slice(&msg.flags);
        bootp[16..20].copy_from_slice(&yiaddr.octets());
        bootp[28..34].copy_from_slice(&msg.client.0);
        bootp[236..240].copy_from_slice(&MAGIC_COOKIE);
        bootp.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind]);
        bootp.extend_from_slice(&[OPT_SERVER_ID, 4]);
        bootp.extend_from_slice(&self.addr.octets());
        if kind != NAK {
            bootp.extend_from_slice(&[OPT_LEASE_TIME, 4]);
            bootp.extend_from_slice(&LEASE_SECONDS.to_be_bytes());
            bootp.extend_from_slice(&[OPT_SUBNET_MASK, 4]);
            bootp.extend_from_slice(&netmask(self.prefix_len).octets());
        }
        bootp.push(OPT_END);
        if bootp.len() < BOOTP_MIN {
            bootp.resize(BOOTP_MIN, OPT_PAD);
        }

        // The client has no address yet: the reply goes to its MAC and the broadcast address.
        let udp_len = UDP_HEADER + bootp.len();
        let ip_len = 20 + udp_len;
        let mut ip = Vec::with_capacity(ip_len);
        ip.extend_from_slice(&[0x45, 0]);
        ip.extend_from_slice(&u16::try_from(ip_len).unwrap_or(u16::MAX).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, IP_PROTO_UDP, 0, 0]);
        ip.extend_from_slice(&self.addr.octets());
        ip.extend_from_slice(&Ipv4Addr::BROADCAST.octets());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(&BOOTP_SERVER_PORT.to_be_bytes());
        ip.extend_from_slice(&BOOTP_CLIENT_PORT.to_be_bytes());
        ip.extend_from_slice(&u16::try_from(udp_len).unwrap_or(u16::MAX).to_be_bytes());
        // No UDP checksum: optional over IPv4 (RFC 768), and every client accepts zero.
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&bootp);

        let mut frame = Vec::with_capacity(ETH_HEADER + ip.len());
        frame.extend_from_slice(&msg.client.0);
        frame.extend_from_slice(&self.mac.0);
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame
    }
}

/// The netmask of a prefix length (0–32; longer is taken as 32).
pub fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// The Internet checksum (RFC 1071) of an IPv4 header.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Reads a DHCP client message out of an Ethernet frame: IPv4, UDP to port 67, a BOOTREQUEST
/// for Ethernet with the magic cookie and a message type. Every length is checked against
/// what the frame holds; anything else is `None`.
fn parse_client_message(frame: &[u8]) -> Option<ClientMessage> {
    let ip = frame.get(ETH_HEADER..)?;
    let version_ihl = *ip.first()?;
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 || *ip.get(9)? != IP_PROTO_UDP {
        return None;
    }
    let total = usize::from(be16(ip, 2)?);
    let ip = ip.get(..total)?;
    let udp = ip.get(ihl..)?;
    if be16(udp, 2)? != BOOTP_SERVER_PORT {
        return None;
    }
    let udp_len = usize::from(be16(udp, 4)?);
    if udp_len < UDP_HEADER {
        return None;
    }
    let bootp = udp.get(UDP_HEADER..udp_len)?;
    if bootp.len() < BOOTP_FIXED
        || bootp[0] != 1
        || bootp[1] != 1
        || bootp[2] != 6
        || bootp[236..240] != MAGIC_COOKIE
    {
        return None;
    }
    let mut msg = ClientMessage {
        kind: 0,
        xid: bootp[4..8].try_into().ok()?,
        flags: bootp[10..12].try_into().ok()?,
        ciaddr: ipv4_at(bootp, 12)?,
        client: Mac(bootp[28..34].try_into().ok()?),
        requested: None,
        server_id: None,
    };
    let mut options = &bootp[BOOTP_FIXED..];
    while let Some((&code, rest)) = options.split_first() {
        match code {
            OPT_PAD => options = rest,
            OPT_END => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                match (code, value) {
                    (OPT_MESSAGE_TYPE, [kind]) => msg.kind = *kind,
                    (OPT_REQUESTED_ADDR, [a, b, c, d]) => {
                        msg.requested = Some(Ipv4Addr::new(*a, *b, *c, *d));
                    }
                    (OPT_SERVER_ID, [a, b, c, d]) => {
                        msg.server_id = Some(Ipv4Addr::new(*a, *b, *c, *d));
                    }
                    _ => {}
                }
                options = &rest[usize::from(len)..];
            }
        }
    }
    (msg.kind != 0).then_some(msg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const NODE: Mac = Mac([2, 0x6b, 0x65, 0, 0, 1]);

    pub(crate) fn server() -> Server {
        Server {
            mac: Mac([2, 0x6b, 0x65, 0, 0, 0]),
            addr: Ipv4Addr::new(192, 168, 76, 1),
            prefix_len: 24,
            leases: BTreeMap::from([(NODE, Ipv4Addr::new(192, 168, 76, 11))]),
        }
    }

    /// A client message as busybox's udhcpc sends it, broadcast.
    pub(crate) fn request(client: Mac, kind: u8, options: &[u8]) -> Vec<u8> {
        let mut bootp = vec![0u8; BOOTP_FIXED];
        bootp[0] = 1;
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        bootp[28..34].copy_from_slice(&client.0);
        bootp[236..240].copy_from_slice(&MAGIC_COOKIE);
        bootp.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind]);
        bootp.extend_from_slice(options);
        bootp.push(OPT_END);
        let udp_len = UDP_HEADER + bootp.len();
        let mut frame = Vec::new();
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&client.0);
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&u16::try_from(20 + udp_len).unwrap().to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0, 64, IP_PROTO_UDP, 0, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&[255, 255, 255, 255]);
        frame.extend_from_slice(&68u16.to_be_bytes());
        frame.extend_from_slice(&67u16.to_be_bytes());
        frame.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&bootp);
        frame
    }

    /// The message type, your-address and options of a reply, checked as a client would.
    fn read_reply(frame: &[u8]) -> (u8, Ipv4Addr, Vec<(u8, Vec<u8>)>) {
        assert_eq!(&frame[..6], &NODE.0, "to the client's MAC");
        assert_eq!(be16(frame, 12), Some(ETHERTYPE_IPV4));
        let ip = &frame[ETH_HEADER..];
        assert_eq!(checksum(&ip[..20]), 0, "a valid IPv4 header checksum");
        assert_eq!(usize::from(be16(ip, 2).unwrap()), ip.len());
        assert_eq!(be16(ip, 20), Some(67));
        assert_eq!(be16(ip, 22), Some(68));
        let bootp = &ip[28..];
        assert!(bootp.len() >= BOOTP_MIN);
        assert_eq!(bootp[0], 2);
        assert_eq!(&bootp[4..8], &[0xde, 0xad, 0xbe, 0xef], "the request's xid");
        assert_eq!(&bootp[28..34], &NODE.0);
        let mut options = Vec::new();
        let mut rest = &bootp[BOOTP_FIXED..];
        while let Some((&code, tail)) = rest.split_first() {
            if code == OPT_END {
                break;
            }
            let len = usize::from(tail[0]);
            options.push((code, tail[1..=len].to_vec()));
            rest = &tail[1 + len..];
        }
        let kind = options
            .iter()
            .find(|(c, _)| *c == OPT_MESSAGE_TYPE)
            .unwrap()
            .1[0];
        (kind, ipv4_at(bootp, 16).unwrap(), options)
    }

    #[test]
    fn discover_gets_the_assigned_address_and_no_route() {
        let (kind, yiaddr, options) =
            read_reply(&server().answer(&request(NODE, DISCOVER, &[])).unwrap());
        assert_eq!(kind, OFFER);
        assert_eq!(yiaddr, Ipv4Addr::new(192, 168, 76, 11));
        let codes: Vec<u8> = options.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            codes,
            [
                OPT_MESSAGE_TYPE,
                OPT_SERVER_ID,
                OPT_LEASE_TIME,
                OPT_SUBNET_MASK
            ]
        );
        assert_eq!(options[3].1, [255, 255, 255, 0]);
    }

    #[test]
    fn request_for_the_assigned_address_is_acked_and_another_is_refused() {
        let ours = [OPT_SERVER_ID, 4, 192, 168, 76, 1];
        let mut good = ours.to_vec();
        good.extend_from_slice(&[OPT_REQUESTED_ADDR, 4, 192, 168, 76, 11]);
        let (kind, yiaddr, _) =
            read_reply(&server().answer(&request(NODE, REQUEST, &good)).unwrap());
        assert_eq!((kind, yiaddr), (ACK, Ipv4Addr::new(192, 168, 76, 11)));

        let mut other = ours.to_vec();
        other.extend_from_slice(&[OPT_REQUESTED_ADDR, 4, 192, 168, 76, 99]);
        let (kind, yiaddr, _) =
            read_reply(&server().answer(&request(NODE, REQUEST, &other)).unwrap());
        assert_eq!((kind, yiaddr), (NAK, Ipv4Addr::UNSPECIFIED));

        // A request to another server is that server's business.
        let elsewhere = [OPT_SERVER_ID, 4, 10, 0, 2, 2];
        assert_eq!(server().answer(&request(NODE, REQUEST, &elsewhere)), None);
    }

    #[test]
    fn unknown_clients_and_other_messages_get_nothing() {
        let stranger = Mac([2, 0, 0, 0, 0, 9]);
        assert_eq!(server().answer(&request(stranger, DISCOVER, &[])), None);
        // DHCPRELEASE, DHCPINFORM: no reply.
        assert_eq!(server().answer(&request(NODE, 7, &[])), None);
        assert_eq!(server().answer(&request(NODE, 8, &[])), None);
    }

    #[test]
    fn hostile_frames_get_nothing() {
        let good = request(NODE, DISCOVER, &[]);
        // Every truncation of a valid request.
        for len in 0..good.len() - 1 {
            assert_eq!(server().answer(&good[..len]), None, "truncated to {len}");
        }
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut f = good.clone();
        f[ETH_HEADER + 2..ETH_HEADER + 4].copy_from_slice(&0xffffu16.to_be_bytes());
        cases.push(("IP length past the frame", f));
        let mut f = good.clone();
        f[ETH_HEADER] = 0x4f; // IHL 60 bytes: the UDP header would start inside BOOTP
        cases.push(("IHL past the UDP header", f));
        let mut f = good.clone();
        f[ETH_HEADER] = 0x41;
        cases.push(("IHL below 20", f));
        let mut f = good.clone();
        f[ETH_HEADER + 24..ETH_HEADER + 26].copy_from_slice(&3u16.to_be_bytes());
        cases.push(("UDP length below its header", f));
        let mut f = good.clone();
        f[ETH_HEADER + 24..ETH_HEADER + 26].copy_from_slice(&0xffffu16.to_be_bytes());
        cases.push(("UDP length past the packet", f));
        let mut f = good.clone();
        f[ETH_HEADER + 28 + 236] = 0;
        cases.push(("no magic cookie", f));
        // An option whose length runs past the end.
        let mut f = request(NODE, DISCOVER, &[OPT_SERVER_ID, 200, 1, 2]);
        f.pop();
        cases.push(("option past the end", f));
        // Options that never end, without a message type.
        let mut f = good.clone();
        let opts = ETH_HEADER + 28 + BOOTP_FIXED;
        f.truncate(opts);
        f.extend(std::iter::repeat_n(OPT_PAD, 4000));
        cases.push(("only padding", f));
        // A message type option of the wrong size.
        cases.push((
            "two-byte message type",
            request(NODE, 0, &[OPT_MESSAGE_TYPE, 2, DISCOVER, DISCOVER]),
        ));
        for (what, frame) in cases {
            assert_eq!(server().answer(&frame), None, "{what}");
        }
    }

    #[test]
    fn arp_for_the_server_is_answered() {
        let mut arp = Vec::new();
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&NODE.0);
        arp.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&NODE.0);
        arp.extend_from_slice(&[192, 168, 76, 11]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[192, 168, 76, 1]);
        let reply = server().answer(&arp).unwrap();
        assert_eq!(&reply[..6], &NODE.0);
        assert_eq!(&reply[ETH_HEADER + 6..ETH_HEADER + 8], &[0, 2], "a reply");
        assert_eq!(&reply[ETH_HEADER + 8..ETH_HEADER + 14], &server().mac.0);
        assert_eq!(
            &reply[ETH_HEADER + 24..ETH_HEADER + 28],
            &[192, 168, 76, 11]
        );
        // For another address, or truncated: nothing.
        let mut other = arp.clone();
        other[ETH_HEADER + 27] = 12;
        assert_eq!(server().answer(&other), None);
        assert_eq!(server().answer(&arp[..arp.len() - 1]), None);
    }

    #[test]
    fn macs_and_netmasks() {
        let mac: Mac = "02:6b:65:00:00:01".parse().unwrap();
        assert_eq!(mac, NODE);
        assert_eq!(mac.to_string(), "02:6b:65:00:00:01");
        assert!(Mac::BROADCAST.is_group() && !mac.is_group());
        for bad in [
            "",
            "02:6b:65:00:00",
            "02:6b:65:00:00:01:02",
            "2:6b:65:00:00:01",
            "zz:6b:65:00:00:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
    }
}
