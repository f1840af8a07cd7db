//! The native window (eframe, glow): the app, the tray, closing to the tray, and the
//! screenshot run (`ui --screenshots DIR`).

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use eframe::egui::{self, ViewportCommand};

use crate::app::{StudioApp, Tab};
use crate::tray::Tray;

/// How long the screenshot run waits for the daemon's first status before it shoots anyway.
pub const SCREENSHOT_WAIT: Duration = Duration::from_secs(15);
/// Frames drawn on a tab before it is shot (layout settles in a few).
const SETTLE_FRAMES: u32 = 8;

/// The screenshot run: each tab in turn, written as `<dir>/<tab>.png`.
pub struct Screenshots {
    pub dir: PathBuf,
    next: usize,
    frames: u32,
    started: Instant,
    requested: bool,
    sender: mpsc::Sender<Arc<egui::ColorImage>>,
    taken: mpsc::Receiver<Arc<egui::ColorImage>>,
    /// The files written, and whether each showed a drawn window.
    pub written: Vec<(PathBuf, bool)>,
    pub error: Option<String>,
}

impl Screenshots {
    pub fn new(dir: PathBuf) -> Screenshots {
        let (sender, taken) = mpsc::channel();
        Screenshots {
            sender,
            taken,
            dir,
            next: 0,
            frames: 0,
            started: Instant::now(),
            requested: false,
            written: Vec::new(),
            error: None,
        }
    }
}

/// The window's eframe app.
pub struct Window {
    pub app: StudioApp,
    pub tray: Option<Tray>,
    pub shots: Option<Screenshots>,
    /// Shared with the caller: the screenshot run's outcome.
    pub outcome: Arc<std::sync::Mutex<Option<Screenshots>>>,
    /// The window is closing for good (the screenshot run is over).
    pub closing: bool,
}

impl Window {
    fn tray_actions(&mut self, ctx: &egui::Context) {
        let Some(tray) = &mut self.tray else {
            return;
        };
        tray.show(
            self.app.health(),
            self.app.status().is_some_and(|s| s.paused),
        );
        while let Some(action) = tray.next_action() {
            if self.app.on_tray(action) {
                ctx.send_viewport_cmd(ViewportCommand::Visible(true));
                ctx.send_viewport_cmd(ViewportCommand::Focus);
            }
        }
    }

    fn screenshots(&mut self, ui: &mut egui::Ui) {
        let Some(shots) = &mut self.shots else {
            return;
        };
        let ctx = ui.ctx().clone();
        ctx.request_repaint();
        // A screenshot taken: save it, move on.
        if let Ok(image) = shots.taken.try_recv() {
            let tab = Tab::ALL[shots.next];
            let path = shots
                .dir
                .join(format!("{}.png", tab.label().to_lowercase()));
            let (w, h) = (image.size[0] as u32, image.size[1] as u32);
            let bytes: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
            match image::RgbaImage::from_raw(w, h, bytes) {
                Some(img) => {
                    let drawn = crate::is_drawn(&img);
                    match img.save(&path) {
                        Ok(()) => shots.written.push((path, drawn)),
                        Err(e) => shots.error = Some(format!("{}: {e}", path.display())),
                    }
                }
                None => shots.error = Some("a screenshot of the wrong size".into()),
            }
            shots.next += 1;
            shots.frames = 0;
            shots.requested = false;
        }
        if shots.next >= Tab::ALL.len() || shots.error.is_some() {
            *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = self.shots.take();
            self.closing = true;
            ctx.send_viewport_cmd(ViewportCommand::Close);
            return;
        }
        self.app.tab = Tab::ALL[shots.next];
        shots.frames += 1;
        let ready = self.app.status().is_some() || shots.started.elapsed() > SCREENSHOT_WAIT;
        if ready && shots.frames >= SETTLE_FRAMES && !shots.requested {
            shots.requested = true;
            let (tx, waker) = (shots.sender.clone(), ctx.clone());
            ctx.request_screenshot(move |image| {
                let _ = tx.send(image);
                waker.request_repaint();
            });
        }
    }
}

impl Window {
    pub fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.app.drain_events();
        self.tray_actions(ctx);
        if self.app.quit.is_some() {
            ctx.send_viewport_cmd(ViewportCommand::Close);
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.screenshots(ui);
        self.app.ui(ui);
        let close = ui.ctx().input(|i| i.viewport().close_requested());
        if close && !self.closing && self.app.quit.is_none() && self.tray.is_some() {
            // Closing hides the window to the tray; Quit in the tray (or About) ends it.
            ui.ctx().send_viewport_cmd(ViewportCommand::CancelClose);
            ui.ctx().send_viewport_cmd(ViewportCommand::Visible(false));
        }
        if self.app.quit.is_some() {
            ui.ctx().send_viewport_cmd(ViewportCommand::Close);
        }
    }
}
