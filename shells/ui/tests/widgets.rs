//! The window's widgets without a display (egui_kittest over AccessKit): each tab renders
//! from a recorded `/daemon/status` body, the buttons ask the daemon through the backend,
//! Save validates before anything is sent, and a dead daemon shows as disconnected.

use std::path::PathBuf;

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use serde_json::{json, Value};
use studio_ui::app::{QuitChoice, StudioApp, Tab, TrayAction};
use studio_ui::backend::{Backend, Call, Event, FakeDaemon};
use studio_ui::form::Field;
use studio_ui::model::{DaemonStatus, Health, LogEntry, LogPage, SettingsReply};

/// Whether a widget labelled exactly `text` is shown.
fn has<S>(harness: &Harness<'_, S>, text: &str) -> bool {
    harness.query_all_by_label(text).next().is_some()
}

/// Whether a widget whose label contains `text` is shown.
fn has_part<S>(harness: &Harness<'_, S>, text: &str) -> bool {
    harness.query_all_by_label_contains(text).next().is_some()
}

/// A `/daemon/status` body recorded from a real worker (`studio-worker run` against the
/// loopback studio, one synthetic job done and one in flight).
fn recorded_status() -> DaemonStatus {
    let body = serde_json::from_str(include_str!("fixtures/status.json")).unwrap();
    studio_ui::model::read(body).expect("the recorded body reads")
}

fn settings() -> SettingsReply {
    let config = studio_shell::Config::default();
    SettingsReply {
        settings: config.settings(),
        live: vec!["vram_threshold_gb".into(), "auto_enabled".into()],
        ..SettingsReply::default()
    }
}

/// A window on a fake daemon that has reported the recorded status and the settings.
fn window() -> (Harness<'static, StudioApp>, FakeDaemon) {
    let (backend, daemon) = Backend::pair();
    let app = StudioApp::new(backend, PathBuf::from("/home/ada/.config/w/config.toml"));
    daemon
        .events
        .send(Event::Status(Box::new(recorded_status())))
        .unwrap();
    daemon.events.send(Event::Settings(settings())).unwrap();
    let mut harness = Harness::builder()
        .with_size([900.0, 700.0])
        .build_ui_state(|ui, app: &mut StudioApp| app.ui(ui), app);
    harness.run();
    (harness, daemon)
}

/// The calls the window made so far.
fn calls(daemon: &FakeDaemon) -> Vec<Call> {
    daemon.calls.try_iter().collect()
}

fn open(harness: &mut Harness<'static, StudioApp>, tab: Tab) {
    harness.get_by_label(tab.label()).click();
    harness.run();
    assert_eq!(harness.state().tab, tab);
}

#[test]
fn the_status_tab_shows_the_recorded_status() {
    let (harness, _daemon) = window();
    for text in [
        "w-1",
        "connected",
        "2.8 s ago",
        "0.0 GB total, threshold 12.0 GB",
        "1 completed, 0 failed",
        "1 (0 reconnects)",
    ] {
        assert!(has(&harness, text), "{text} is shown");
    }
    assert_eq!(harness.state().health(), Health::Busy);
}

#[test]
fn the_jobs_tab_shows_the_job_in_flight_and_the_finished_ones() {
    let (mut harness, _daemon) = window();
    open(&mut harness, Tab::Jobs);
    for text in [
        "job-2",
        "llm",
        "write a haiku about tea",
        "job-1",
        "image",
        " completed ",
        "Finished (last 1)",
    ] {
        assert!(has(&harness, text), "{text} is shown");
    }
    assert!(has_part(&harness, "20."), "job-1 took 20 s");
    // The elapsed time is shown, live: at least the 4.8 s reported (never in ms).
    assert!(has(&harness, "Elapsed"));
    assert!(!has_part(&harness, "4827 ms"));
}

#[test]
fn the_config_tab_shows_every_setting_grouped() {
    let (mut harness, _daemon) = window();
    open(&mut harness, Tab::Config);
    for (group, keys) in studio_ui::form::GROUPS {
        assert!(has(&harness, group), "{group}");
        for key in keys {
            assert!(
                has_part(&harness, key) || has(&harness, studio_ui::form::help(key)),
                "{key}"
            );
        }
    }
    assert!(has(&harness, "Save"));
}

#[test]
fn the_logs_tab_filters_by_level_and_text() {
    let (mut harness, daemon) = window();
    let line = |seq, level: &str, message: &str, job: Option<&str>| LogEntry {
        seq,
        ts: "2026-12-05T13:00:00Z".into(),
        level: level.into(),
        category: "job".into(),
        message: message.into(),
        job_id: job.map(str::to_string),
    };
    daemon
        .events
        .send(Event::Logs(LogPage {
            entries: vec![
                line(1, "info", "accepted the offer", Some("job-2")),
                line(2, "error", "upload failed", Some("job-1")),
                line(3, "debug", "tick", None),
            ],
            next: 3,
        }))
        .unwrap();
    open(&mut harness, Tab::Logs);
    assert!(has_part(&harness, "accepted the offer"));
    assert!(has_part(&harness, "upload failed"));
    assert!(has(&harness, "Auto-scroll"));
    // Search over message, category and job id.
    harness
        .get_by_role(egui::accesskit::Role::TextInput)
        .focus();
    harness.run();
    harness
        .get_by_role(egui::accesskit::Role::TextInput)
        .type_text("job-1");
    harness.run();
    assert!(!has_part(&harness, "accepted the offer"));
    assert!(has_part(&harness, "upload failed"));
}

