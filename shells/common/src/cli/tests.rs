use super::*;
use clap::CommandFactory;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("studio-worker").chain(args.iter().copied()))
}

fn run(args: &[&str]) -> Result<(Option<i32>, String), ShellError> {
    let cli = parse(args).unwrap();
    let mut out = Vec::new();
    let code = run_admin_command(&cli, &mut out)?;
    Ok((code, String::from_utf8(out).unwrap()))
}

fn cfg_arg(dir: &tempfile::TempDir) -> (PathBuf, String) {
    let p = dir.path().join("config.toml");
    let s = p.to_str().unwrap().to_string();
    (p, s)
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn parses_every_subcommand_and_global_flags() {
    let cli = parse(&["run", "--config", "/tmp/c.toml", "--record", "/tmp/r.jsonl"]).unwrap();
    assert_eq!(cli.command, CliCommand::Run);
    assert_eq!(cli.config, Some(PathBuf::from("/tmp/c.toml")));
    assert_eq!(cli.record, Some(PathBuf::from("/tmp/r.jsonl")));
    let cli = parse(&["--config", "c.toml", "status", "--json"]).unwrap();
    assert_eq!(cli.command, CliCommand::Status { json: true });
    assert_eq!(
        parse(&[
            "register",
            "--api-base-url",
            "http://localhost:9790",
            "--reset"
        ])
        .unwrap()
        .command,
        CliCommand::Register {
            api_base_url: Some("http://localhost:9790".into()),
            reset: true
        }
    );
    assert_eq!(
        parse(&["set-threshold", "10.5"]).unwrap().command,
        CliCommand::SetThreshold { gb: 10.5 }
    );
    assert_eq!(parse(&["config"]).unwrap().command, CliCommand::Config);
    for (arg, command) in [
        ("pause", CliCommand::Pause),
        ("resume", CliCommand::Resume),
        ("enable", CliCommand::Enable),
        ("disable", CliCommand::Disable),
    ] {
        assert_eq!(parse(&[arg]).unwrap().command, command);
    }
    assert_eq!(
        parse(&["demo", "--out", "/tmp/d", "--keep-running"])
            .unwrap()
            .command,
        CliCommand::Demo {
            out: Some(PathBuf::from("/tmp/d")),
            keep_running: true
        }
    );
}

#[test]
fn bad_values_are_rejected_by_the_parser() {
    for args in [
        &["set-threshold", "-1"][..],
        &["set-threshold", "NaN"],
        &["set-threshold", "inf"],
        &["set-threshold", "lots"],
        &["register", "--api-base-url", "studio.minis.gg"],
        &["register", "--api-base-url", "ftp://x"],
        // Removed reference flags must not parse.
        &["run", "--wait-for-lock"],
        &["register", "--bootstrap-token", "x"],
    ] {
        let err = parse(args).unwrap_err();
        assert!(err.use_stderr(), "{args:?} should be an error");
    }
    let msg = parse(&["set-threshold", "-1"]).unwrap_err().to_string();
    assert!(msg.contains(">= 0"), "{msg}");
}

#[test]
fn help_texts_exist() {
    let mut cmd = Cli::command();
    let long = cmd.render_long_help().to_string();
    assert!(long.contains("--config"), "{long}");
    assert!(long.contains("--record"), "{long}");
    let replay = cmd
        .find_subcommand_mut("replay")
        .expect("replay")
        .render_long_help()
        .to_string();
    for want in ["--explain", "--bless", "diverge"] {
        assert!(replay.contains(want), "{want}: {replay}");
    }
    for sub in [
        "run",
        "register",
        "status",
        "pause",
        "resume",
        "enable",
        "disable",
        "set-threshold",
        "config",
        "demo",
    ] {
        assert!(long.contains(sub), "{sub} missing in {long}");
        let sc = cmd.find_subcommand_mut(sub).unwrap();
        assert!(sc.get_about().is_some(), "{sub} has no about");
        assert!(sc.get_long_about().is_some(), "{sub} has no long_about");
    }
    let help = parse(&["register", "--help"]).unwrap_err().to_string();
    assert!(
        help.contains("--api-base-url") && help.contains("--reset"),
        "{help}"
    );
    assert!(parse(&["--version"])
        .unwrap_err()
        .to_string()
        .contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn run_demo_and_ui_are_left_to_the_binary() {
    assert_eq!(run(&["run"]).unwrap().0, None);
    assert_eq!(run(&["demo"]).unwrap().0, None);
    assert_eq!(run(&["ui"]).unwrap().0, None);
    assert_eq!(
        parse(&["ui", "--screenshots", "shots", "--autostart"])
            .unwrap()
            .command,
        CliCommand::Ui(UiArgs {
            screenshots: Some(PathBuf::from("shots")),
            autostart: true,
        })
    );
}

#[test]
fn status_shows_the_running_workers_last_update_check() {
    let mut d = serde_json::json!({"pid": 7, "session": "connected", "lastUpdateCheck": null});
    assert!(live_lines(&d).contains("update check:    none yet\n"));
    d["lastUpdateCheck"] = serde_json::json!({
        "at": "2026-05-25T12:00:00.000Z", "text": "update available: 0.1.0 -> 0.2.0"
    });
    assert!(live_lines(&d).contains(
        "update check:    update available: 0.1.0 -> 0.2.0 (at 2026-05-25T12:00:00.000Z)\n"
    ));
}

#[test]
fn check_update_reads_the_configured_feed_and_a_feed_error_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let (path, arg) = cfg_arg(&dir);
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = Config::load(&path).unwrap();
    c.auto_update_feed = Some(format!("http://127.0.0.1:{port}/releases"));
    c.save(&path).unwrap();
    let e = run(&["--config", &arg, "check-update"]).unwrap_err();
    assert_eq!(e.exit_code(), 3);
    let message = e.to_string();
    assert!(
        message.starts_with("update check failed: cannot fetch the update feed"),
        "{message}"
    );
}

#[test]
fn install_service_dry_run_shows_the_file_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, arg) = cfg_arg(&dir);
    let (code, text) = run(&["--config", &arg, "install-service", "--dry-run"]).unwrap();
    assert_eq!(code, Some(0));
    assert!(text.starts_with("would write "), "{text}");
    assert!(text.contains(&arg), "the config it runs with: {text}");
    assert!(text.contains("then run:"), "{text}");
}

