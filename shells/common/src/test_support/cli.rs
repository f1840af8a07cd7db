//! A worker binary (either shell): exit codes and the operator's last message.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::thread;

/// `binary --config <a config.toml holding config_text> run`, to its end.
fn run_with_config(binary: &str, config_text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text).unwrap();
    Command::new(binary)
        .arg("--config")
        .arg(&path)
        .arg("run")
        .output()
        .unwrap()
}

pub fn a_broken_config_exits_3_and_names_the_file(binary: &str) {
    let out = run_with_config(binary, "api_base_url = [oops\n");
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.toml"), "{stderr}");
}

pub fn a_401_on_upgrade_exits_4_and_says_to_re_register(binary: &str) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
            head.push(b[0]);
        }
        s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\ntoken revoked")
            .unwrap();
    });
    let out = run_with_config(
        binary,
        &format!(
            "api_base_url = \"http://127.0.0.1:{port}\"\nvram_threshold_gb = 8.0\n\
             worker_id = \"w-1\"\nauth_token = \"secret-token\"\nauto_update_enabled = false\n"
        ),
    );
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("studio-worker: "), "{stderr}");
    assert!(last.contains("token revoked"), "{stderr}");
    assert!(last.contains("register"), "{stderr}");
    assert!(!stderr.contains("secret-token"), "{stderr}");
}

/// `binary demo` in a build without the `demo` feature: a usage error (exit 2) whose one
/// line names the command that builds a worker with the demo, and no studio started.
#[cfg(not(feature = "demo"))]
pub fn a_build_without_the_demo_says_how_to_build_one(binary: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary)
        .arg("demo")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let package = std::path::Path::new(binary)
        .file_stem()
        .unwrap()
        .to_string_lossy();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("studio-worker: "), "{stderr}");
    assert!(
        last.contains(&format!(
            "cargo run --release -p {package} --features demo -- demo"
        )),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    assert!(!dir.path().join("demo-out").exists());
}
