//! The control socket: a unix socket (mode 0600) where an operator, or `vblkd ctl`, asks the
//! running daemon what it serves and how it is doing.
//!
//! The protocol is QMP's shape, versioned: on connecting, the daemon sends one greeting line,
//! `{"vblkd": {"version": "...", "protocol": 1}}`; then each request is one JSON object on one
//! line, `{"execute": "stats"}` or `{"execute": "info"}`, and each gets one line back,
//! `{"return": {...}}` or `{"error": {"class": "...", "desc": "..."}}`. A malformed or unknown
//! request gets an error object and the connection stays open; a line longer than
//! [`MAX_LINE`] gets one and is closed.
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

use serde_json::{json, Map, Value};

use crate::device::LiveState;
use crate::disk::Disk;
use crate::histogram::Histogram;
use crate::stats::{Counter, QueueStats};

/// The protocol's version, in the greeting.
pub const PROTOCOL: u64 = 1;
/// The longest request line accepted.
pub const MAX_LINE: usize = 64 << 10;
/// Connections served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 16;
/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// What the control socket reports on, and resizes.
pub struct Served {
    pub disk: Arc<dyn Disk>,
    /// The capacity now, and the frontend to tell when it changes.
    pub live: Arc<LiveState>,
    /// What `--disk` named.
    pub disk_name: String,
    pub num_queues: u16,
    pub queue_size: u16,
    pub queues: Vec<Arc<QueueStats>>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("disk", &self.disk_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on control socket {path}: {source}; check that its directory exists and is writable")]
pub struct ControlError {
    path: PathBuf,
    source: io::Error,
}

/// Listens on `path` (replacing a stale socket), readable and writable by the owner only, and
/// serves it on a thread of its own for the life of the process.
pub fn spawn(path: &Path, served: Arc<Served>) -> Result<(), ControlError> {
    let error = |source| ControlError {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(error(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("vblkd-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::AcqRel);
                    let busy = error_reply("TooManyClients", "too many control connections");
                    let _ = (&stream).write_all(format!("{busy}\n").as_bytes());
                    continue;
                }
                let (served, clients) = (served.clone(), clients.clone());
                let spawned = std::thread::Builder::new()
                    .name("vblkd-control-client".into())
                    .spawn(move || {
                        if let Err(e) = serve_client(&stream, &served) {
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

/// The client side, for `vblkd ctl`: runs `command` with `arguments` (`null` for none) on the
/// daemon at `path` and returns what it returned, or why not.
pub fn request(path: &Path, command: &str, arguments: Value) -> Result<Value, String> {
    let fail = |e: io::Error| format!("cannot talk to vblkd at {}: {e}", path.display());
    let stream = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot connect to {} ({e}); is vblkd running with --control {}?",
            path.display(),
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(fail)?;
    let greeting: Value = serde_json::from_str(&line).map_err(|e| format!("bad greeting: {e}"))?;
    let protocol = greeting["vblkd"]["protocol"].as_u64();
    if protocol != Some(PROTOCOL) {
        return Err(format!(
            "{} speaks control protocol {protocol:?}, this vblkd speaks {PROTOCOL}",
            path.display()
        ));
    }
    (&stream)
        .write_all(format!("{}\n", json!({"execute": command, "arguments": arguments})).as_bytes())
        .map_err(fail)?;
    line.clear();
    reader.read_line(&mut line).map_err(fail)?;
    let mut reply: Value = serde_json::from_str(&line).map_err(|e| format!("bad reply: {e}"))?;
    if let Some(error) = reply.get("error") {
        return Err(format!(
            "{}: {}",
            error["class"].as_str().unwrap_or("Error"),
            error["desc"].as_str().unwrap_or("")
        ));
    }
    Ok(reply["return"].take())
}

fn error_reply(class: &str, desc: &str) -> Value {
    json!({"error": {"class": class, "desc": desc}})
}

fn serve_client(stream: &UnixStream, served: &Served) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut writer = stream;
    let greeting = json!({"vblkd": {"version": env!("CARGO_PKG_VERSION"), "protocol": PROTOCOL}});
    writer.write_all(format!("{greeting}\n").as_bytes())?;
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
                let reply = error_reply(
                    "LineTooLong",
                    &format!("requests are at most {MAX_LINE} bytes"),
                );
                writer.write_all(format!("{reply}\n").as_bytes())?;
            }
            return Ok(()); // too long, or the client hung up mid-line
        }
        let reply = answer(&line, served);
        writer.write_all(format!("{reply}\n").as_bytes())?;
    }
}

/// The reply to one request line.
pub fn answer(line: &[u8], served: &Served) -> Value {
    let request: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return error_reply("ParseError", &format!("not JSON: {e}")),
    };
    let Some(command) = request.get("execute").and_then(Value::as_str) else {
        return error_reply(
            "InvalidRequest",
            r#"a request is {"execute": COMMAND}; commands: info, stats, resize"#,
        );
    };
    match command {
        "info" => json!({"return": info(served)}),
        "stats" => json!({"return": stats(served)}),
        "resize" => {
            let size = &request["arguments"]["size"];
            let size = match (size.is_null(), size.as_u64()) {
                (true, _) => None,
                (false, Some(size)) => Some(size),
                (false, None) => {
                    return error_reply("InvalidRequest", "size is a number of bytes");
                }
            };
            match resize(served, size) {
                Ok(reply) => json!({"return": reply}),
                Err(desc) => error_reply("ResizeFailed", &desc),
            }
        }
        other => error_reply(
            "CommandNotFound",
            &format!("no command '{other}'; commands: info, stats, resize"),
        ),
    }
}

/// Grows the disk to `size` (or takes its new size from the backend) and announces it.
fn resize(served: &Served, size: Option<u64>) -> Result<Value, String> {
    let before = served.live.capacity();
    if let Some(size) = size.filter(|&size| size < before) {
        return Err(format!(
            "refusing to shrink the disk from {before} to {size} bytes: the guest may hold data there"
        ));
    }
    let capacity = served.disk.resize(size).map_err(|e| e.to_string())?;
    if capacity < before {
        return Err(format!(
            "the disk is now {capacity} bytes, smaller than the {before} the guest was shown; keeping {before}"
        ));
    }
    let told = served.live.resize(capacity)?;
    log::info!("disk resized from {before} to {capacity} bytes");
    Ok(json!({"capacity": capacity, "previous": before, "frontend_told": told}))
}

fn info(served: &Served) -> Value {
    let d = served.disk.info();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "disk": served.disk_name,
        "capacity": served.live.capacity(),
        "logical_block_size": d.logical_block_size,
        "physical_block_size": d.physical_block_size,
        "read_only": d.read_only,
        "serial": String::from_utf8_lossy(&d.serial),
        "discard": d.discard,
        "num_queues": served.num_queues,
        "queue_size": served.queue_size,
    })
}

fn queue_stats(q: &QueueStats) -> Map<String, Value> {
    let mut out = Map::new();
    for counter in Counter::ALL {
        out.insert(counter.name().into(), q.get(counter).into());
    }
    out.insert("in_flight".into(), q.in_flight().into());
    let rejected: Map<String, Value> = q.rejections().map(|(k, n)| (k.into(), n.into())).collect();
    out.insert("rejected".into(), rejected.into());
    out
}

/// A latency histogram (ns) as the protocol reports it: count, mean, percentiles and maximum,
/// in µs.
fn latency(h: &Histogram) -> Value {
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    json!({
        "count": h.count(),
        "mean": (h.mean() / 100.0).round() / 10.0,
        "p50": us(h.percentile(50.0)),
        "p99": us(h.percentile(99.0)),
        "p99_9": us(h.percentile(99.9)),
        "max": us(h.max()),
    })
}

fn stats(served: &Served) -> Value {
    let histograms: Vec<Histogram> = served.queues.iter().map(|q| q.latencies()).collect();
    let mut queues: Vec<Map<String, Value>> =
        served.queues.iter().map(|q| queue_stats(q)).collect();
    let mut total = Map::new();
    for q in &queues {
        for (key, value) in q {
            match value {
                Value::Object(inner) => {
                    let sum = total.entry(key.clone()).or_insert_with(|| json!({}));
                    for (k, n) in inner {
                        let old = sum[k].as_u64().unwrap_or(0);
                        sum[k] = (old + n.as_u64().unwrap_or(0)).into();
                    }
                }
                n => {
                    let old = total.get(key).and_then(Value::as_u64).unwrap_or(0);
                    total.insert(key.clone(), (old + n.as_u64().unwrap_or(0)).into());
                }
            }
        }
    }
    let mut all = Histogram::default();
    for (q, h) in queues.iter_mut().zip(&histograms) {
        all.merge(h);
        q.insert("latency_us".into(), latency(h));
    }
    total.insert("latency_us".into(), latency(&all));
    let engine: Map<String, Value> = served
        .disk
        .counters()
        .into_iter()
        .map(|(name, n)| (name.into(), n.into()))
        .collect();
    total.insert("engine".into(), engine.into());
    json!({"total": total, "queues": queues})
}