#[test]
fn status_reports_each_registration_state() {
    let dir = tempfile::tempdir().unwrap();
    let (path, arg) = cfg_arg(&dir);
    let (code, text) = run(&["--config", &arg, "status"]).unwrap();
    assert_eq!(code, Some(0));
    assert!(path.exists(), "status creates the default config");
    assert!(text.contains(&arg), "{text}");
    assert!(text.contains("not registered"), "{text}");
    assert!(text.contains("12 GB"), "{text}");
    assert!(text.contains("models root:"), "{text}");
    assert!(
        text.contains("auto-update:     enabled (every 1800 s)"),
        "{text}"
    );

    let mut c = Config::load(&path).unwrap();
    c.registration_request_id = Some("rr-7".into());
    c.registration_secret = Some("s".repeat(64));
    c.save(&path).unwrap();
    let (_, text) = run(&["--config", &arg, "status"]).unwrap();
    assert!(
        text.contains("pending operator approval (request rr-7)"),
        "{text}"
    );

    c.worker_id = Some("w-42".into());
    c.auth_token = Some("tok-secret".into());
    c.save(&path).unwrap();
    let (_, text) = run(&["--config", &arg, "status"]).unwrap();
    assert!(text.contains("approved as w-42"), "{text}");
    assert!(!text.contains("tok-secret"));

    let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["registration"]["state"], "approved");
    assert_eq!(v["registration"]["worker_id"], "w-42");
    assert_eq!(v["vram_threshold_gb"], 12.0);
    assert_eq!(v["config_path"], arg.as_str());
    assert!(!json.contains("tok-secret"));
}

