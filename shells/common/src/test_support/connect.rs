//! Connection attempts that fail before a session exists, for a shell's connect function
//! (`fn(url) -> Result<(), ConnectError>`, token `"t"`, default TLS configuration).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;

use studio_core::worker::ConnectError;

/// A shell's connect function, as the scenarios call it.
pub type Connect = fn(&str) -> Result<(), ConnectError>;

pub fn a_refused_connection_is_a_transport_error(connect: Connect) {
    // Bind, learn the port, close: nothing listens there any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match connect(&format!("ws://127.0.0.1:{port}/x")) {
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
    match connect(&format!("wss://localhost:{port}/x")) {
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
    match connect(&format!("ws://127.0.0.1:{port}/x")) {
        Err(ConnectError::Transport(m)) => assert!(m.contains("closed"), "{m}"),
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

pub fn a_bad_url_never_touches_the_network(connect: Connect) {
    assert!(matches!(
        connect("https://127.0.0.1/x"),
        Err(ConnectError::Transport(_))
    ));
}
