//! The `ip` filter: lets clients in or turns them away by where they connect from: IP address or
//! network, Unix socket credentials (pid, uid, gid), vsock CID or port, or the subject of their
//! TLS client certificate.
//!
//! A client matching any `allow=` rule is let in; otherwise one matching any `deny=` rule is
//! refused; anyone else is let in. The decision is made in `preconnect`, before the handshake,
//! except when a `dn:` rule is present: the certificate is only known after STARTTLS, so then the
//! whole decision waits for `open`, and a refused client gets `NBD_REP_ERR_POLICY`.

use std::net::IpAddr;
use std::sync::Arc;

use nbdforge_api::{
    debug, Backend, ClientInfo, Error, Filter, Handle, Layer, LayerInfo, OpenArgs, Peer, Registration, Result,
};

/// The filter's entry in the server's table.
pub fn registration() -> Registration {
    let info = LayerInfo::new("ip", "filters clients by IP address, Unix credentials, vsock or TLS DN").help(
        "allow=addr[,addr...]           Clients to allow.\n\
         deny=addr[,addr...]            Clients to deny.",
    );
    Registration::filter(info, IpFilter::default)
}

/// One item of an allow or deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Any,
    AnyIpv4,
    AnyIpv6,
    AnyUnix,
    AnyVsock,
    Ipv4 {
        network: u32,
        prefix: u32,
    },
    Ipv6 {
        network: u128,
        prefix: u32,
    },
    Pid(i32),
    Uid(u32),
    Gid(u32),
    VsockCid(u32),
    VsockPort(u32),
    /// The subject DN of a verified TLS client certificate, compared as a whole string.
    Dn(String),
}

/// Makes a rule from the number after its prefix (`uid:1000`).
type MakeRule = fn(u32) -> Rule;

/// The top `prefix` bits of a `width`-bit number.
fn mask(prefix: u32, width: u32) -> u128 {
    let all = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
    all.checked_shl(width - prefix).map_or(0, |m| m & all)
}

impl Rule {
    /// Parses one item; `key=value` is the whole parameter, for errors.
    fn parse(key: &str, value: &str, item: &str) -> Result<Rule> {
        let fail = |why: String| Error::invalid(format!("{key}={value}: '{item}': {why}"));
        let rule = match item {
            "all" | "any" => Rule::Any,
            "allipv4" | "anyipv4" => Rule::AnyIpv4,
            "allipv6" | "anyipv6" => Rule::AnyIpv6,
            "allunix" | "anyunix" => Rule::AnyUnix,
            "allvsock" | "anyvsock" => Rule::AnyVsock,
            _ => {
                let number = |n: &str| n.parse::<u32>().map_err(|_| fail("not a number".into()));
                if let Some(n) = item.strip_prefix("pid:") {
                    let pid = n.parse::<i32>().map_err(|_| fail("not a process id".into()))?;
                    return Ok(Rule::Pid(pid));
                }
                let numbered: [(&str, MakeRule); 4] = [
                    ("uid:", Rule::Uid),
                    ("gid:", Rule::Gid),
                    ("vsock-cid:", Rule::VsockCid),
                    ("vsock-port:", Rule::VsockPort),
                ];
                for (prefix, make) in numbered {
                    if let Some(n) = item.strip_prefix(prefix) {
                        return Ok(make(number(n)?));
                    }
                }
                if let Some(dn) = item.strip_prefix("dn:").filter(|dn| !dn.is_empty()) {
                    return Ok(Rule::Dn(dn.to_string()));
                }
                if item.starts_with("security:") {
                    return Err(fail(
                        "security labels are not supported: nbdforge does not know the peer's label".into(),
                    ));
                }
                let (address, prefix) = match item.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (item, None),
                };
                let address: IpAddr =
                    address.parse().map_err(|_| fail("not an IP address, network or keyword".into()))?;
                let width = if address.is_ipv4() { 32 } else { 128 };
                let prefix = match prefix {
                    None => width,
                    Some(p) => p
                        .parse::<u32>()
                        .ok()
                        .filter(|p| *p <= width)
                        .ok_or_else(|| fail(format!("the prefix length must be 0 to {width}")))?,
                };
                match address {
                    IpAddr::V4(a) => Rule::Ipv4 { network: u32::from(a) & mask(prefix, 32) as u32, prefix },
                    IpAddr::V6(a) => Rule::Ipv6 { network: u128::from(a) & mask(prefix, 128), prefix },
                }
            }
        };
        Ok(rule)
    }

    fn matches(&self, client: &ClientInfo) -> bool {
        // A client on a dual-stack socket shows IPv4 addresses in IPv6 clothing.
        let ip = match &client.peer {
            Peer::Tcp(addr) => match addr.ip() {
                IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
                v4 => Some(v4),
            },
            _ => None,
        };
        let (pid, uid, gid) = match client.peer {
            Peer::Unix { pid, uid, gid } => (pid, uid, gid),
            _ => (None, None, None),
        };
        let vsock = match client.peer {
            Peer::Vsock { cid, port } => Some((cid, port)),
            _ => None,
        };
        match self {
            Rule::Any => true,
            Rule::AnyIpv4 => matches!(ip, Some(IpAddr::V4(_))),
            Rule::AnyIpv6 => matches!(ip, Some(IpAddr::V6(_))),
            Rule::AnyUnix => matches!(client.peer, Peer::Unix { .. }),
            Rule::AnyVsock => vsock.is_some(),
            Rule::Ipv4 { network, prefix } => match ip {
                Some(IpAddr::V4(a)) => u32::from(a) & mask(*prefix, 32) as u32 == *network,
                _ => false,
            },
            Rule::Ipv6 { network, prefix } => match ip {
                Some(IpAddr::V6(a)) => u128::from(a) & mask(*prefix, 128) == *network,
                _ => false,
            },
            Rule::Pid(want) => pid == Some(*want),
            Rule::Uid(want) => uid == Some(*want),
            Rule::Gid(want) => gid == Some(*want),
            Rule::VsockCid(want) => vsock.is_some_and(|(cid, _)| cid == *want),
            Rule::VsockPort(want) => vsock.is_some_and(|(_, port)| port == *want),
            Rule::Dn(want) => client.tls_dn() == Some(want.as_str()),
        }
    }
}