#[test]
fn register_reset_clears_everything_and_url_persists() {
    let dir = tempfile::tempdir().unwrap();
    let (path, arg) = cfg_arg(&dir);
    let mut c = Config::load(&path).unwrap();
    c.worker_id = Some("w-1".into());
    c.auth_token = Some("tok".into());
    c.install_id = Some("iid".into());
    c.registration_request_id = Some("rr".into());
    c.registration_secret = Some("sec".into());
    c.vram_threshold_gb = 3.0;
    c.save(&path).unwrap();

    // Bare register: no change.
    let (_, text) = run(&["--config", &arg, "register"]).unwrap();
    assert!(text.contains("nothing changed"), "{text}");
    assert_eq!(Config::load(&path).unwrap(), c);

    let (code, text) = run(&[
        "--config",
        &arg,
        "register",
        "--reset",
        "--api-base-url",
        "http://127.0.0.1:9790",
    ])
    .unwrap();
    assert_eq!(code, Some(0));
    assert!(text.contains("registration reset"), "{text}");
    assert!(text.contains("not registered"), "{text}");
    let after = Config::load(&path).unwrap();
    assert_eq!(after.api_base_url, "http://127.0.0.1:9790");
    assert_eq!(after.worker_id, None);
    assert_eq!(after.auth_token, None);
    assert_eq!(after.install_id, None);
    assert_eq!(after.registration_request_id, None);
    assert_eq!(after.registration_secret, None);
    assert_eq!(after.vram_threshold_gb, 3.0, "other settings untouched");

    // URL only: the registration stays.
    let mut c = after;
    c.worker_id = Some("w-2".into());
    c.auth_token = Some("t".into());
    c.save(&path).unwrap();
    run(&[
        "--config",
        &arg,
        "register",
        "--api-base-url",
        "https://x.example/",
    ])
    .unwrap();
    let after = Config::load(&path).unwrap();
    assert_eq!(after.api_base_url, "https://x.example/");
    assert_eq!(after.worker_id.as_deref(), Some("w-2"));
}

#[test]
fn set_threshold_persists_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let (path, arg) = cfg_arg(&dir);
    let (code, text) = run(&["--config", &arg, "set-threshold", "7.5"]).unwrap();
    assert_eq!(code, Some(0));
    assert!(text.contains("7.5 GB"), "{text}");
    assert_eq!(Config::load(&path).unwrap().vram_threshold_gb, 7.5);
    run(&["--config", &arg, "set-threshold", "0"]).unwrap();
    assert_eq!(Config::load(&path).unwrap().vram_threshold_gb, 0.0);
    // Programmatic misuse is caught too.
    for bad in [-0.5, f32::NAN, f32::INFINITY] {
        let err = set_threshold(&path, bad).unwrap_err();
        assert!(matches!(err, ShellError::InvalidArgument(_)), "{err}");
        assert_eq!(err.exit_code(), 2);
    }
    assert_eq!(Config::load(&path).unwrap().vram_threshold_gb, 0.0);
}

#[test]
fn config_prints_redacted_toml() {
    let dir = tempfile::tempdir().unwrap();
    let (path, arg) = cfg_arg(&dir);
    let mut c = Config::load(&path).unwrap();
    c.worker_id = Some("w-5".into());
    c.auth_token = Some("tok-very-secret".into());
    c.registration_secret = Some("a".repeat(64));
    c.save(&path).unwrap();
    let (_, text) = run(&["--config", &arg, "config"]).unwrap();
    assert!(text.starts_with(&format!("# {arg}\n")), "{text}");
    assert!(text.contains("worker_id = \"w-5\""), "{text}");
    assert!(text.contains("auth_token = \"<redacted>\""), "{text}");
    assert!(!text.contains("tok-very-secret"));
    assert!(!text.contains(&"a".repeat(64)));
    // The printed TOML parses back (comment and all).
    let _: toml::Table = toml::from_str(&text).unwrap();
}

