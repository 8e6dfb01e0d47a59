//! The web site of the Firefox check: a page and its service worker, served over plain
//! HTTP on `http://localhost:PORT` (localhost is a secure context, so service workers
//! and the Push API work there without TLS).
//!
//! The worker writes every `push` and `pushsubscriptionchange` event it gets into the
//! Cache API, where a script on the page reads them back, also after a browser restart.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};

/// The page: nothing on it; the check's scripts run in it through Marionette.
const PAGE: &str = "<!doctype html>\n<meta charset=\"utf-8\">\n\
                    <title>simplepush Firefox check</title>\n<p>simplepush Firefox check</p>\n";

/// The service worker. Each event becomes one cache entry, keyed so that the keys sort
/// in arrival order (`Cache.keys()` returns insertion order too).
pub const WORKER: &str = r#"// simplepush Firefox check: records every push it is woken for.
let sequence = 0;
async function record(entry) {
  const cache = await caches.open("events");
  const key = "/events/" + Date.now() + "-" + (sequence++);
  entry.at = Date.now();
  await cache.put(new Request(key), new Response(JSON.stringify(entry)));
}
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));
self.addEventListener("push", (event) => {
  const text = event.data ? event.data.text() : null;
  event.waitUntil(record({ kind: "push", text }));
});
self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil(record({ kind: "pushsubscriptionchange" }));
});
"#;

/// How long a connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// The running site; stopped (listener closed, thread joined) when dropped.
#[derive(Debug)]
pub struct Site {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Site {
    /// Serves the page and the worker on a free loopback port.
    pub fn start() -> Result<Site> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the site")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("firefox-site".into())
            .spawn(move || serve(&listener, &flag))
            .context("starting the site thread")?;
        Ok(Site {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// The page's URL: `http://localhost:PORT/`.
    pub fn url(&self) -> String {
        format!("http://localhost:{}/", self.port)
    }

    /// The address the site listens on.
    #[cfg(test)]
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            // One thread per connection: Firefox opens speculative connections that send
            // nothing, which must not hold up the real requests.
            Ok((stream, _)) => {
                let _ = thread::Builder::new()
                    .name("firefox-site-conn".into())
                    .spawn(move || {
                        let _ = answer(stream);
                    });
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Reads one request and answers it, then closes the connection.
fn answer(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers: read to the blank line, ignored.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("");
    let path = words.next().unwrap_or("");
    let (status, content_type, body) = route(method, path);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = stream;
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// What the site answers to `method path`: status line, content type, body.
fn route(method: &str, path: &str) -> (&'static str, &'static str, &'static str) {
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "text/plain", "");
    }
    match path.split('?').next().unwrap_or("") {
        "/" => ("200 OK", "text/html; charset=utf-8", PAGE),
        "/sw.js" => ("200 OK", "text/javascript; charset=utf-8", WORKER),
        _ => ("404 Not Found", "text/plain", "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::{Site, WORKER};

    fn get(site: &Site, path: &str) -> String {
        let mut stream = TcpStream::connect(site.addr()).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_the_page_and_the_worker_and_nothing_else() {
        let site = Site::start().unwrap();
        assert!(site.url().starts_with("http://localhost:"));
        let page = get(&site, "/");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("text/html"), "{page}");
        let worker = get(&site, "/sw.js?v=1");
        assert!(worker.starts_with("HTTP/1.1 200 OK\r\n"), "{worker}");
        assert!(worker.contains("text/javascript"), "{worker}");
        assert!(worker.ends_with(WORKER), "{worker}");
        assert!(get(&site, "/other").starts_with("HTTP/1.1 404 "));
        // Dropping the site stops its thread (drop joins it).
        drop(site);
    }
}
