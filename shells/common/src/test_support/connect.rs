//! Connection attempts that fail before a session exists, for a shell's connect function
//! (`fn(url, deadline) -> Result<(), ConnectError>`, token `"t"`, default TLS
//! configuration).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use studio_core::worker::ConnectError;

use crate::connect::CONNECT_DEADLINE;

/// A shell's connect function, as the scenarios call it: the URL and the attempt's
/// deadline.
pub type Connect = fn(&str, Duration) -> Result<(), ConnectError>;

pub fn a_refused_connection_is_a_transport_error(connect: Connect) {
    // Bind, learn the port, close: nothing listens there any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match connect(&format!("ws://127.0.0.1:{port}/x"), CONNECT_DEADLINE) {
        Err(ConnectError::Transport(m)) => assert!(m.contains("cannot connect"), "{m}"),
        other => panic!("{other:?}"),
    }
}

pub fn a_server_that_is_not_tls_fails_the_tls_handshake(connect: Connect) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    match connect(&format!("wss://localhost:{port}/x"), CONNECT_DEADLINE) {
        Err(ConnectError::Transport(m)) => assert!(m.contains("TLS"), "{m}"),
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

pub fn a_server_closing_mid_upgrade_is_a_transport_error(connect: Connect) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"HTTP/1.1 101 Switching");
    });
    match connect(&format!("ws://127.0.0.1:{port}/x"), CONNECT_DEADLINE) {
        Err(ConnectError::Transport(m)) => assert!(m.contains("closed"), "{m}"),
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

pub fn a_bad_url_never_touches_the_network(connect: Connect) {
    assert!(matches!(
        connect("https://127.0.0.1/x", CONNECT_DEADLINE),
        Err(ConnectError::Transport(_))
    ));
}

/// A peer that answers the upgrade one byte at a time, each well within any per-read
/// timeout, and never finishes: the attempt still ends at its one deadline (1 s here).
pub fn a_peer_answering_byte_by_byte_cannot_outlast_the_deadline(connect: Connect) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b);
        for byte in b"HTTP/1.1 101 Switching Protocols\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if s.write_all(&[*byte]).is_err() {
                return; // the worker gave up: done
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(connect(
            &format!("ws://127.0.0.1:{port}/x"),
            Duration::from_secs(1),
        ));
    });
    // Generous: only a connect that never ends fails here.
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Err(ConnectError::Transport(m))) => assert!(m.contains("timed out"), "{m}"),
        Ok(other) => panic!("{other:?}"),
        Err(_) => panic!("the connect attempt outlived its deadline"),
    }
}