#[test]
fn without_a_running_worker_pause_fails_and_enable_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let (path, arg) = cfg_arg(&dir);
    for cmd in ["pause", "resume"] {
        let err = run(&["--config", &arg, cmd]).unwrap_err();
        assert_eq!(err.exit_code(), 3, "{cmd}");
        assert_eq!(err.to_string(), format!("no running worker for {arg}"));
    }
    let (code, text) = run(&["--config", &arg, "disable"]).unwrap();
    assert_eq!(code, Some(0));
    assert!(text.contains("no running worker"), "{text}");
    assert!(!Config::load(&path).unwrap().auto_enabled);
    let (_, text) = run(&["--config", &arg, "status"]).unwrap();
    assert!(text.contains("auto_enabled:    false"), "{text}");
    assert!(text.contains("worker:          not running"), "{text}");
    let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["daemon"], serde_json::Value::Null);
    assert_eq!(v["auto_enabled"], false);
    run(&["--config", &arg, "enable"]).unwrap();
    assert!(Config::load(&path).unwrap().auto_enabled);
}

#[test]
fn with_a_running_worker_the_commands_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, arg) = cfg_arg(&dir);
    Config::load(&path).unwrap();
    let token = studio_core::Secret::from("lat-cli-0123456789");
    let mut server = crate::api::ApiServer::start(
        crate::api::bind(0).unwrap(),
        token.clone(),
        crate::api::test_loop::start(),
        &path,
    )
    .unwrap();
    server.publish(&path, &token).unwrap();

    let (_, text) = run(&["--config", &arg, "status"]).unwrap();
    assert!(text.contains("session connected"), "{text}");
    assert!(text.contains("paused:          no"), "{text}");
    assert!(text.contains("current job:     none"), "{text}");
    assert!(
        text.contains("recent jobs:     0 completed, 0 failed"),
        "{text}"
    );
    assert!(!text.contains("lat-cli-0123456789"), "{text}");
    let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["daemon"]["workerId"], "w-1");
    assert_eq!(v["daemon"]["session"], "connected");

    let (code, text) = run(&["--config", &arg, "pause"]).unwrap();
    assert_eq!(code, Some(0));
    assert!(text.starts_with("paused"), "{text}");
    let (_, text) = run(&["--config", &arg, "status"]).unwrap();
    assert!(text.contains("paused:          yes"), "{text}");
    let (_, text) = run(&["--config", &arg, "resume"]).unwrap();
    assert!(text.starts_with("resumed"), "{text}");

    let (_, text) = run(&["--config", &arg, "disable"]).unwrap();
    assert!(text.contains("applied to the running worker"), "{text}");
    let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["daemon"]["enabled"], false);

    let (_, text) = run(&["--config", &arg, "set-threshold", "5"]).unwrap();
    assert!(text.contains("applied to the running worker"), "{text}");
    let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["daemon"]["vramThresholdGb"], 5.0);

    // Gone: back to the file alone.
    server.stop();
    let err = run(&["--config", &arg, "pause"]).unwrap_err();
    assert!(matches!(err, ShellError::NotRunning { .. }), "{err}");
}

#[test]
fn a_broken_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, arg) = cfg_arg(&dir);
    std::fs::write(
        &path,
        "api_base_url = \"https://s/\"\nauth_token = oops-secret\n",
    )
    .unwrap();
    let err = run(&["--config", &arg, "status"]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&arg) && msg.contains("line 2"), "{msg}");
    assert!(!msg.contains("oops-secret"), "{msg}");
    assert_eq!(err.exit_code(), 3);
}