#[test]
fn the_window_keeps_at_most_the_last_thousand_log_lines() {
    let (mut harness, daemon) = window();
    let entries = (1..=1_200)
        .map(|seq| LogEntry {
            seq,
            level: "info".into(),
            message: format!("line {seq}"),
            ..LogEntry::default()
        })
        .collect();
    daemon
        .events
        .send(Event::Logs(LogPage {
            entries,
            next: 1_200,
        }))
        .unwrap();
    open(&mut harness, Tab::Logs);
    assert_eq!(harness.state().logs_kept(), studio_ui::app::MAX_LOG_LINES);
    assert!(has_part(&harness, ": line 1200"));
}

#[test]
fn the_about_tab_shows_version_config_and_update_check() {
    let (mut harness, daemon) = window();
    open(&mut harness, Tab::About);
    for text in [
        "0.1.0",
        "/home/ada/.config/w/config.toml",
        "off",
        "never",
        "Check for updates",
        "Start with my session",
    ] {
        assert!(has(&harness, text), "{text} is shown");
    }
    harness.get_by_label("Check for updates").click();
    harness.run();
    assert!(calls(&daemon).contains(&Call::CheckUpdate));
}

#[test]
fn pause_and_resume_call_the_api() {
    let (mut harness, daemon) = window();
    calls(&daemon);
    harness.get_by_label("Pause").click();
    harness.run();
    assert_eq!(calls(&daemon), [Call::Pause]);
    let mut paused = recorded_status();
    paused.paused = true;
    daemon.events.send(Event::Status(Box::new(paused))).unwrap();
    harness.run();
    assert!(has(&harness, " paused "));
    harness.get_by_label("Resume").click();
    harness.run();
    assert_eq!(calls(&daemon), [Call::Resume]);
}

#[test]
fn save_refuses_a_negative_threshold_and_sends_a_valid_one() {
    let (mut harness, daemon) = window();
    open(&mut harness, Tab::Config);
    calls(&daemon);
    harness
        .state_mut()
        .form_mut()
        .fields
        .insert("vram_threshold_gb".into(), Field::Text("-3".into()));
    harness.get_by_label("Save").click();
    harness.run();
    assert_eq!(calls(&daemon), [], "nothing is sent");
    assert!(has_part(&harness, "Not saved: vram_threshold_gb"));

    harness
        .state_mut()
        .form_mut()
        .fields
        .insert("vram_threshold_gb".into(), Field::Text("8".into()));
    harness
        .state_mut()
        .form_mut()
        .fields
        .insert("models_root".into(), Field::Text("/srv/models".into()));
    harness.get_by_label("Save").click();
    harness.run();
    let sent = calls(&daemon);
    let Some(Call::Settings(Some(edits))) = sent.first() else {
        panic!("a settings edit: {sent:?}");
    };
    assert_eq!(
        Value::Object(edits.clone()),
        json!({"models_root": "/srv/models", "vram_threshold_gb": 8.0})
    );
    // The daemon's answer: one applied live, one waiting for a restart.
    let mut reply = settings();
    reply.applied = vec!["vram_threshold_gb".into()];
    reply.restart_required = vec!["models_root".into()];
    daemon.events.send(Event::Settings(reply)).unwrap();
    harness.run();
    assert!(has_part(&harness, "Restart required: models_root"));
}

#[test]
fn a_dead_daemon_shows_as_disconnected() {
    let (mut harness, daemon) = window();
    assert!(has(&harness, " connected "));
    daemon
        .events
        .send(Event::Disconnected(
            "no worker answers for this config".into(),
        ))
        .unwrap();
    harness.run();
    assert!(has(&harness, " disconnected "));
    assert!(has(
        &harness,
        "Disconnected: no worker answers for this config"
    ));
    assert_eq!(harness.state().health(), Health::Down);
    // The window keeps working: tabs still switch, and the Status tab offers a start.
    open(&mut harness, Tab::Jobs);
    open(&mut harness, Tab::Status);
    harness.get_by_label("Start the worker").click();
    harness.run();
    assert!(calls(&daemon).contains(&Call::StartDaemon));
}

#[test]
fn quit_offers_to_stop_the_worker() {
    let (mut harness, _daemon) = window();
    open(&mut harness, Tab::About);
    harness.get_by_label("Quit").click();
    harness.run();
    harness.get_by_label("Stop the worker too").click();
    harness.run();
    assert_eq!(harness.state().quit, Some(QuitChoice::StopWorker));
}

/// The tray menu's entries, as the window carries them out (the tray itself only delivers
/// them: .ci/ui-screenshots checks it comes up on a real session bus).
#[test]
fn the_tray_menu_pauses_resumes_opens_and_quits() {
    let (mut harness, daemon) = window();
    calls(&daemon);
    let app = harness.state_mut();
    assert!(app.on_tray(TrayAction::Open), "Open shows the window");
    assert!(
        !app.on_tray(TrayAction::TogglePause),
        "Pause works from the tray alone"
    );
    assert_eq!(calls(&daemon), [Call::Pause], "not paused: Pause");
    // Once the daemon says it is paused, the same entry resumes.
    let mut paused = recorded_status();
    paused.paused = true;
    daemon.events.send(Event::Status(Box::new(paused))).unwrap();
    harness.run();
    harness.state_mut().on_tray(TrayAction::TogglePause);
    assert_eq!(calls(&daemon), [Call::Resume]);
    // Quit shows the window with its question (stop the worker too?).
    assert!(!harness.state().is_quitting());
    assert!(harness.state_mut().on_tray(TrayAction::Quit));
    harness.run();
    assert!(harness.state().is_quitting());
    assert!(has(&harness, "Stop the worker too"), "the quit dialog asks");
    assert_eq!(
        calls(&daemon),
        [],
        "nothing is stopped before the person answers"
    );
}
