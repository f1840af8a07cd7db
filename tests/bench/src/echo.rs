//! The transport's limit: a bare tungstenite WebSocket echo round trip on loopback.
//!
//! One server thread accepts one connection and sends every text frame back; the client
//! (this thread) sends a frame of `bytes` bytes, blocks until the echo is read, and times
//! each round trip. Both sockets have `TCP_NODELAY`, like the worker's and studio-local's.
//! Blocking std sockets and no parsing: nothing a worker could do is cheaper.
//!
//! [`relay_round_trips_on`] is the same echo with the server handing each message to a second
//! thread and taking it back (two std channels) before sending it: the four wake-ups of a
//! job's offer -> result path in a worker that runs engines on a thread of their own (tap ->
//! loop, loop -> engine, engine -> loop, loop -> tap), with no work between them.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::Message;

/// Round trips not timed before the measured ones.
pub const ECHO_WARMUP: usize = 100;

/// A message of exactly `bytes` bytes shaped like a JSON frame.
pub fn payload(bytes: usize) -> String {
    let head = r#"{"type":"offer","claim":{"jobId":"bench","pad":""#;
    let tail = r#""}}"#;
    let pad = bytes.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// `n` timed round trips of a `bytes`-byte text frame (after [`ECHO_WARMUP`] untimed ones),
/// client and server wherever the scheduler puts them (like the worker and the studio).
pub fn echo_round_trips(n: usize, bytes: usize) -> io::Result<Vec<Duration>> {
    echo_round_trips_on(n, bytes, None)
}

/// [`echo_round_trips`] with both threads pinned to CPU `cpu` when given (Linux; elsewhere
/// unpinned): every wakeup is then a context switch on one CPU, never a cross-CPU wakeup,
/// which on a VM can cost more than the switch itself.
pub fn echo_round_trips_on(
    n: usize,
    bytes: usize,
    cpu: Option<usize>,
) -> io::Result<Vec<Duration>> {
    round_trips(n, bytes, cpu, None)
}

/// [`echo_round_trips_on`] with each message handed by the server to a second thread and
/// back before the echo (that thread pinned too, when `cpu` is given).
pub fn relay_round_trips_on(
    n: usize,
    bytes: usize,
    cpu: Option<usize>,
) -> io::Result<Vec<Duration>> {
    relay_counted(n, bytes, cpu).map(|(samples, _)| samples)
}

/// [`relay_round_trips_on`], and how many messages the second thread handed back.
fn relay_counted(n: usize, bytes: usize, cpu: Option<usize>) -> io::Result<(Vec<Duration>, u64)> {
    let (to_helper, helper_rx) = mpsc::channel::<Message>();
    let (helper_tx, back) = mpsc::channel::<Message>();
    let helper = std::thread::Builder::new()
        .name("bench-echo-hop".into())
        .spawn(move || -> io::Result<u64> {
            pin(cpu)?;
            let mut handed = 0;
            // Ends when the server drops its sender.
            for m in helper_rx {
                if helper_tx.send(m).is_err() {
                    break;
                }
                handed += 1;
            }
            Ok(handed)
        })?;
    let samples = round_trips(n, bytes, cpu, Some((to_helper, back)));
    let handed = helper
        .join()
        .map_err(|_| io::Error::other("the echo's second thread panicked"))??;
    samples.map(|s| (s, handed))
}

/// The server's way to a second thread and back.
type Hop = (mpsc::Sender<Message>, mpsc::Receiver<Message>);

fn round_trips(
    n: usize,
    bytes: usize,
    cpu: Option<usize>,
    hop: Option<Hop>,
) -> io::Result<Vec<Duration>> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    let server = std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || -> io::Result<()> {
            pin(cpu)?;
            let (stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut ws =
                tungstenite::accept(stream).map_err(|e| io::Error::other(e.to_string()))?;
            loop {
                match ws.read() {
                    Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                        let m = match &hop {
                            Some((to, back)) => {
                                to.send(m).map_err(io::Error::other)?;
                                back.recv().map_err(io::Error::other)?
                            }
                            None => m,
                        };
                        ws.send(m).map_err(io::Error::other)?
                    }
                    Ok(Message::Close(_)) => {
                        // tungstenite queued the close reply; flush it out.
                        let _ = ws.flush();
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
                    Err(e) => return Err(io::Error::other(e)),
                }
            }
        })?;
    let client = std::thread::Builder::new()
        .name("bench-echo-client".into())
        .spawn(move || client(addr, n, bytes, cpu))?;
    let samples = client
        .join()
        .map_err(|_| io::Error::other("the echo client panicked"))?;
    let served = server
        .join()
        .map_err(|_| io::Error::other("the echo server panicked"))?;
    let samples = samples?;
    served?;
    Ok(samples)
}

fn client(
    addr: std::net::SocketAddr,
    n: usize,
    bytes: usize,
    cpu: Option<usize>,
) -> io::Result<Vec<Duration>> {
    pin(cpu)?;
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/echo"), stream)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let text = payload(bytes);
    let mut samples = Vec::with_capacity(n);
    for i in 0..ECHO_WARMUP + n {
        let t0 = Instant::now();
        ws.send(Message::text(text.clone()))
            .map_err(io::Error::other)?;
        loop {
            match ws.read().map_err(io::Error::other)? {
                Message::Text(t) if t.len() == text.len() => break,
                Message::Text(_) => return Err(io::Error::other("echo of the wrong size")),
                _ => {}
            }
        }
        if i >= ECHO_WARMUP {
            samples.push(t0.elapsed());
        }
    }
    let _ = ws.close(None);
    // Read until the server's close reply (or the socket ends).
    while ws.read().is_ok() {}
    Ok(samples)
}

/// Pins the calling thread to `cpu` (Linux only; a no-op for None or elsewhere).
fn pin(cpu: Option<usize>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if let Some(cpu) = cpu {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET bounds-checks `cpu`
        // against the set's size; sched_setaffinity(0, ..) affects this thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_asked_size_and_is_json() {
        let p = payload(600);
        assert_eq!(p.len(), 600);
        serde_json::from_str::<serde_json::Value>(&p).unwrap();
    }

    #[test]
    fn the_relay_hands_every_message_to_its_second_thread() {
        let (samples, handed) = relay_counted(5, 100, None).unwrap();
        assert_eq!(samples.len(), 5);
        assert_eq!(handed, (ECHO_WARMUP + 5) as u64);
    }

    #[test]
    fn pinned_echo_runs() {
        let s = echo_round_trips_on(5, 100, Some(0)).unwrap();
        assert_eq!(s.len(), 5);
    }
}
