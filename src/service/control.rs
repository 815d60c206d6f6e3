//! The control socket: a unix socket (mode 0600) where an operator, or `vblkd ctl`, asks the
//! running daemon what it serves and how it is doing.
//!
//! The protocol is QMP's shape, versioned: on connecting, the daemon sends one greeting line,
//! `{"vblkd": {"version": "...", "protocol": 1}}`; then each request is one JSON object on one
//! line, `{"execute": "stats"}` or `{"execute": "info"}`, and each gets one line back,
//! `{"return": {...}}` or `{"error": {"class": "...", "desc": "..."}}`. The messages are the
//! types of [`super::status`]. A malformed or unknown request gets an error object and the
//! connection stays open; a line longer than [`MAX_LINE`] gets one and is closed.
//!
//! Every connection has a thread of its own, with an idle timeout, and at most
//! [`MAX_CLIENTS`] are served at once: a client that says nothing, or too many of them, never
//! holds up another, and nothing here touches the I/O path (the counters are read, never
//! locked).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use strum::VariantNames;

use super::status::{Command, Controlled, Failure, FailureClass, Greeting, Reply, PROTOCOL};

/// The longest request line accepted.
pub const MAX_LINE: usize = 64 << 10;
/// Connections served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 16;
/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(300);
/// How long the client waits for the daemon's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on control socket {path}: {source}; check that its directory exists and is writable")]
pub struct ListenError {
    path: PathBuf,
    source: io::Error,
}

/// Listens on `path` (replacing a stale socket), readable and writable by the owner only.
pub fn bind(path: &Path) -> Result<UnixListener, ListenError> {
    let error = |source| ListenError {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(error(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
    Ok(listener)
}

/// Serves the control socket `listener` (bound at `path`) on a thread of its own for the
/// life of the process.
pub fn spawn(
    path: &Path,
    listener: UnixListener,
    served: Arc<dyn Controlled>,
) -> Result<(), ListenError> {
    let error = |source| ListenError {
        path: path.to_owned(),
        source,
    };
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("vblkd-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::AcqRel);
                    let busy =
                        Failure::new(FailureClass::TooManyClients, "too many control connections");
                    let _ = send(&mut &stream, &Reply::<()>::Error(busy));
                    continue;
                }
                let (served, clients) = (served.clone(), clients.clone());
                let spawned = std::thread::Builder::new()
                    .name("vblkd-control-client".into())
                    .spawn(move || {
                        if let Err(e) = serve_client(&stream, &*served) {
                            log::debug!("control connection ended: {e}");
                        }
                        clients.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    // The client's stream is dropped with the closure: it sees the socket close.
                    log::warn!("cannot start a thread for a control connection");
                }
            }
        })
        .map_err(error)?;
    Ok(())
}

/// Writes `message` as one line.
fn send(out: &mut impl Write, message: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}

fn serve_client(stream: &UnixStream, served: &dyn Controlled) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut writer = stream;
    send(&mut writer, &Greeting::ours())?;
    // One more byte than a line may have: reading that many without a newline is too long.
    let mut reader = BufReader::new(stream).take(0);
    let mut line = Vec::new();
    loop {
        line.clear();
        reader.set_limit(MAX_LINE as u64 + 1);
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(()); // the client hung up
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                let too_long = Failure::new(
                    FailureClass::LineTooLong,
                    format!("requests are at most {MAX_LINE} bytes"),
                );
                send(&mut writer, &Reply::<()>::Error(too_long))?;
            }
            return Ok(()); // too long, or the client hung up mid-line
        }
        send(&mut writer, &answer(&line, served))?;
    }
}

/// The reply to one request line.
pub fn answer(line: &[u8], served: &dyn Controlled) -> Reply<Value> {
    match parse(line).and_then(|command| served.execute(&command)) {
        Ok(value) => Reply::Return(value),
        Err(failure) => Reply::Error(failure),
    }
}

/// A request line as a command, or what is wrong with it.
fn parse(line: &[u8]) -> Result<Command, Failure> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| Failure::new(FailureClass::ParseError, format!("not JSON: {e}")))?;
    let commands = Command::VARIANTS.join(", ");
    let Some(name) = value.get("execute").and_then(Value::as_str) else {
        return Err(Failure::new(
            FailureClass::InvalidRequest,
            format!(r#"a request is {{"execute": COMMAND}}; commands: {commands}"#),
        ));
    };
    if !Command::VARIANTS.contains(&name) {
        return Err(Failure::new(
            FailureClass::CommandNotFound,
            format!("no command '{name}'; commands: {commands}"),
        ));
    }
    let name = name.to_owned();
    serde_json::from_value(value).map_err(|e| {
        Failure::new(
            FailureClass::InvalidRequest,
            format!("bad arguments to {name}: {e}"),
        )
    })
}

/// Why `vblkd ctl` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path} ({source}); is vblkd running with --control {path}?")]
    Connect { path: String, source: io::Error },
    #[error("cannot talk to vblkd at {path}: {source}")]
    Talk { path: String, source: io::Error },
    #[error("{path} sent something that is not the control protocol: {source}")]
    Garbled {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path} speaks control protocol {theirs}, this vblkd speaks {PROTOCOL}")]
    Protocol { path: String, theirs: u64 },
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// A connection to a daemon's control socket, for `vblkd ctl` and anything else that asks a
/// running daemon: one connection, any number of requests.
pub struct Client {
    path: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the control socket at `path` and checks that it speaks our protocol.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let name = path.display().to_string();
        let connected = UnixStream::connect(path).and_then(|stream| {
            stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
            Ok((stream.try_clone()?, stream))
        });
        let (writer, stream) = connected.map_err(|source| ClientError::Connect {
            path: name.clone(),
            source,
        })?;
        let mut client = Client {
            path: name,
            reader: BufReader::new(stream),
            writer,
        };
        let greeting: Greeting = client.receive()?;
        if greeting.vblkd.protocol != PROTOCOL {
            return Err(ClientError::Protocol {
                path: client.path,
                theirs: greeting.vblkd.protocol,
            });
        }
        Ok(client)
    }

    fn receive<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, ClientError> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|source| ClientError::Talk {
                path: self.path.clone(),
                source,
            })?;
        serde_json::from_str(&line).map_err(|source| ClientError::Garbled {
            path: self.path.clone(),
            source,
        })
    }

    /// Runs `command` and returns what it returned.
    pub fn call(&mut self, command: &Command) -> Result<Value, ClientError> {
        send(&mut self.writer, command).map_err(|source| ClientError::Talk {
            path: self.path.clone(),
            source,
        })?;
        match self.receive::<Reply<Value>>()? {
            Reply::Return(value) => Ok(value),
            Reply::Error(failure) => Err(failure.into()),
        }
    }
}

/// Runs `command` on the daemon whose control socket is at `path`, on a connection of its
/// own.
pub fn request(path: &Path, command: &Command) -> Result<Value, ClientError> {
    Client::connect(path)?.call(command)
}
