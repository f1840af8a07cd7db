//! The window: five tabs drawn from what the daemon last reported, and the actions that
//! ask it for changes. Everything it knows arrives as a [`backend::Event`]; everything it
//! does leaves as a [`backend::Call`]: it never touches the network or the daemon's files
//! itself, so it keeps drawing whatever the daemon does.
//!
//! [`StudioApp::ui`] draws one frame into any `egui::Ui`: the real window (eframe) and the
//! display-free widget tests (egui_kittest) run the same code.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant;

use eframe::egui::{self, Color32, RichText};

use crate::backend::{Backend, Call, Event};
use crate::form::{self, Field, Form};
use crate::model::{self, DaemonStatus, Health, LogEntry};

/// The log lines kept in the window (the oldest go first).
pub const MAX_LOG_LINES: usize = 1_000;

/// The tabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Status,
    Jobs,
    Config,
    Logs,
    About,
}

impl Tab {
    pub const ALL: [Tab; 5] = [Tab::Status, Tab::Jobs, Tab::Config, Tab::Logs, Tab::About];

    pub fn label(self) -> &'static str {
        match self {
            Tab::Status => "Status",
            Tab::Jobs => "Jobs",
            Tab::Config => "Config",
            Tab::Logs => "Logs",
            Tab::About => "About",
        }
    }
}

/// Which log lines to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelFilter {
    All,
    InfoAndUp,
    WarnAndUp,
    Errors,
}

impl LevelFilter {
    const ALL: [LevelFilter; 4] = [
        LevelFilter::All,
        LevelFilter::InfoAndUp,
        LevelFilter::WarnAndUp,
        LevelFilter::Errors,
    ];

    fn label(self) -> &'static str {
        match self {
            LevelFilter::All => "all levels",
            LevelFilter::InfoAndUp => "info and up",
            LevelFilter::WarnAndUp => "warnings and errors",
            LevelFilter::Errors => "errors",
        }
    }

    fn admits(self, level: &str) -> bool {
        let rank = match level {
            "error" => 3,
            "warn" | "warning" => 2,
            "info" => 1,
            _ => 0,
        };
        rank >= match self {
            LevelFilter::All => 0,
            LevelFilter::InfoAndUp => 1,
            LevelFilter::WarnAndUp => 2,
            LevelFilter::Errors => 3,
        }
    }
}

/// What the person chose in the tray menu (or a left click on the icon: Open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrayAction {
    Open,
    TogglePause,
    Quit,
}

/// What the person chose when quitting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuitChoice {
    /// Close the window and the tray; the worker keeps running.
    KeepWorker,
    /// Stop the worker too.
    StopWorker,
}

/// The whole window's state.
pub struct StudioApp {
    backend: Backend,
    config_path: PathBuf,
    pub tab: Tab,
    status: Option<Box<DaemonStatus>>,
    status_at: Instant,
    /// `Some(why)` while no daemon answers.
    disconnected: Option<String>,
    logs: VecDeque<LogEntry>,
    log_filter: LevelFilter,
    log_search: String,
    auto_scroll: bool,
    form: Form,
    form_error: Option<String>,
    restart_required: Vec<String>,
    /// The last outcome of an action (`Err`: it failed).
    notice: Option<Result<String, String>>,
    /// The quit dialog is open.
    quitting: bool,
    /// Set once the person has chosen how to quit.
    pub quit: Option<QuitChoice>,
    autostart: crate::autostart::Autostart,
}

impl StudioApp {
    /// A window for the daemon of `config_path`, talking through `backend`.
    pub fn new(backend: Backend, config_path: PathBuf) -> StudioApp {
        backend.send(Call::Settings(None));
        StudioApp {
            backend,
            autostart: crate::autostart::Autostart::for_config(&config_path),
            config_path,
            tab: Tab::Status,
            status: None,
            status_at: Instant::now(),
            disconnected: None,
            logs: VecDeque::new(),
            log_filter: LevelFilter::All,
            log_search: String::new(),
            auto_scroll: true,
            form: Form::default(),
            form_error: None,
            restart_required: Vec::new(),
            notice: None,
            quitting: false,
            quit: None,
        }
    }

