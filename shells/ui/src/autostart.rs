//! "Start with my session": an entry that opens the window (which starts the worker) when
//! the person logs in, removed when switched off.
//!
//! * Linux and the BSDs: `$XDG_CONFIG_HOME/autostart/<bin>-ui.desktop` (default
//!   `~/.config/autostart`), the XDG autostart specification's desktop entry;
//! * macOS: `~/Library/LaunchAgents/gg.minis.<bin>-ui.plist`, a LaunchAgent run at load;
//! * Windows: the value `<bin>-ui` under `HKCU\Software\Microsoft\Windows\CurrentVersion\Run`.
//!
//! Each entry runs `<this program> --config <config> ui --autostart`: the same program and
//! config as the window that switched it on (`--autostart`: start hidden in the tray when
//! `start_minimised` says so).

use std::path::{Path, PathBuf};

/// The autostart entry of one program and config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Autostart {
    /// The program's name (`studio-worker`).
    pub name: String,
    /// What it runs: program, then arguments.
    pub command: Vec<String>,
}

impl Autostart {
    /// The entry for this program and `config_path`.
    pub fn for_config(config_path: &Path) -> Autostart {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("studio-worker"));
        let name = exe
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "studio-worker".into());
        Autostart {
            name,
            command: vec![
                exe.display().to_string(),
                "--config".into(),
                config_path.display().to_string(),
                "ui".into(),
                "--autostart".into(),
            ],
        }
    }

    /// Where the entry lives, in words (for a tooltip).
    pub fn describe(&self) -> String {
        imp::describe(self)
    }

    /// Whether the entry exists.
    pub fn is_enabled(&self) -> bool {
        imp::is_enabled(self)
    }

    /// Creates (`true`) or removes (`false`) the entry. Idempotent.
    pub fn set(&self, on: bool) -> Result<(), String> {
        imp::set(self, on)
    }

    /// The Linux desktop entry's text.
    pub fn desktop_entry(&self) -> String {
        let exec: Vec<String> = self.command.iter().map(|a| desktop_quote(a)).collect();
        format!(
            "[Desktop Entry]\nType=Application\nName=Studio worker\n\
             Comment=Shows the studio worker in the tray and starts it\nExec={}\n\
             Terminal=false\nX-GNOME-Autostart-enabled=true\n",
            exec.join(" ")
        )
    }

    /// The macOS LaunchAgent's property list.
    pub fn launch_agent(&self) -> String {
        let args: String = self
            .command
            .iter()
            .map(|a| format!("    <string>{}</string>\n", studio_shell::service::xml(a)))
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
             \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\">\n<dict>\n  <key>Label</key>\n  <string>{}</string>\n  \
             <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n  \
             <key>RunAtLoad</key>\n  <true/>\n</dict>\n</plist>\n",
            studio_shell::service::xml(&self.launch_agent_label())
        )
    }

    /// The LaunchAgent's label (also its file name, with `.plist`).
    pub fn launch_agent_label(&self) -> String {
        format!("gg.minis.{}-ui", self.name)
    }

    /// The Windows Run key's value: the command line, each argument quoted.
    pub fn run_key_value(&self) -> String {
        let args: Vec<String> = self
            .command
            .iter()
            .map(|a| format!("\"{}\"", a.replace('"', "\\\"")))
            .collect();
        args.join(" ")
    }
}

