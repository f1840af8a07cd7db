//! `studio-worker ui`: the desktop window and tray of a studio worker.
//!
//! The window is a client of the running worker's local control API (found through
//! `local-api.json` beside the config), never a second copy of its state: it shows what
//! `/daemon/status` and `/daemon/logs` report and changes things through the API's
//! routes. When no worker answers for the config it starts one (`run`, detached, so
//! closing the window never stops the worker) and says so.
//!
//! * [`backend`]: the one thread that talks to the API (the UI thread never waits on the
//!   network); a daemon that stops answering shows as disconnected within 2 s;
//! * [`app`]: the five tabs (Status, Jobs, Config, Logs, About), drawn from the backend's
//!   events into any `egui::Ui` (the window, or egui_kittest in the tests);
//! * [`form`]: the Config tab's settings, validated by the config module before a save;
//! * [`autostart`]: "start with my session" (XDG autostart, LaunchAgent, Run key);
//! * `tray`: the tray icon (colour by state; Open, Pause/Resume, Quit);
//! * `window`: eframe (glow), closing to the tray, the screenshot run.
//!
//! Built only with the worker binaries' `ui` feature: a default build links none of it.

pub mod app;
pub mod autostart;
pub mod backend;
pub mod form;
pub mod model;
mod tray;
mod window;

use std::path::Path;
use std::sync::{Arc, Mutex};

use eframe::egui;
use studio_shell::api::client::Client;
use studio_shell::cli::UiArgs;

use crate::app::{QuitChoice, StudioApp};
use crate::backend::{Backend, WakeSlot};
use crate::window::{Screenshots, Window};

/// The window's initial size in points.
pub const WINDOW_SIZE: [f32; 2] = [820.0, 600.0];

/// `studio-worker ui` for the worker of `config_path`: returns the process exit code (0
/// closed; 1 the window could not open, or a screenshot run failed).
pub fn run(config_path: &Path, args: &UiArgs) -> i32 {
    let wake = WakeSlot::default();
    let screenshots = args.screenshots.clone();
    if let Some(dir) = &screenshots {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("studio-worker: cannot create {}: {e}", dir.display());
            return 1;
        }
    }
    let backend = Backend::start(
        config_path.to_path_buf(),
        backend::Worker::this_program(),
        wake.waker(),
    );
    let app = StudioApp::new(backend, config_path.to_path_buf());
    let tray = new_tray(&wake);
    if screenshots.is_some() {
        // The screenshot run says whether the tray came up (CI runs it on a session bus).
        println!("tray: {}", if tray.is_some() { "shown" } else { "none" });
    }
    // Started by the session's autostart entry: `start_minimised` hides the window in the
    // tray (when there is one).
    let hidden = args.autostart
        && tray.is_some()
        && studio_shell::Config::load(config_path).is_ok_and(|c| c.start_minimised);
    let outcome = Arc::new(Mutex::new(None));
    let window = Window {
        app,
        tray,
        shots: screenshots.map(Screenshots::new),
        outcome: outcome.clone(),
        closing: false,
    };
    let quit = Arc::new(Mutex::new(None));
    let quit_seen = quit.clone();
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Studio worker")
            .with_app_id("studio-worker")
            .with_inner_size(WINDOW_SIZE)
            .with_visible(!hidden),
        ..Default::default()
    };
    let ran = eframe::run_native(
        "Studio worker",
        options,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            wake.set(Arc::new(move || ctx.request_repaint()));
            Ok(Box::new(QuitWatch {
                window,
                quit: quit_seen,
            }))
        }),
    );
    if let Err(e) = ran {
        eprintln!("studio-worker: the window could not open: {e}");
        return 1;
    }
    if *quit.lock().unwrap_or_else(|e| e.into_inner()) == Some(QuitChoice::StopWorker) {
        match Client::for_config(config_path).map(|c| c.post("/daemon/shutdown")) {
            Some(Ok(_)) => println!("the worker is stopping"),
            _ => println!("no worker was running"),
        }
    }
    let shots = outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
    match shots {
        None => 0,
        Some(shots) => report_screenshots(&shots),
    }
}

fn report_screenshots(shots: &Screenshots) -> i32 {
    let mut ok = shots.error.is_none() && shots.written.len() == app::Tab::ALL.len();
    for (path, drawn) in &shots.written {
        println!(
            "{} {}",
            path.display(),
            if *drawn { "drawn" } else { "BLANK" }
        );
        ok &= drawn;
    }
    if let Some(e) = &shots.error {
        eprintln!("studio-worker: screenshots: {e}");
    }
    i32::from(!ok)
}

/// Remembers how the person quit, for after the window has closed.
struct QuitWatch {
    window: Window,
    quit: Arc<Mutex<Option<QuitChoice>>>,
}

impl eframe::App for QuitWatch {
    fn logic(&mut self, ctx: &egui::Context, frame: &mut eframe::Frame) {
        self.window.logic(ctx, frame);
        *self.quit.lock().unwrap_or_else(|e| e.into_inner()) = self.window.app.quit;
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        self.window.ui(ui, frame);
        *self.quit.lock().unwrap_or_else(|e| e.into_inner()) = self.window.app.quit;
    }
}

fn new_tray(wake: &WakeSlot) -> Option<tray::Tray> {
    match tray::Tray::new(wake.waker()) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("no tray icon ({e}); closing the window quits");
            None
        }
    }
}

/// Whether a screenshot shows a drawn window rather than a blank one: more than a handful
/// of distinct colours (text, badges and widgets) and not one colour over nearly all of it.
pub fn is_drawn(image: &image::RgbaImage) -> bool {
    use std::collections::HashMap;
    let mut counts: HashMap<[u8; 4], usize> = HashMap::new();
    for p in image.pixels() {
        *counts.entry(p.0).or_default() += 1;
    }
    let total = (image.width() as usize * image.height() as usize).max(1);
    let top = counts.values().copied().max().unwrap_or(0);
    counts.len() >= 16 && top * 100 / total < 98
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_image_is_not_a_drawn_window() {
        let blank = image::RgbaImage::from_pixel(64, 64, image::Rgba([30, 30, 30, 255]));
        assert!(!is_drawn(&blank));
        let mut drawn = blank.clone();
        for (i, p) in drawn.pixels_mut().enumerate().filter(|(i, _)| i % 7 == 0) {
            let v = (i % 200) as u8;
            *p = image::Rgba([v, 255 - v, v / 2, 255]);
        }
        assert!(is_drawn(&drawn));
    }
}
