//! A small client of Marionette, the remote-control protocol built into Firefox.
//!
//! The wire format (read from Firefox's `remote/marionette/` sources): every packet is
//! `LEN:JSON`, LEN being the byte length of the UTF-8 JSON in decimal. On connect the
//! server sends one bare object, `{"applicationType":"gecko","marionetteProtocol":3}`.
//! Then the client sends commands `[0, id, "Name", {params}]` and the server answers each
//! with `[1, id, error, result]`, where exactly one of `error` (`{error, message,
//! stacktrace}`) and `result` is null.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The Marionette protocol level this client speaks.
const PROTOCOL_LEVEL: u64 = 3;

/// A packet longer than this is refused rather than buffered (a script result is small).
const MAX_PACKET: usize = 16 << 20;

/// Where scripts run: in the page (`content`) or with the browser's own privileges
/// (`chrome`, which needs Firefox started with `--remote-allow-system-access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptContext {
    /// The web page of the current tab.
    Content,
    /// The browser itself (`Services.io`, preferences, ...).
    Chrome,
}

/// One connection to a Marionette server, with a WebDriver session once
/// [`Marionette::new_session`] succeeded.
#[derive(Debug)]
pub struct Marionette {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    last_id: u64,
}

impl Marionette {
    /// Connects to `addr`, reads the server's greeting and checks its protocol level.
    ///
    /// `timeout` bounds every later read and write too: a command that takes longer (a
    /// script that never calls back, a hung browser) fails instead of hanging the run.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Marionette> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to Marionette on {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        let mut client = Marionette {
            reader: BufReader::new(stream),
            writer,
            last_id: 0,
        };
        let hello = client
            .read_packet()
            .context("reading Marionette's greeting")?;
        let level = hello.get("marionetteProtocol").and_then(Value::as_u64);
        if level != Some(PROTOCOL_LEVEL) {
            bail!("Marionette greeting {hello}: expected marionetteProtocol {PROTOCOL_LEVEL}");
        }
        Ok(client)
    }

    /// Sends command `name` with `params` and returns its result, or fails with the
    /// error Marionette answered (its kind and message).
    pub fn command(&mut self, name: &str, params: Value) -> Result<Value> {
        self.last_id += 1;
        let id = self.last_id;
        self.write_packet(&json!([0, id, name, params]))
            .with_context(|| format!("sending {name}"))?;
        loop {
            let reply = self
                .read_packet()
                .with_context(|| format!("waiting for the answer to {name}"))?;
            let (reply_id, error, result) = parse_reply(&reply)?;
            // An answer to an earlier command that timed out on our side: skip it.
            if reply_id < id {
                continue;
            }
            if reply_id != id {
                bail!("Marionette answered command {reply_id}, expected {id}: {reply}");
            }
            if !error.is_null() {
                let kind = error
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                let message = error.get("message").and_then(Value::as_str).unwrap_or("");
                bail!("{name} failed: {kind}: {message}");
            }
            return Ok(result.clone());
        }
    }

    /// Starts the WebDriver session every other command needs.
    pub fn new_session(&mut self) -> Result<()> {
        self.command("WebDriver:NewSession", json!({"capabilities": {}}))?;
        Ok(())
    }

    /// Loads `url` in the current tab and waits until it has loaded.
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        self.command("WebDriver:Navigate", json!({"url": url}))?;
        Ok(())
    }

    /// Makes later scripts run in `context`.
    pub fn set_context(&mut self, context: ScriptContext) -> Result<()> {
        let value = match context {
            ScriptContext::Content => "content",
            ScriptContext::Chrome => "chrome",
        };
        self.command("Marionette:SetContext", json!({"value": value}))?;
        Ok(())
    }

    /// Sets how long an asynchronous script may take before Marionette gives up on it.
    pub fn set_script_timeout(&mut self, timeout: Duration) -> Result<()> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.command("WebDriver:SetTimeouts", json!({"script": ms}))?;
        Ok(())
    }

    /// Runs `script` as a function body with `args` as `arguments`; it answers by
    /// calling the extra last argument, whose value is returned.
    pub fn execute_async(&mut self, script: &str, args: Value) -> Result<Value> {
        let result = self.command(
            "WebDriver:ExecuteAsyncScript",
            json!({"script": script, "args": args}),
        )?;
        Ok(result.get("value").cloned().unwrap_or(Value::Null))
    }

    /// Runs `script` as a function body with `args` as `arguments` and returns what it
    /// returns.
    pub fn execute(&mut self, script: &str, args: Value) -> Result<Value> {
        let result = self.command(
            "WebDriver:ExecuteScript",
            json!({"script": script, "args": args}),
        )?;
        Ok(result.get("value").cloned().unwrap_or(Value::Null))
    }

    /// Asks the browser to quit as a user would (windows closed, profile written).
    pub fn quit(&mut self) -> Result<()> {
        self.command("Marionette:Quit", json!({}))?;
        Ok(())
    }

    fn write_packet(&mut self, value: &Value) -> Result<()> {
        self.writer.write_all(&encode_packet(value))?;
        Ok(())
    }

    fn read_packet(&mut self) -> Result<Value> {
        read_packet(&mut self.reader)
    }
}