    /// The backend (the tray sends its actions through it too).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The last status, while the daemon answers.
    pub fn status(&self) -> Option<&DaemonStatus> {
        match self.disconnected {
            None => self.status.as_deref(),
            Some(_) => None,
        }
    }

    /// Idle, busy or down (the tray's colour).
    pub fn health(&self) -> Health {
        self.status().map_or(Health::Down, DaemonStatus::health)
    }

    /// Opens the quit dialog (the tray's Quit shows the window with it).
    pub fn ask_quit(&mut self) {
        self.quitting = true;
    }

    /// Carries out what the person chose in the tray menu; `true` when the window is to be
    /// shown (Open, and Quit, whose dialog asks whether to stop the worker too).
    pub fn on_tray(&mut self, action: TrayAction) -> bool {
        match action {
            TrayAction::Open => true,
            TrayAction::TogglePause => {
                let paused = self.status().is_some_and(|s| s.paused);
                self.backend
                    .send(if paused { Call::Resume } else { Call::Pause });
                false
            }
            TrayAction::Quit => {
                self.ask_quit();
                true
            }
        }
    }

    /// Whether the quit dialog is open.
    pub fn is_quitting(&self) -> bool {
        self.quitting
    }

    /// Takes every event the backend has sent.
    pub fn drain_events(&mut self) {
        while let Some(event) = self.backend.try_recv() {
            self.on_event(event);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Status(status) => {
                if self.disconnected.take().is_some() || self.status.is_none() {
                    // (Re)connected: the daemon's settings may differ from the file's.
                    self.backend.send(Call::Settings(None));
                }
                self.status = Some(status);
                self.status_at = Instant::now();
            }
            Event::Disconnected(why) => self.disconnected = Some(why),
            Event::Logs(page) => {
                self.logs.extend(page.entries);
                while self.logs.len() > MAX_LOG_LINES {
                    self.logs.pop_front();
                }
            }
            Event::Settings(reply) => {
                self.restart_required = reply.restart_required.clone();
                if let Some(Some(on)) = reply.settings.get("auto_start").map(|v| v.as_bool()) {
                    if let Err(e) = self.autostart.set(on) {
                        self.notice = Some(Err(format!("start with my session: {e}")));
                    }
                }
                self.form = Form::load(&reply.settings);
            }
            Event::Done { call, result } => {
                self.notice = Some(result.map_err(|e| format!("{call}: {e}")));
            }
        }
    }