/// Parses a comma-separated list. A `dn:` item takes the rest of the value, commas and all,
/// since distinguished names are made of comma-separated parts: put it last.
fn parse_list(key: &str, value: &str) -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let (item, tail) =
            if rest.starts_with("dn:") { (rest, "") } else { rest.split_once(',').unwrap_or((rest, "")) };
        if item.is_empty() {
            return Err(Error::invalid(format!("{key}={value}: empty item in the list")));
        }
        rules.push(Rule::parse(key, value, item)?);
        rest = tail;
    }
    if rules.is_empty() {
        return Err(Error::invalid(format!("{key}={value}: the list is empty")));
    }
    Ok(rules)
}

/// The `ip` filter.
#[derive(Debug, Default)]
pub struct IpFilter {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl IpFilter {
    fn decides_at_open(&self) -> bool {
        self.allow.iter().chain(&self.deny).any(|r| matches!(r, Rule::Dn(_)))
    }

    fn check(&self, client: &ClientInfo) -> Result<()> {
        if self.allow.iter().any(|r| r.matches(client)) {
            return Ok(());
        }
        if self.deny.iter().any(|r| r.matches(client)) {
            debug!("client {} denied", client.peer_name());
            // nbdkit's words; the peer is in the server's log line for the connection.
            return Err(Error::new(
                libc::EPERM,
                "client not permitted to connect because of source address restriction",
            ));
        }
        Ok(())
    }
}

impl Layer for IpFilter {
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "allow" => self.allow.extend(parse_list(key, value)?),
            "deny" => self.deny.extend(parse_list(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Filter for IpFilter {
    fn preconnect(&self, next: &dyn Backend, client: &ClientInfo, readonly: bool) -> Result<()> {
        if !self.decides_at_open() {
            self.check(client)?;
        }
        next.preconnect(client, readonly)
    }

    fn open(&self, next: &Arc<dyn Backend>, args: &OpenArgs) -> Result<Box<dyn Handle>> {
        if self.decides_at_open() {
            self.check(args.conn.client())?;
        }
        next.open(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdforge_api::TlsPeer;

    fn tcp(addr: &str) -> ClientInfo {
        ClientInfo { peer: Peer::Tcp(addr.parse().unwrap()), tls: None }
    }

    fn unix(uid: u32) -> ClientInfo {
        ClientInfo { peer: Peer::Unix { pid: Some(42), uid: Some(uid), gid: Some(100) }, tls: None }
    }

    fn filter(params: &[(&str, &str)]) -> IpFilter {
        let mut f = IpFilter::default();
        for (k, v) in params {
            assert!(f.config(k, v).unwrap());
        }
        f
    }

    #[test]
    fn allow_first_then_deny_then_allow() {
        let f = filter(&[("deny", "all"), ("allow", "127.0.0.1,::1,10.0.0.0/8,uid:1000")]);
        for ok in ["127.0.0.1:1", "[::1]:1", "10.1.2.3:1", "[::ffff:10.9.9.9]:1"] {
            f.check(&tcp(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["127.0.0.2:1", "[::2]:1", "11.0.0.1:1"] {
            assert_eq!(f.check(&tcp(bad)).unwrap_err().errno, libc::EPERM, "{bad}");
        }
        f.check(&unix(1000)).unwrap();
        assert!(f.check(&unix(0)).is_err());
        assert!(f.check(&ClientInfo::default()).is_err(), "stdio matches only all");
        let f = filter(&[("deny", "anyipv6,2001:db8::/32")]);
        f.check(&tcp("1.2.3.4:5")).unwrap();
        assert!(f.check(&tcp("[fe80::1]:5")).is_err());
        f.check(&unix(0)).unwrap();
        let f = filter(&[("allow", "gid:100,pid:42"), ("deny", "anyunix")]);
        f.check(&unix(5)).unwrap();
    }

    #[test]
    fn dn_rules_wait_for_tls() {
        let f = filter(&[("allow", "dn:CN=client,O=Example"), ("deny", "all")]);
        assert!(f.decides_at_open());
        let mut client = tcp("127.0.0.1:1");
        assert!(f.check(&client).is_err());
        client.tls = Some(TlsPeer { identity: None, dn: Some("CN=client,O=Example".into()), issuer_dn: None });
        f.check(&client).unwrap();
    }

    #[test]
    fn bad_rules_name_the_parameter_and_the_item() {
        let mut f = IpFilter::default();
        let e = f.config("allow", "127.0.0.1,nonsense").unwrap_err();
        assert_eq!(e.message, "allow=127.0.0.1,nonsense: 'nonsense': not an IP address, network or keyword");
        assert!(f.config("deny", "10.0.0.0/33").unwrap_err().message.contains("prefix length"));
        assert!(f.config("deny", "uid:me").unwrap_err().message.starts_with("deny=uid:me: 'uid:me':"));
        assert!(f.config("deny", "security:system_u").is_err());
        assert!(f.config("deny", "").is_err());
        assert!(f.config("deny", "all,,").is_err());
    }
}
