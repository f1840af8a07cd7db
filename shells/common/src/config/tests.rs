use super::*;

#[test]
fn settings_are_edited_as_json_and_validated() {
    let config = Config {
        local_api_token: Some("t0k".into()),
        auth_token: Some("a".into()),
        ..Config::default()
    };
    let settings = config.settings();
    assert_eq!(settings.len(), SETTING_KEYS.len());
    assert_eq!(settings["ws_reconnect_attempts"], serde_json::Value::Null);
    let edits = |v: serde_json::Value| v.as_object().unwrap().clone();
    let edited = config
        .with_settings(&edits(serde_json::json!({
            "vram_threshold_gb": 3.5,
            "auto_update_feed": "https://feed.example/",
            "auto_start": true,
        })))
        .unwrap();
    assert_eq!(edited.vram_threshold_gb, 3.5);
    assert!(edited.auto_start);
    // Secrets and unknown keys are kept.
    assert_eq!(edited.local_api_token.as_deref(), Some("t0k"));
    assert_eq!(
        config.changed_settings(&edited),
        ["vram_threshold_gb", "auto_start", "auto_update_feed"]
    );
    let cleared = edited
        .with_settings(&edits(serde_json::json!({"auto_update_feed": null})))
        .unwrap();
    assert_eq!(cleared.auto_update_feed, None);
    for (bad, names) in [
        (
            serde_json::json!({"vram_threshold_gb": -2}),
            "vram_threshold_gb",
        ),
        (serde_json::json!({"api_base_url": "nope"}), "api_base_url"),
        (
            serde_json::json!({"auto_update_interval_secs": -1}),
            "auto_update_interval_secs",
        ),
        (serde_json::json!({"auth_token": "x"}), "auth_token"),
        (serde_json::json!({"models_root": ""}), "models_root"),
    ] {
        let e = config.with_settings(&edits(bad.clone())).unwrap_err();
        assert!(e.contains(names), "{bad}: {e}");
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn missing_file_is_created_with_defaults() {
    let dir = tmp();
    let path = dir.path().join("sub").join("config.toml");
    let c = Config::load(&path).unwrap();
    assert!(path.exists());
    assert_eq!(c.api_base_url, DEFAULT_API_BASE_URL);
    assert_eq!(c.vram_threshold_gb, 12.0);
    assert_eq!(c.auto_update_interval_secs, 1800);
    assert!(!c.models_root.starts_with("~"));
    assert_eq!(c.registration(), RegistrationView::NotRegistered);
    // And it loads back identically.
    assert_eq!(Config::load(&path).unwrap(), c);
}

#[cfg(unix)]
#[test]
fn saved_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let path = dir.path().join("config.toml");
    fs::write(&path, "x").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    Config::default().save(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // No temp files left behind.
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[cfg(unix)]
#[test]
fn a_config_open_to_others_is_tightened_on_load_and_its_dir_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let path = dir.path().join("config.toml");
    fs::write(
        &path,
        "api_base_url = \"https://s.example/\"\nvram_threshold_gb = 1.0\n",
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).unwrap();
    let warning = tighten_permissions(&path).unwrap();
    assert!(
        warning.contains("0664") && warning.contains("0600"),
        "{warning}"
    );
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(tighten_permissions(&path), None);
    // Config::load does it too.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    Config::load(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A config directory the worker creates is owner-only.
    let nested = dir.path().join("a").join("b").join("config.toml");
    Config::default().save(&nested).unwrap();
    for d in [dir.path().join("a"), dir.path().join("a").join("b")] {
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}

#[test]
fn plain_text_studio_urls_to_other_hosts_need_the_opt_in() {
    for remote in [
        "http://studio.example/",
        "ws://studio.example:80",
        "http://10.0.0.5:9790/",
        "http://0.0.0.0:9790/",
        "HTTP://user:pw@studio.example/",
        "http://[2001:db8::1]:9790/",
    ] {
        assert!(insecure_remote_host(remote).is_some(), "{remote}");
        let text = format!("api_base_url = \"{remote}\"\nvram_threshold_gb = 1.0\n");
        let e = Config::parse(Path::new("c.toml"), &text).unwrap_err();
        assert!(
            e.to_string().contains("allow_insecure_studio_url"),
            "{remote}: {e}"
        );
        let allowed = format!("{text}allow_insecure_studio_url = true\n");
        let c = Config::parse(Path::new("c.toml"), &allowed).unwrap();
        assert!(c.insecure_url_warning().unwrap().contains("unencrypted"));
    }
    for fine in [
        "https://studio.example/",
        "wss://studio.example/",
        "http://127.0.0.1:9790/",
        "http://localhost:9790",
        "ws://[::1]:9790/",
    ] {
        assert_eq!(insecure_remote_host(fine), None, "{fine}");
        let text = format!("api_base_url = \"{fine}\"\nvram_threshold_gb = 1.0\n");
        let c = Config::parse(Path::new("c.toml"), &text).unwrap();
        assert_eq!(c.insecure_url_warning(), None);
    }
    // The key round-trips and is not written when off.
    let c = Config {
        allow_insecure_studio_url: true,
        api_base_url: "http://studio.example/".into(),
        ..Config::default()
    };
    assert!(c.to_toml().contains("allow_insecure_studio_url = true"));
    assert!(!Config::default().to_toml().contains("allow_insecure"));
}

#[test]
fn the_model_memory_budget_is_a_key_with_a_ram_default() {
    let text = "api_base_url = \"https://s.example/\"\nvram_threshold_gb = 1.0\n";
    let c = Config::parse(Path::new("c.toml"), text).unwrap();
    assert_eq!(c.model_memory_budget_gb, None);
    assert_eq!(
        c.model_memory_budget_bytes(Some(32_000_000_000)),
        studio_engines::EngineSettings::default_budget(Some(32_000_000_000))
    );
    let c = Config::parse(
        Path::new("c.toml"),
        &format!("{text}model_memory_budget_gb = 2.5\n"),
    )
    .unwrap();
    assert_eq!(c.model_memory_budget_bytes(Some(1 << 40)), 2_500_000_000);
    for bad in ["-1.0", "nan", "inf"] {
        let e = Config::parse(
            Path::new("c.toml"),
            &format!("{text}model_memory_budget_gb = {bad}\n"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("model_memory_budget_gb"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn minimal_file_loads() {
    let text = "api_base_url = \"http://127.0.0.1:9790\"\nworker_id = \"w-1\"\n\
                    auth_token = \"tok\"\nvram_threshold_gb = 8.5\nauto_update_enabled = false\n";
    let c = Config::parse(Path::new("c.toml"), text).unwrap();
    assert_eq!(c.worker_id.as_deref(), Some("w-1"));
    assert_eq!(c.vram_threshold_gb, 8.5);
    assert!(!c.auto_update_enabled);
    assert!(c.start_minimised);
    assert!(!c.only_when_idle);
    assert_eq!(c.ws_reconnect_attempts, None);
    assert!(c.extra.is_empty());
    assert_eq!(
        c.registration(),
        RegistrationView::Approved { worker_id: "w-1" }
    );
}

#[test]
fn auto_update_keys_are_validated() {
    let base = "api_base_url = \"https://s/\"\nvram_threshold_gb = 12\n";
    let parse = |more: &str| Config::parse(Path::new("c.toml"), &format!("{base}{more}"));
    let c = parse("").unwrap();
    assert_eq!(c.auto_update_feed, None);
    assert!(!c.auto_update_prerelease);
    let c = parse("auto_update_interval_secs = 60\nauto_update_prerelease = true\n").unwrap();
    assert_eq!(c.auto_update_interval_secs, MIN_AUTO_UPDATE_INTERVAL_SECS);
    assert!(c.auto_update_prerelease);
    let e = parse("auto_update_interval_secs = 59\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("below the minimum of 60 seconds"), "{e}");
    let c = parse("auto_update_feed = \"http://127.0.0.1:8/releases\"\n").unwrap();
    assert_eq!(
        c.auto_update_feed.as_deref(),
        Some("http://127.0.0.1:8/releases")
    );
    let e = parse("auto_update_feed = \"http://example.com/releases\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("plain http"), "{e}");
}

#[test]
fn serde_defaults_follow_the_protocol() {
    let c = Config::parse(
        Path::new("c.toml"),
        "api_base_url = \"https://s/\"\nvram_threshold_gb = 12\n",
    )
    .unwrap();
    assert!(c.auto_update_enabled, "protocol default for a missing key");
    assert!(c.start_minimised);
    assert!(!c.auto_start);
    assert_eq!(c.auto_update_interval_secs, 1800);
    assert_eq!(c.models_root, expand_home(Path::new("~/models")));
}

#[test]
fn unknown_keys_are_ignored_and_kept() {
    let dir = tmp();
    let path = dir.path().join("config.toml");
    let text = "api_base_url = \"https://s/\"\nvram_threshold_gb = 4.0\n\
                    tray_port = 4787\ntray_token = \"lat-secret\"\nengine = \"gradio\"\n\
                    auto_update_channel = \"beta\"\n\
                    [sentry]\ndsn = \"https://k@sentry/1\"\nenv = \"prod\"\n";
    fs::write(&path, text).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.extra.len(), 5);
    c.save(&path).unwrap();
    let back = Config::load(&path).unwrap();
    assert_eq!(back, c);
    let saved = fs::read_to_string(&path).unwrap();
    assert!(saved.contains("tray_port = 4787"));
    assert!(saved.contains("auto_update_channel = \"beta\""));
    // Redaction reaches unknown secret-looking keys, nested too.
    let shown = c.to_string();
    assert!(!shown.contains("lat-secret"));
    assert!(!shown.contains("sentry/1"));
    assert!(shown.contains("env = \"prod\""));
    assert!(shown.contains("tray_port = 4787"));
}

#[test]
fn the_control_keys_have_defaults_and_the_token_is_a_secret() {
    let c = Config::parse(
        Path::new("c.toml"),
        "api_base_url = \"https://s/\"\nvram_threshold_gb = 12\n",
    )
    .unwrap();
    assert!(c.auto_enabled);
    assert_eq!(c.local_api_port, DEFAULT_LOCAL_API_PORT);
    assert_eq!(c.local_api_token, None);
    let text = "api_base_url = \"https://s/\"\nvram_threshold_gb = 12\nauto_enabled = false\n\
                    local_api_port = 0\nlocal_api_token = \"lat-0123456789\"\n";
    let c = Config::parse(Path::new("c.toml"), text).unwrap();
    assert!(!c.auto_enabled);
    assert_eq!(c.local_api_port, 0);
    assert_eq!(c.local_api_token.as_deref(), Some("lat-0123456789"));
    assert!(c.extra.is_empty());
    assert!(
        !c.to_worker_config(crate::host::probe(), BTreeMap::new(), 1)
            .auto_enabled
    );
    for shown in [c.to_string(), format!("{c:?}")] {
        assert!(!shown.contains("lat-0123456789"), "{shown}");
        assert!(shown.contains("auto_enabled"), "{shown}");
    }
    // An empty token counts as none (minted on the next run); a port out of range is
    // a parse error.
    let c = Config::parse(
        Path::new("c.toml"),
        "api_base_url = \"https://s/\"\nvram_threshold_gb = 1\nlocal_api_token = \" \"\n",
    )
    .unwrap();
    assert_eq!(c.local_api_token, None);
    let err = Config::parse(
        Path::new("c.toml"),
        "api_base_url = \"https://s/\"\nvram_threshold_gb = 1\nlocal_api_port = 70000\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn required_keys_are_required() {
    let err = Config::parse(Path::new("/x/c.toml"), "vram_threshold_gb = 1\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/x/c.toml"), "{msg}");
    assert!(msg.contains("api_base_url"), "{msg}");
}

#[test]
fn parse_errors_name_line_and_column_but_never_the_text() {
    let secret = "s3cr3t-abcdef0123456789";
    let cases = [
            // Syntax error on the line of a secret.
            format!("api_base_url = \"https://s/\"\nvram_threshold_gb = 1\nauth_token = {secret}\n"),
            // Unterminated string holding a secret.
            format!("api_base_url = \"https://s/\"\nauth_token = \"{secret}\nvram_threshold_gb = 1\n"),
            // Type error whose serde message quotes the value.
            format!("api_base_url = \"https://s/\"\nvram_threshold_gb = \"{secret}\"\n"),
            format!("api_base_url = \"https://s/\"\nvram_threshold_gb = 1\nworker_id = 5\nauth_token = \"{secret}\"\n"),
        ];
    for (i, text) in cases.iter().enumerate() {
        let err = Config::parse(Path::new("/etc/w/config.toml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("s3cr3t"), "case {i} leaked: {msg}");
        assert!(!msg.contains("abcdef"), "case {i} leaked: {msg}");
        assert!(msg.contains("/etc/w/config.toml"), "case {i}: {msg}");
        match err {
            ShellError::ConfigParse { line, column, .. } => {
                assert!(line.is_some() && column.is_some(), "case {i}: {msg}");
            }
            other => panic!("case {i}: {other}"),
        }
    }
    let err = Config::parse(Path::new("c.toml"), &cases[2]).unwrap_err();
    match err {
        ShellError::ConfigParse { line, .. } => assert_eq!(line, Some(2)),
        other => panic!("{other}"),
    }
}

#[test]
fn values_are_validated() {
    for (text, needle) in [
        (
            "api_base_url = \"https://s/\"\nvram_threshold_gb = -1\n",
            "vram_threshold_gb",
        ),
        (
            "api_base_url = \"https://s/\"\nvram_threshold_gb = nan\n",
            "vram_threshold_gb",
        ),
        (
            "api_base_url = \"https://s/\"\nvram_threshold_gb = inf\n",
            "vram_threshold_gb",
        ),
        (
            "api_base_url = \"studio.minis.gg\"\nvram_threshold_gb = 1\n",
            "scheme",
        ),
        (
            "api_base_url = \"ftp://s/\"\nvram_threshold_gb = 1\n",
            "ftp",
        ),
        (
            "api_base_url = \"https:///x\"\nvram_threshold_gb = 1\n",
            "host",
        ),
    ] {
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err();
        assert!(matches!(err, ShellError::ConfigInvalid { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn gradio_keys_configure_the_gradio_engine() {
    // Unset: the engine's defaults, and nothing written to a new file.
    let c = Config::default();
    assert_eq!(c.gradio_settings(), GradioSettings::default());
    assert!(!c.to_toml().contains("gradio"), "{}", c.to_toml());

    let text = "api_base_url = \"https://s/\"\nvram_threshold_gb = 1\n\
                    gradio_endpoint_url = \"http://127.0.0.1:7861/gradio_api\"\n\
                    gradio_api = \"legacy\"\ngradio_api_name = \"paint\"\n\
                    gradio_timeout_secs = 90\n\
                    supported_models_override = [\"my-sdxl\", \"my-flux\"]\n";
    let c = Config::parse(Path::new("c.toml"), text).unwrap();
    assert!(c.extra.is_empty(), "{:?}", c.extra);
    let g = c.gradio_settings();
    assert_eq!(g.endpoint_url, "http://127.0.0.1:7861/gradio_api");
    assert_eq!(g.api, GradioApi::Legacy);
    assert_eq!(g.api_name, "paint");
    assert_eq!(g.timeout, std::time::Duration::from_secs(90));
    assert_eq!(g.models, ["my-sdxl", "my-flux"]);
    // They survive a save and a load, and reach the engines.
    assert_eq!(Config::parse(Path::new("c.toml"), &c.to_toml()).unwrap(), c);
    assert_eq!(crate::engine::engine_settings(&c).gradio, g);

    for (line, needle) in [
        ("gradio_endpoint_url = \"ftp://x/\"", "gradio_endpoint_url"),
        ("gradio_api = \"rest\"", "gradio_api"),
        ("gradio_api_name = \"a/b\"", "gradio_api_name"),
        ("gradio_timeout_secs = 0", "gradio_timeout_secs"),
    ] {
        let text = format!("api_base_url = \"https://s/\"\nvram_threshold_gb = 1\n{line}\n");
        let err = Config::parse(Path::new("c.toml"), &text).unwrap_err();
        assert!(matches!(err, ShellError::ConfigInvalid { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{line}: {err}");
    }
}

#[test]
fn tilde_expansion() {
    let home = Path::new("/home/u");
    assert_eq!(
        expand_home_with(Path::new("~/models"), Some(home)),
        PathBuf::from("/home/u/models")
    );
    assert_eq!(expand_home_with(Path::new("~"), Some(home)), home);
    assert_eq!(
        expand_home_with(Path::new("/abs/~/x"), Some(home)),
        PathBuf::from("/abs/~/x")
    );
    assert_eq!(
        expand_home_with(Path::new("~other/x"), Some(home)),
        PathBuf::from("~other/x")
    );
    assert_eq!(
        expand_home_with(Path::new("~/models"), None),
        std::env::temp_dir().join("studio-worker-models")
    );
}

#[test]
fn empty_ids_count_as_unset() {
    let c = Config::parse(
            Path::new("c.toml"),
            "api_base_url = \"https://s/\"\nvram_threshold_gb = 1\nworker_id = \"\"\nauth_token = \"\"\n",
        )
        .unwrap();
    assert_eq!(c.worker_id, None);
    assert_eq!(c.registration(), RegistrationView::NotRegistered);
}

#[test]
fn redaction_masks_secrets_everywhere() {
    let c = Config {
        auth_token: Some("tok-abc".into()),
        registration_secret: Some("f".repeat(64)),
        worker_id: Some("w-9".into()),
        ..Config::default()
    };
    for shown in [c.to_string(), format!("{c:?}"), c.redacted().to_toml()] {
        assert!(!shown.contains("tok-abc"), "{shown}");
        assert!(!shown.contains(&"f".repeat(64)), "{shown}");
        assert!(shown.contains("w-9"), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
    }
    // The real text keeps them.
    assert!(c.to_toml().contains("tok-abc"));
}

#[test]
fn worker_config_mapping() {
    let c = Config {
        worker_id: Some("w-1".into()),
        auth_token: Some("tok".into()),
        install_id: Some("iid".into()),
        vram_threshold_gb: 6.0,
        ws_reconnect_attempts: Some(5),
        only_when_idle: true,
        auto_update_interval_secs: 120,
        ..Config::default()
    };
    let host = crate::host::probe();
    let mut models = BTreeMap::new();
    models.insert(TaskKind::Image, vec!["synthetic".to_string()]);
    let w = c.to_worker_config(host.clone(), models.clone(), 42);
    assert_eq!(
        w.credentials,
        Some(Credentials {
            worker_id: "w-1".into(),
            auth_token: "tok".into()
        })
    );
    assert_eq!(w.registration.install_id.as_deref(), Some("iid"));
    assert_eq!(w.vram_threshold_gb, 6.0);
    assert_eq!(w.reconnect_attempts, 5);
    assert!(w.only_when_idle);
    assert_eq!(w.seed, 42);
    assert_eq!(w.host, host);
    assert_eq!(w.models, models);
    assert_eq!(
        w.timings.update_interval,
        std::time::Duration::from_secs(120)
    );
    assert_eq!(w.timings.heartbeat, Timings::default().heartbeat);

    // A token without a worker id is not a credential.
    let half = Config {
        auth_token: Some("tok".into()),
        ..Config::default()
    };
    assert_eq!(
        half.to_worker_config(crate::host::probe(), BTreeMap::new(), 1)
            .credentials,
        None
    );
}

#[test]
fn job_deadlines_are_configurable_per_kind_and_written_back() {
    let text = "api_base_url = \"https://s/\"\nvram_threshold_gb = 1\nfuture_key = 3\n\n\
                    [job_deadline_secs]\nimage = 60\nvideo = 7200\n";
    let c = Config::parse(Path::new("c.toml"), text).unwrap();
    let w = c.to_worker_config(crate::host::probe(), BTreeMap::new(), 1);
    let d = &w.timings.job_deadlines;
    assert_eq!(d.image, std::time::Duration::from_secs(60));
    assert_eq!(d.video, std::time::Duration::from_secs(7200));
    assert_eq!(
        d.llm,
        Timings::default().job_deadlines.llm,
        "left out: the default"
    );
    // Saved and read back: the table survives, and so does the unknown plain key
    // (which must not land inside the table).
    let again = Config::parse(Path::new("c.toml"), &c.to_toml()).unwrap();
    assert_eq!(again.job_deadline_secs, c.job_deadline_secs);
    assert_eq!(
        again.extra.get("future_key").and_then(|v| v.as_integer()),
        Some(3)
    );
    // Zero and unknown kinds are refused.
    let zero =
        "api_base_url = \"https://s/\"\nvram_threshold_gb = 1\n[job_deadline_secs]\nllm = 0\n";
    let e = Config::parse(Path::new("c.toml"), zero)
        .unwrap_err()
        .to_string();
    assert!(e.contains("job_deadline_secs.llm"), "{e}");
    let odd =
        "api_base_url = \"https://s/\"\nvram_threshold_gb = 1\n[job_deadline_secs]\nsculpt = 5\n";
    assert!(Config::parse(Path::new("c.toml"), odd).is_err());
}

#[test]
fn the_structured_settings_are_edited_and_kept_by_other_edits() {
    let text = "api_base_url = \"https://s/\"\nvram_threshold_gb = 1\n\
                supported_models_override = [\"sdxl\"]\n\n[job_deadline_secs]\nimage = 60\n";
    let c = Config::parse(Path::new("c.toml"), text).unwrap();
    let settings = c.settings();
    assert_eq!(
        settings["job_deadline_secs"],
        serde_json::json!({"image": 60})
    );
    assert_eq!(
        settings["supported_models_override"],
        serde_json::json!(["sdxl"])
    );
    let edits = |v: serde_json::Value| v.as_object().unwrap().clone();
    // Another setting edited: the table and the list stay as they were.
    let other = c
        .with_settings(&edits(serde_json::json!({"vram_threshold_gb": 2})))
        .unwrap();
    assert_eq!(other.job_deadline_secs, c.job_deadline_secs);
    assert_eq!(other.supported_models_override, ["sdxl"]);
    assert!(c.changed_settings(&other) == ["vram_threshold_gb"]);
    // Edited themselves: replaced whole; empty clears.
    let edited = c
        .with_settings(&edits(serde_json::json!({
            "job_deadline_secs": {"llm": 90, "video": 7200},
            "supported_models_override": [],
        })))
        .unwrap();
    assert_eq!(
        edited.job_deadline_secs,
        BTreeMap::from([(TaskKind::Llm, 90), (TaskKind::Video, 7200)])
    );
    assert!(edited.supported_models_override.is_empty());
    let again = Config::parse(Path::new("c.toml"), &edited.to_toml()).unwrap();
    assert_eq!(again.job_deadline_secs, edited.job_deadline_secs);
    // Zero seconds and unknown kinds are refused, naming the setting.
    for bad in [
        serde_json::json!({"job_deadline_secs": {"llm": 0}}),
        serde_json::json!({"job_deadline_secs": {"sculpt": 5}}),
        serde_json::json!({"supported_models_override": "sdxl"}),
    ] {
        let e = c.with_settings(&edits(bad.clone())).unwrap_err();
        assert!(
            e.contains("job_deadline_secs") || e.contains("supported_models_override"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn apply_persist_sets_and_clears_every_field() {
    let mut c = Config {
        worker_id: Some("old".into()),
        auth_token: Some("old".into()),
        ..Config::default()
    };
    c.apply_persist(&PersistedState {
        install_id: Some("i".into()),
        registration_request_id: Some("rr-1".into()),
        registration_secret: Some("s".into()),
        worker_id: None,
        auth_token: None,
    });
    assert_eq!(c.install_id.as_deref(), Some("i"));
    assert_eq!(c.registration_request_id.as_deref(), Some("rr-1"));
    assert_eq!(c.registration_secret.as_deref(), Some("s"));
    assert_eq!(c.worker_id, None);
    assert_eq!(
        c.registration(),
        RegistrationView::Pending { request_id: "rr-1" }
    );
}

#[test]
fn sanitizer_keeps_grammar_and_key_names() {
    assert_eq!(
        sanitize_message("missing field `api_base_url`"),
        "missing field `api_base_url`"
    );
    assert_eq!(
        sanitize_message("invalid type: string \"hunter2\", expected f32"),
        "invalid type: string \"…\", expected f32"
    );
    assert_eq!(sanitize_message("expected `=`, `]`"), "expected `=`, `]`");
    assert_eq!(
        sanitize_message("invalid boolean, expected `true`, `false`"),
        "invalid boolean, expected `true`, `false`"
    );
    assert_eq!(sanitize_message("bad `abc"), "bad `…");
    assert_eq!(sanitize_message("can't read 'x1'"), "can't read '…'");
}

#[test]
fn line_column_counts_characters() {
    assert_eq!(line_column("ab\ncdé f", 7), (2, 4));
    assert_eq!(line_column("x", 99), (1, 2));
}

#[test]
fn save_into_a_missing_directory_and_a_bad_one() {
    let dir = tmp();
    let nested = dir.path().join("a/b/config.toml");
    Config::default().save(&nested).unwrap();
    assert!(nested.exists());
    // A directory where the file should be: the write fails cleanly.
    let blocked = dir.path().join("blocked");
    fs::create_dir(&blocked).unwrap();
    let err = Config::default().save(&blocked).unwrap_err();
    assert!(matches!(err, ShellError::ConfigIo { .. }), "{err}");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        2,
        "temp file left"
    );
}
