//! The tray icon: a dot whose colour follows the worker (idle green, busy amber,
//! disconnected or refused red), with Open, Pause/Resume and Quit.
//!
//! On Linux it is a StatusNotifierItem on the session's D-Bus (tray-icon's KSNI backend: its
//! own thread, no GTK); without a session bus there is no tray, the window says so and
//! closing it quits. Menu and icon events wake the window (which may be hidden) through its
//! waker; [`Tray::next_action`] takes them on the UI thread.

use std::sync::mpsc::{self, Receiver};

use tray_icon::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tray_icon::{Icon, MouseButton, TrayIcon, TrayIconBuilder, TrayIconEvent};

use crate::app::health_colour;
use crate::backend::Waker;
use crate::model::Health;

/// The icon's size in pixels.
pub const ICON_PX: u32 = 32;

use crate::app::TrayAction;

/// The tray icon and its menu.
pub struct Tray {
    icon: TrayIcon,
    pause: MenuItem,
    actions: Receiver<TrayAction>,
    shown: Option<(Health, bool)>,
}

impl Tray {
    /// Creates the tray icon; its events call `waker`.
    pub fn new(waker: Waker) -> Result<Tray, String> {
        let open = MenuItem::new("Open", true, None);
        let pause = MenuItem::new("Pause", true, None);
        let quit = MenuItem::new("Quit", true, None);
        let menu = Menu::new();
        for item in [&open as &dyn tray_icon::menu::IsMenuItem, &pause] {
            menu.append(item).map_err(|e| e.to_string())?;
        }
        menu.append(&PredefinedMenuItem::separator())
            .map_err(|e| e.to_string())?;
        menu.append(&quit).map_err(|e| e.to_string())?;

        let (tx, actions) = mpsc::channel();
        {
            let (tx, waker) = (tx.clone(), waker.clone());
            let ids = (open.id().clone(), pause.id().clone(), quit.id().clone());
            MenuEvent::set_event_handler(Some(move |event: MenuEvent| {
                let action = if event.id == ids.0 {
                    TrayAction::Open
                } else if event.id == ids.1 {
                    TrayAction::TogglePause
                } else if event.id == ids.2 {
                    TrayAction::Quit
                } else {
                    return;
                };
                let _ = tx.send(action);
                waker();
            }));
        }
        TrayIconEvent::set_event_handler(Some(move |event: TrayIconEvent| {
            if let TrayIconEvent::Click {
                button: MouseButton::Left,
                ..
            } = event
            {
                let _ = tx.send(TrayAction::Open);
                waker();
            }
        }));
        let icon = TrayIconBuilder::new()
            .with_menu(Box::new(menu))
            .with_tooltip("Studio worker")
            .with_icon(icon(Health::Down)?)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Tray {
            icon,
            pause,
            actions,
            shown: None,
        })
    }

    /// Shows the worker's health and whether it is paused (only what changed).
    pub fn show(&mut self, health: Health, paused: bool) {
        if self.shown == Some((health, paused)) {
            return;
        }
        self.shown = Some((health, paused));
        if let Ok(i) = icon(health) {
            let _ = self.icon.set_icon(Some(i));
        }
        let tooltip = match health {
            Health::Idle => "Studio worker: idle",
            Health::Busy => "Studio worker: busy",
            Health::Down => "Studio worker: disconnected",
        };
        let _ = self.icon.set_tooltip(Some(tooltip));
        self.pause.set_text(if paused { "Resume" } else { "Pause" });
    }

    /// The next action the person took, if any.
    pub fn next_action(&self) -> Option<TrayAction> {
        self.actions.try_recv().ok()
    }
}

/// A filled dot of the health's colour on a transparent square.
pub fn icon_rgba(health: Health) -> Vec<u8> {
    let c = health_colour(health);
    let mut rgba = Vec::with_capacity((ICON_PX * ICON_PX * 4) as usize);
    let centre = (ICON_PX as f32 - 1.0) / 2.0;
    let radius = ICON_PX as f32 / 2.0 - 2.0;
    for y in 0..ICON_PX {
        for x in 0..ICON_PX {
            let d = ((x as f32 - centre).powi(2) + (y as f32 - centre).powi(2)).sqrt();
            let alpha = ((radius - d + 0.5).clamp(0.0, 1.0) * 255.0) as u8;
            rgba.extend_from_slice(&[c.r(), c.g(), c.b(), alpha]);
        }
    }
    rgba
}

fn icon(health: Health) -> Result<Icon, String> {
    Icon::from_rgba(icon_rgba(health), ICON_PX, ICON_PX).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_its_own_colour() {
        let centre = |h| {
            let rgba = icon_rgba(h);
            let i = ((ICON_PX / 2 * ICON_PX + ICON_PX / 2) * 4) as usize;
            [rgba[i], rgba[i + 1], rgba[i + 2], rgba[i + 3]]
        };
        let (idle, busy, down) = (
            centre(Health::Idle),
            centre(Health::Busy),
            centre(Health::Down),
        );
        assert!(
            idle[1] > idle[0] && down[0] > down[1] && busy[0] > busy[2],
            "{idle:?} {busy:?} {down:?}"
        );
        assert!(idle[3] == 255 && busy[3] == 255 && down[3] == 255);
        // The corners are transparent.
        assert_eq!(icon_rgba(Health::Idle)[3], 0);
        assert_eq!(
            icon_rgba(Health::Idle).len(),
            (ICON_PX * ICON_PX * 4) as usize
        );
    }
}