/// An `Exec` argument quoted as the desktop entry specification says: in double quotes,
/// with `"`, `` ` ``, `$` and `\` escaped by a backslash, and `%` doubled.
fn desktop_quote(arg: &str) -> String {
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '"' | '`' | '$' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `text` to `path` (creating the directory), or removes `path`.
#[cfg(not(windows))]
fn write_or_remove(path: &Path, on: bool, text: &str) -> Result<(), String> {
    if on {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    } else {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// Linux, the BSDs and macOS: the entry is a file, written or removed.
#[cfg(not(windows))]
mod imp {
    use super::*;

    pub fn describe(a: &Autostart) -> String {
        entry_path(a).map_or("no home directory".into(), |p| p.display().to_string())
    }

    pub fn is_enabled(a: &Autostart) -> bool {
        entry_path(a).is_some_and(|p| p.is_file())
    }

    pub fn set(a: &Autostart, on: bool) -> Result<(), String> {
        let path = entry_path(a).ok_or("no home directory")?;
        write_or_remove(&path, on, &entry_text(a))
    }

    /// `$XDG_CONFIG_HOME/autostart/<name>-ui.desktop` (`~/.config` without it).
    #[cfg(not(target_os = "macos"))]
    fn entry_path(a: &Autostart) -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| studio_shell::config::home_dir().map(|h| h.join(".config")))?;
        Some(
            base.join("autostart")
                .join(format!("{}-ui.desktop", a.name)),
        )
    }

    #[cfg(not(target_os = "macos"))]
    fn entry_text(a: &Autostart) -> String {
        a.desktop_entry()
    }

    /// `~/Library/LaunchAgents/<label>.plist`.
    #[cfg(target_os = "macos")]
    fn entry_path(a: &Autostart) -> Option<PathBuf> {
        let home = studio_shell::config::home_dir()?;
        Some(
            home.join("Library/LaunchAgents")
                .join(format!("{}.plist", a.launch_agent_label())),
        )
    }

    #[cfg(target_os = "macos")]
    fn entry_text(a: &Autostart) -> String {
        a.launch_agent()
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use winreg::enums::{HKEY_CURRENT_USER, KEY_READ, KEY_SET_VALUE};
    use winreg::RegKey;

    const RUN: &str = r"Software\Microsoft\Windows\CurrentVersion\Run";

    fn value_name(a: &Autostart) -> String {
        format!("{}-ui", a.name)
    }

    pub fn describe(a: &Autostart) -> String {
        format!(r"HKCU\{RUN}\{}", value_name(a))
    }

    pub fn is_enabled(a: &Autostart) -> bool {
        RegKey::predef(HKEY_CURRENT_USER)
            .open_subkey_with_flags(RUN, KEY_READ)
            .and_then(|k| k.get_value::<String, _>(value_name(a)))
            .is_ok()
    }

    pub fn set(a: &Autostart, on: bool) -> Result<(), String> {
        let key = RegKey::predef(HKEY_CURRENT_USER)
            .create_subkey_with_flags(RUN, KEY_SET_VALUE)
            .map(|(k, _)| k)
            .map_err(|e| e.to_string())?;
        if on {
            key.set_value(value_name(a), &a.run_key_value())
                .map_err(|e| e.to_string())
        } else {
            match key.delete_value(value_name(a)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Autostart {
        Autostart {
            name: "studio-worker".into(),
            command: vec![
                "/opt/studio worker/studio-worker".into(),
                "--config".into(),
                "/home/a/100%\"$x\".toml".into(),
                "ui".into(),
            ],
        }
    }

    #[test]
    fn the_entry_opens_this_program_on_this_config_hidden_if_asked() {
        let a = Autostart::for_config(Path::new("/home/a/w/config.toml"));
        assert_eq!(
            a.command[0],
            std::env::current_exe().unwrap().display().to_string()
        );
        assert_eq!(
            a.command[1..],
            ["--config", "/home/a/w/config.toml", "ui", "--autostart"]
        );
    }

    #[test]
    fn the_desktop_entry_quotes_its_command() {
        let text = entry().desktop_entry();
        assert!(
            text.starts_with("[Desktop Entry]\nType=Application\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "Exec=\"/opt/studio worker/studio-worker\" \"--config\" \
                 \"/home/a/100%%\\\"\\$x\\\".toml\" \"ui\"\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_launch_agent_and_run_key_name_the_same_command() {
        let plist = entry().launch_agent();
        assert!(
            plist.contains("<string>gg.minis.studio-worker-ui</string>"),
            "{plist}"
        );
        assert!(
            plist.contains("<string>/home/a/100%&quot;$x&quot;.toml</string>"),
            "{plist}"
        );
        assert!(plist.contains("<key>RunAtLoad</key>\n  <true/>"), "{plist}");
        assert_eq!(
            entry().run_key_value(),
            r#""/opt/studio worker/studio-worker" "--config" "/home/a/100%\"$x\".toml" "ui""#
        );
    }

    /// The real switch, in a temporary XDG_CONFIG_HOME (the only test that sets it).
    #[cfg(not(any(windows, target_os = "macos")))]
    #[test]
    fn the_linux_entry_is_created_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("XDG_CONFIG_HOME", dir.path());
        let a = entry();
        let path = dir.path().join("autostart/studio-worker-ui.desktop");
        assert!(!a.is_enabled());
        a.set(true).unwrap();
        assert!(a.is_enabled());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), a.desktop_entry());
        a.set(true).unwrap();
        a.set(false).unwrap();
        assert!(!path.exists() && !a.is_enabled());
        a.set(false).unwrap();
        assert!(a.describe().ends_with("autostart/studio-worker-ui.desktop"));
    }
}
