//! Which router URLs this node may contact. Node records come from memcached, which
//! anyone on its network can write: a record naming some other host must not make this
//! node send it a signed request (nor the uaid in its path).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use reqwest::Url;
use url::Host;

/// The router URLs this node routes to: `http(s)://HOST[:PORT]` with HOST an IP address
/// inside one of the networks, or one of the host names, exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    networks: Vec<IpNet>,
    /// Lower case, as the URL parser spells a host.
    hosts: Vec<String>,
}

impl Peers {
    /// `[router] peers`: each entry a CIDR (`10.0.0.0/24`), an address (one host) or a
    /// host name. Empty: the networks of `router_addr` (see [`Peers::around`]).
    /// Errors name the entry that is none of these.
    pub fn from_config(entries: &[String], router_addr: SocketAddr) -> Result<Peers, String> {
        if entries.is_empty() {
            return Ok(Peers::around(router_addr.ip()));
        }
        let mut peers = Peers {
            networks: Vec::new(),
            hosts: Vec::new(),
        };
        for entry in entries {
            let entry = entry.trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                peers.networks.push(net.trunc());
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                peers.networks.push(IpNet::from(ip));
            } else if is_host_name(entry) {
                peers.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "`{entry}` is not a network (10.0.0.0/24), an address or a host name"
                ));
            }
        }
        Ok(peers)
    }

    /// The default peers of a router listening on `ip`: loopback → 127.0.0.0/8 and ::1;
    /// the unspecified address → the network of every interface of this host; another
    /// address → the network of the interface that has it (its /24, or /64 for IPv6,
    /// when the interfaces cannot be read).
    pub fn around(ip: IpAddr) -> Peers {
        let networks = if ip.is_loopback() {
            loopback()
        } else {
            let interfaces: Vec<IpNet> = if_addrs::get_if_addrs()
                .unwrap_or_default()
                .iter()
                .filter_map(|interface| interface_network(&interface.addr))
                .collect();
            if ip.is_unspecified() {
                interfaces
            } else {
                let own: Vec<IpNet> = interfaces
                    .into_iter()
                    .filter(|net| net.addr() == ip)
                    .map(|net| net.trunc())
                    .collect();
                if own.is_empty() {
                    let prefix = if ip.is_ipv4() { 24 } else { 64 };
                    IpNet::new(ip, prefix)
                        .map(|n| vec![n.trunc()])
                        .unwrap_or_default()
                } else {
                    own
                }
            }
        };
        Peers {
            networks,
            hosts: Vec::new(),
        }
    }

    /// The origin (`scheme://host[:port]`) of a router URL from the store when it is one
    /// this node may contact: http or https, no user, path, query or fragment, and the
    /// host inside the peers. `None` for anything else.
    pub fn admit(&self, node: &str) -> Option<Url> {
        let url = Url::parse(node).ok()?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.username().is_empty()
            && url.password().is_none()
            && matches!(url.path(), "" | "/")
            && url.query().is_none()
            && url.fragment().is_none();
        if !plain {
            return None;
        }
        let allowed = match url.host()? {
            Host::Ipv4(ip) => self.contains(IpAddr::V4(ip)),
            Host::Ipv6(ip) => {
                self.contains(IpAddr::V6(ip))
                    || ip
                        .to_ipv4_mapped()
                        .is_some_and(|v4| self.contains(v4.into()))
            }
            Host::Domain(name) => self.hosts.iter().any(|host| host == name),
        };
        allowed.then_some(url)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&ip))
    }
}

/// 127.0.0.0/8 and ::1.
fn loopback() -> Vec<IpNet> {
    vec![
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

/// The network an interface address belongs to.
fn interface_network(addr: &if_addrs::IfAddr) -> Option<IpNet> {
    let net = match addr {
        if_addrs::IfAddr::V4(v4) => IpNet::with_netmask(v4.ip.into(), v4.netmask.into()),
        if_addrs::IfAddr::V6(v6) => IpNet::with_netmask(v6.ip.into(), v6.netmask.into()),
    };
    // Keep the address itself: `around` finds the interface of a concrete address by it.
    net.ok()
}

/// Letters, digits, `-` and `.`; what a DNS host name is made of.
fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !text.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(entries: &[&str]) -> Peers {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        Peers::from_config(&entries, SocketAddr::from(([127, 0, 0, 1], 3000))).unwrap()
    }

    #[test]
    fn only_plain_http_urls_of_listed_hosts_are_admitted() {
        let peers = peers(&["10.0.0.0/24", "192.168.1.7", "Node-3.internal"]);
        for good in [
            "http://10.0.0.11:3000",
            "https://10.0.0.200",
            "http://10.0.0.11:3000/",
            "http://192.168.1.7:3000",
            "http://node-3.internal:3000",
            "http://[::ffff:10.0.0.1]:3000",
        ] {
            assert!(peers.admit(good).is_some(), "{good}");
        }
        for bad in [
            "http://10.0.1.1:3000",
            "http://192.168.1.8:3000",
            "http://node-4.internal:3000",
            "http://node-3.internal.evil:3000",
            "ftp://10.0.0.11",
            "file:///etc/passwd",
            "http://user:pw@10.0.0.11:3000",
            "http://10.0.0.11:3000/route/elsewhere",
            "http://10.0.0.11:3000?x=1",
            "http://10.0.0.11:3000#x",
            "not a url",
            "",
        ] {
            assert!(peers.admit(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bad_entries_are_errors_naming_them() {
        let entries = vec!["10.0.0.0/24".to_owned(), "10.0.0.0/99".to_owned()];
        let error =
            Peers::from_config(&entries, SocketAddr::from(([127, 0, 0, 1], 1))).unwrap_err();
        assert!(error.contains("10.0.0.0/99"), "{error}");
        let entries = vec!["http://x".to_owned()];
        assert!(Peers::from_config(&entries, SocketAddr::from(([127, 0, 0, 1], 1))).is_err());
    }

    #[test]
    fn the_default_is_the_router_listeners_network() {
        let local = Peers::from_config(&[], SocketAddr::from(([127, 0, 0, 1], 3000))).unwrap();
        assert!(local.admit("http://127.0.0.1:4000").is_some());
        assert!(local.admit("http://127.9.9.9:4000").is_some());
        assert!(local.admit("http://[::1]:4000").is_some());
        assert!(local.admit("http://10.0.0.1:4000").is_none());
        assert!(
            local.admit("http://localhost:4000").is_none(),
            "names only when listed"
        );
        // An address no interface has: its /24.
        let lan = Peers::around(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));
        assert!(lan.admit("http://198.51.100.200:3000").is_some());
        assert!(lan.admit("http://198.51.101.1:3000").is_none());
        // The unspecified address: every interface's network, loopback included.
        let any = Peers::around(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(any.admit("http://127.0.0.1:3000").is_some());
    }
}
