//! Server addresses as operators write them ("host:port" or "memcache://host:port"),
//! turned into the `host:port` name the client connects to and keys are hashed on.

use memcache::Url;

/// The port memcached listens on when an address names none.
const DEFAULT_PORT: u16 = 11211;

/// Parses `spec` into the server's `host:port` name, the same however the address was
/// written: keys are hashed on it, so every node must derive the same name for the same
/// server. A query part (options of the classic memcache client) is accepted and
/// ignored: timeouts and pool sizes come from the store's options.
pub(crate) fn parse(spec: &str) -> Result<String, String> {
    let spec = spec.trim();
    let with_scheme = if spec.contains("://") {
        spec.to_owned()
    } else {
        format!("memcache://{spec}")
    };
    let url = Url::parse(&with_scheme)
        .map_err(|e| format!("memcached server {spec:?} is not host:port or a URL: {e}"))?;
    if !matches!(url.scheme(), "memcache" | "memcache+tcp") {
        return Err(format!(
            "memcached server {spec:?}: scheme must be memcache:// (TCP only)"
        ));
    }
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host,
        _ => return Err(format!("memcached server {spec:?} names no host")),
    };
    let port = url.port().unwrap_or(DEFAULT_PORT);
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_url_forms_name_the_same_server() {
        assert_eq!(parse("127.0.0.1:11311").unwrap(), "127.0.0.1:11311");
        assert_eq!(
            parse("memcache://127.0.0.1:11311").unwrap(),
            "127.0.0.1:11311"
        );
    }

    #[test]
    fn hostnames_and_the_default_port_work() {
        assert_eq!(parse("cache.internal").unwrap(), "cache.internal:11211");
        assert_eq!(parse("localhost:11212").unwrap(), "localhost:11212");
        assert_eq!(parse("[::1]:11213").unwrap(), "[::1]:11213");
    }

    #[test]
    fn a_query_part_does_not_change_the_name() {
        assert_eq!(
            parse("memcache://h:1?timeout=30&protocol=ascii").unwrap(),
            "h:1"
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
            let error = parse(spec).unwrap_err();
            assert!(error.contains(spec), "{error}");
        }
    }
}