    /// Draws one frame.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        self.drain_events();
        egui::Panel::top("header").show(ui, |ui| self.header(ui));
        egui::Panel::bottom("notice").show(ui, |ui| self.footer(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical()
                .id_salt("tab")
                .auto_shrink([false, false])
                .stick_to_bottom(self.tab == Tab::Logs && self.auto_scroll)
                .show(ui, |ui| match self.tab {
                    Tab::Status => self.status_tab(ui),
                    Tab::Jobs => self.jobs_tab(ui),
                    Tab::Config => self.config_tab(ui),
                    Tab::Logs => self.logs_tab(ui),
                    Tab::About => self.about_tab(ui),
                });
        });
        if self.quitting {
            self.quit_dialog(ui);
        }
    }

    fn header(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("Studio worker");
            let (text, colour) = match self.status() {
                Some(st) => (st.session_label(), health_colour(st.health())),
                None => ("disconnected", health_colour(Health::Down)),
            };
            badge(ui, text, colour);
            if let Some(st) = self.status() {
                if st.paused {
                    badge(ui, "paused", Color32::from_rgb(200, 140, 0));
                }
                if !st.enabled {
                    badge(ui, "disabled", Color32::from_rgb(200, 140, 0));
                }
                if st.busy {
                    badge(ui, "busy", Color32::from_rgb(200, 140, 0));
                }
            }
        });
        ui.horizontal(|ui| {
            for tab in Tab::ALL {
                ui.selectable_value(&mut self.tab, tab, tab.label());
            }
        });
    }

    fn footer(&mut self, ui: &mut egui::Ui) {
        match (&self.disconnected, &self.notice) {
            (Some(why), _) => {
                ui.colored_label(
                    Color32::from_rgb(220, 60, 60),
                    format!("Disconnected: {why}"),
                );
            }
            (None, Some(Ok(message))) => {
                ui.label(message);
            }
            (None, Some(Err(message))) => {
                ui.colored_label(Color32::from_rgb(220, 60, 60), message);
            }
            (None, None) => {
                ui.label("");
            }
        }
        if let (Some(_), Some(notice)) = (&self.disconnected, &self.notice) {
            match notice {
                Ok(m) => ui.label(m),
                Err(m) => ui.colored_label(Color32::from_rgb(220, 60, 60), m),
            };
        }
    }

    fn status_tab(&mut self, ui: &mut egui::Ui) {
        let Some(st) = self.status().cloned() else {
            ui.label("No worker answers for this config.");
            ui.label(format!("Config: {}", self.config_path.display()));
            if ui.button("Start the worker").clicked() {
                self.backend.send(Call::StartDaemon);
            }
            return;
        };
        egui::Grid::new("status")
            .num_columns(2)
            .striped(true)
            .show(ui, |ui| {
                row(
                    ui,
                    "Worker id",
                    st.worker_id.as_deref().unwrap_or("(not registered)"),
                );
                row(ui, "Session", st.session_label());
                row(
                    ui,
                    "Last heartbeat ack",
                    &st.last_heartbeat_ack_ms_ago
                        .map_or("none yet".into(), |ms| {
                            format!("{} ago", model::duration(ms))
                        }),
                );
                row(
                    ui,
                    "VRAM",
                    &match st.vram_total_gb {
                        Some(total) => format!(
                            "{total:.1} GB total, threshold {:.1} GB",
                            st.vram_threshold_gb
                        ),
                        None => format!("unknown total, threshold {:.1} GB", st.vram_threshold_gb),
                    },
                );
                row(ui, "Paused", yes_no(st.paused));
                row(ui, "Enabled", yes_no(st.enabled));
                row(
                    ui,
                    "Jobs done",
                    &format!("{} completed, {} failed", st.jobs_completed, st.jobs_failed),
                );
                row(
                    ui,
                    "Sessions",
                    &format!("{} ({} reconnects)", st.sessions, st.reconnects),
                );
                if let Some(id) = &st.registration_request_id {
                    row(ui, "Registration request", id);
                }
            });
        ui.add_space(8.0);
        if let Some(action) = st.operator_action() {
            ui.colored_label(Color32::from_rgb(200, 140, 0), action);
        }
        ui.horizontal(|ui| {
            if st.paused {
                if ui.button("Resume").clicked() {
                    self.backend.send(Call::Resume);
                }
            } else if ui.button("Pause").clicked() {
                self.backend.send(Call::Pause);
            }
            if st.enabled {
                if ui.button("Disable").clicked() {
                    self.backend.send(Call::Disable);
                }
            } else if ui.button("Enable").clicked() {
                self.backend.send(Call::Enable);
            }
            if st.operator_action().is_some() && ui.button("Reset registration").clicked() {
                self.backend.send(Call::ResetRegistration);
            }
        });
    }

    fn jobs_tab(&mut self, ui: &mut egui::Ui) {
        let Some(st) = self.status().cloned() else {
            ui.label("No worker answers for this config.");
            return;
        };
        ui.heading("In flight");
        match &st.current_job {
            Some(job) => {
                // Live: the reported elapsed time plus the time since the report.
                let elapsed = job.elapsed_ms + self.status_at.elapsed().as_millis() as u64;
                egui::Grid::new("current").num_columns(2).show(ui, |ui| {
                    row(ui, "Job", &job.job_id);
                    row(ui, "Kind", &job.kind);
                    row(ui, "Model", &job.model);
                    row(ui, "Prompt", job.prompt_preview.as_deref().unwrap_or("-"));
                    row(ui, "Elapsed", &model::duration(elapsed));
                });
                ui.ctx()
                    .request_repaint_after(std::time::Duration::from_millis(200));
            }
            None => {
                ui.label("No job in flight.");
            }
        }
        ui.add_space(8.0);
        ui.heading(format!("Finished (last {})", st.recent_jobs.len()));
        egui::Grid::new("recent")
            .num_columns(5)
            .striped(true)
            .show(ui, |ui| {
                for h in ["outcome", "job", "kind", "model", "took"] {
                    ui.strong(h);
                }
                ui.end_row();
                for job in &st.recent_jobs {
                    let colour = if job.outcome == "completed" {
                        Color32::from_rgb(40, 160, 70)
                    } else {
                        Color32::from_rgb(220, 60, 60)
                    };
                    badge(ui, &job.outcome, colour);
                    ui.label(&job.job_id);
                    ui.label(&job.kind);
                    ui.label(&job.model);
                    ui.label(model::duration(job.ms));
                    ui.end_row();
                }
            });
    }

    fn config_tab(&mut self, ui: &mut egui::Ui) {
        if !self.restart_required.is_empty() {
            ui.colored_label(
                Color32::from_rgb(200, 140, 0),
                format!(
                    "Restart required: {} take effect when the worker restarts.",
                    self.restart_required.join(", ")
                ),
            );
        }
        if !self.form.is_loaded() {
            ui.label("Loading the settings...");
            return;
        }
        // Save and its verdict above the fields, so they stay in view however long the
        // form grows.
        ui.horizontal(|ui| {
            if ui.button("Save").clicked() {
                self.save();
            }
            ui.label(format!("File: {}", self.config_path.display()));
        });
        if let Some(e) = &self.form_error {
            ui.colored_label(Color32::from_rgb(220, 60, 60), e);
        }
        for (group, keys) in form::GROUPS {
            ui.add_space(6.0);
            ui.strong(group);
            egui::Grid::new(group).num_columns(2).show(ui, |ui| {
                if group == "Connection" {
                    let id = self.status().and_then(|s| s.worker_id.clone());
                    ui.label("worker_id");
                    ui.label(id.unwrap_or_else(|| "(not registered)".into()));
                    ui.end_row();
                }
                for key in keys {
                    let Some(field) = self.form.fields.get_mut(*key) else {
                        continue;
                    };
                    match field {
                        Field::Bool(b) => {
                            ui.label(*key);
                            ui.checkbox(b, form::help(key));
                        }
                        Field::Text(text) => {
                            let label = ui.label(*key).on_hover_text(form::help(key));
                            ui.add(
                                egui::TextEdit::singleline(text)
                                    .hint_text(form::help(key))
                                    .desired_width(320.0),
                            )
                            .labelled_by(label.id);
                        }
                    }
                    ui.end_row();
                }
            });
        }
    }

    /// Validates the form and, when it is valid, sends the changes.
    pub fn save(&mut self) {
        match self.form.edits() {
            Ok(edits) if edits.is_empty() => {
                self.form_error = None;
                self.notice = Some(Ok("nothing changed".into()));
            }
            Ok(edits) => {
                self.form_error = None;
                self.backend.send(Call::Settings(Some(edits)));
            }
            Err(e) => self.form_error = Some(format!("Not saved: {e}")),
        }
    }

    /// How many log lines the window keeps.
    pub fn logs_kept(&self) -> usize {
        self.logs.len()
    }

    /// The form (tests set fields through it).
    pub fn form_mut(&mut self) -> &mut Form {
        &mut self.form
    }

    fn logs_tab(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            egui::ComboBox::from_label("Level")
                .selected_text(self.log_filter.label())
                .show_ui(ui, |ui| {
                    for f in LevelFilter::ALL {
                        ui.selectable_value(&mut self.log_filter, f, f.label());
                    }
                });
            let label = ui.label("Search:");
            ui.text_edit_singleline(&mut self.log_search)
                .labelled_by(label.id);
            ui.checkbox(&mut self.auto_scroll, "Auto-scroll");
        });
        let needle = self.log_search.to_lowercase();
        let shown = self.logs.iter().filter(|e| {
            self.log_filter.admits(&e.level)
                && (needle.is_empty()
                    || e.message.to_lowercase().contains(&needle)
                    || e.category.to_lowercase().contains(&needle)
                    || e.job_id
                        .as_deref()
                        .is_some_and(|j| j.to_lowercase().contains(&needle)))
        });
        for e in shown {
            let colour = match e.level.as_str() {
                "error" => Color32::from_rgb(220, 60, 60),
                "warn" | "warning" => Color32::from_rgb(200, 140, 0),
                _ => ui.visuals().text_color(),
            };
            let job = e
                .job_id
                .as_deref()
                .map(|j| format!(" [{j}]"))
                .unwrap_or_default();
            ui.label(
                RichText::new(format!(
                    "{} {:5} {}{}: {}",
                    e.ts, e.level, e.category, job, e.message
                ))
                .monospace()
                .color(colour),
            );
        }
    }

    fn about_tab(&mut self, ui: &mut egui::Ui) {
        let st = self.status().cloned();
        egui::Grid::new("about").num_columns(2).show(ui, |ui| {
            row(ui, "Window version", env!("CARGO_PKG_VERSION"));
            row(
                ui,
                "Worker version",
                st.as_ref().map_or("(not running)", |s| s.version.as_str()),
            );
            row(ui, "Config file", &self.config_path.display().to_string());
            row(
                ui,
                "Crash reports (Sentry)",
                match &st {
                    Some(s) if s.crash_reports => "on",
                    Some(_) => "off",
                    None => "unknown",
                },
            );
            let last = st.as_ref().map(|s| &s.last_update_check);
            row(
                ui,
                "Last update check",
                &match last {
                    Some(serde_json::Value::Null) | None => "never".to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    // {"at", "current", "result", "latest", "error", "text"}
                    Some(check) => format!(
                        "{} ({})",
                        check["text"].as_str().unwrap_or("checked"),
                        check["at"].as_str().unwrap_or("?")
                    ),
                },
            );
        });
        ui.add_space(8.0);
        if ui.button("Check for updates").clicked() {
            self.backend.send(Call::CheckUpdate);
        }
        let mut on = self.autostart.is_enabled();
        if ui
            .checkbox(&mut on, "Start with my session")
            .on_hover_text(self.autostart.describe())
            .changed()
        {
            let mut edit = serde_json::Map::new();
            edit.insert("auto_start".into(), serde_json::Value::Bool(on));
            match self.autostart.set(on) {
                Ok(()) => self.backend.send(Call::Settings(Some(edit))),
                Err(e) => self.notice = Some(Err(format!("start with my session: {e}"))),
            }
        }
        ui.add_space(8.0);
        if ui.button("Quit").clicked() {
            self.quitting = true;
        }
    }

    fn quit_dialog(&mut self, ui: &mut egui::Ui) {
        egui::Window::new("Quit")
            .collapsible(false)
            .resizable(false)
            .show(ui.ctx(), |ui| {
                ui.label("Close the window and the tray. Stop the worker too?");
                ui.horizontal(|ui| {
                    if ui.button("Keep the worker running").clicked() {
                        self.quit = Some(QuitChoice::KeepWorker);
                    }
                    if ui.button("Stop the worker too").clicked() {
                        self.quit = Some(QuitChoice::StopWorker);
                    }
                    if ui.button("Cancel").clicked() {
                        self.quitting = false;
                    }
                });
            });
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn row(ui: &mut egui::Ui, name: &str, value: &str) {
    ui.label(name);
    ui.label(value);
    ui.end_row();
}

fn badge(ui: &mut egui::Ui, text: &str, colour: Color32) {
    ui.label(
        RichText::new(format!(" {text} "))
            .color(Color32::WHITE)
            .background_color(colour),
    );
}

/// The colour of a health state (the tray icon's too).
pub fn health_colour(health: Health) -> Color32 {
    match health {
        Health::Idle => Color32::from_rgb(40, 160, 70),
        Health::Busy => Color32::from_rgb(220, 150, 0),
        Health::Down => Color32::from_rgb(210, 50, 50),
    }
}