/// `LEN:JSON` for `value`.
fn encode_packet(value: &Value) -> Vec<u8> {
    let json = value.to_string();
    let mut packet = format!("{}:", json.len()).into_bytes();
    packet.extend_from_slice(json.as_bytes());
    packet
}

/// Reads one `LEN:JSON` packet.
fn read_packet(reader: &mut impl BufRead) -> Result<Value> {
    let mut header = Vec::new();
    reader.read_until(b':', &mut header)?;
    if header.pop() != Some(b':') {
        bail!("the connection closed (no packet)");
    }
    let length: usize = std::str::from_utf8(&header)
        .ok()
        .and_then(|digits| digits.trim().parse().ok())
        .with_context(|| format!("bad packet length {:?}", String::from_utf8_lossy(&header)))?;
    if length > MAX_PACKET {
        bail!("packet of {length} bytes, more than the {MAX_PACKET} accepted");
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    serde_json::from_slice(&body).context("packet is not JSON")
}

/// Splits an answer `[1, id, error, result]`.
fn parse_reply(reply: &Value) -> Result<(u64, &Value, &Value)> {
    match reply.as_array().map(Vec::as_slice) {
        Some([kind, id, error, result]) if kind.as_u64() == Some(1) => {
            let id = id
                .as_u64()
                .with_context(|| format!("answer id in {reply}"))?;
            Ok((id, error, result))
        }
        _ => bail!("not a Marionette answer: {reply}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Write};
    use std::net::TcpListener;
    use std::thread;
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::{Marionette, encode_packet, read_packet};

    #[test]
    fn packets_carry_their_utf8_byte_length() {
        let packet = encode_packet(&json!({"text": "é"}));
        // "é" is two bytes: the length counts bytes, not characters.
        assert_eq!(packet, "13:{\"text\":\"é\"}".as_bytes());
        let mut reader = BufReader::new(&packet[..]);
        assert_eq!(read_packet(&mut reader).unwrap(), json!({"text": "é"}));
        assert!(read_packet(&mut reader).is_err(), "nothing left to read");
        let mut bad = BufReader::new(&b"x1:{}"[..]);
        assert!(read_packet(&mut bad).is_err());
    }

    /// A one-connection fake server: greets, then answers each command with `answer`.
    fn fake_server(greeting: Value, answer: fn(u64, &str) -> Value) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            writer.write_all(&encode_packet(&greeting)).unwrap();
            let mut reader = BufReader::new(stream);
            while let Ok(command) = read_packet(&mut reader) {
                let id = command[1].as_u64().unwrap();
                let name = command[2].as_str().unwrap().to_owned();
                if writer
                    .write_all(&encode_packet(&answer(id, &name)))
                    .is_err()
                {
                    break;
                }
            }
        });
        addr
    }

    fn gecko() -> Value {
        json!({"applicationType": "gecko", "marionetteProtocol": 3})
    }

    #[test]
    fn commands_return_results_and_errors_by_id() {
        let addr = fake_server(gecko(), |id, name| match name {
            "WebDriver:ExecuteScript" => json!([1, id, null, {"value": 42}]),
            "WebDriver:Navigate" => json!([1, id, {"error": "timeout", "message": "slow"}, null]),
            _ => json!([1, id, null, {}]),
        });
        let mut client = Marionette::connect(addr, Duration::from_secs(5)).unwrap();
        client.new_session().unwrap();
        assert_eq!(client.execute("return 42", json!([])).unwrap(), json!(42));
        let err = client.navigate("http://localhost/").unwrap_err();
        assert_eq!(err.to_string(), "WebDriver:Navigate failed: timeout: slow");
    }

    #[test]
    fn a_server_of_another_protocol_level_is_refused() {
        let addr = fake_server(
            json!({"applicationType": "gecko", "marionetteProtocol": 2}),
            |id, _| json!([1, id, null, {}]),
        );
        let err = Marionette::connect(addr, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("marionetteProtocol 3"), "{err}");
    }
}
