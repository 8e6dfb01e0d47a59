//! Server addresses as operators write them ("host:port" or "memcache://host:port"),
//! turned into the URL the memcache client connects with and the name hashing uses.

use std::time::Duration;

use memcache::Url;

/// The port memcached listens on when an address names none.
const DEFAULT_PORT: u16 = 11211;

/// One memcached server of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    /// `host:port`, the same however the address was written: keys are hashed on it,
    /// so every node must derive the same name for the same server.
    pub(crate) name: String,
    /// The URL the client connects with, carrying the socket timeout.
    pub(crate) url: Url,
}

/// Parses `spec` into an [`Address`] whose sockets time out after `timeout`.
pub(crate) fn parse(spec: &str, timeout: Duration) -> Result<Address, String> {
    let spec = spec.trim();
    let with_scheme = if spec.contains("://") {
        spec.to_owned()
    } else {
        format!("memcache://{spec}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|e| format!("memcached server {spec:?} is not host:port or a URL: {e}"))?;
    if !matches!(url.scheme(), "memcache" | "memcache+tcp") {
        return Err(format!(
            "memcached server {spec:?}: scheme must be memcache:// (TCP only)"
        ));
    }
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ => return Err(format!("memcached server {spec:?} names no host")),
    };
    let port = url.port().unwrap_or(DEFAULT_PORT);
    if url.port().is_none() && url.set_port(Some(DEFAULT_PORT)).is_err() {
        return Err(format!("memcached server {spec:?}: cannot set the port"));
    }
    // The client reads its socket timeout from the query; ours replaces any given.
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "timeout" && key != "connect_timeout")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("timeout", &timeout.as_secs_f64().to_string());
    Ok(Address {
        name: format!("{host}:{port}"),
        url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn plain_and_url_forms_name_the_same_server() {
        let plain = parse("127.0.0.1:11311", SECOND).unwrap();
        let url = parse("memcache://127.0.0.1:11311", SECOND).unwrap();
        assert_eq!(plain.name, "127.0.0.1:11311");
        assert_eq!(plain, url);
        assert_eq!(plain.url.as_str(), "memcache://127.0.0.1:11311?timeout=1");
    }

    #[test]
    fn hostnames_and_the_default_port_work() {
        let address = parse("cache.internal", SECOND).unwrap();
        assert_eq!(address.name, "cache.internal:11211");
        let address = parse("localhost:11212", SECOND).unwrap();
        assert_eq!(address.name, "localhost:11212");
        let address = parse("[::1]:11213", SECOND).unwrap();
        assert_eq!(address.name, "[::1]:11213");
    }

    #[test]
    fn our_timeout_replaces_one_in_the_url_and_other_options_stay() {
        let address = parse(
            "memcache://h:1?timeout=30&protocol=ascii",
            Duration::from_millis(250),
        )
        .unwrap();
        assert_eq!(
            address.url.as_str(),
            "memcache://h:1?protocol=ascii&timeout=0.25"
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_the_address_named() {
        for spec in [
            "http://h:1",
            "memcache+udp://h:1",
            "memcache:///tmp/sock",
            "h:notaport",
        ] {
            let error = parse(spec, SECOND).unwrap_err();
            assert!(error.contains(spec), "{error}");
        }
    }
}
