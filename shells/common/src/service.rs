//! `install-service` / `uninstall-service`: start the worker at login under the OS's
//! service manager.
//!
//! One description of the service ([`Service`]: its name, the executable and the
//! arguments `--config <absolute config> run`) is rendered for each manager:
//!
//! | OS | file | manager commands |
//! |---|---|---|
//! | Linux | systemd user unit `$XDG_CONFIG_HOME/systemd/user/<bin>.service` (default `~/.config/systemd/user/`) | `systemctl --user daemon-reload`, `systemctl --user enable --now <bin>.service` |
//! | macOS | LaunchAgent `~/Library/LaunchAgents/gg.minis.<bin>.plist` | `launchctl bootstrap gui/<uid> <plist>` |
//! | Windows | Task Scheduler XML `<config dir>/<bin>.task.xml` | `schtasks /Create /TN <bin> /XML <file> /F` |
//!
//! Every text is generated (and tested) on every platform; the file and commands used are
//! the running OS's. When the manager does not answer (no user systemd, say) the file is
//! still written and the commands to run are printed instead: a clean exit.
//! `uninstall-service` stops and disables when the manager answers, removes the file and
//! reloads; with nothing installed it says so and exits 0.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::ShellError;

/// What the service runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The binary's name (`studio-worker`): the unit's, task's and label's name.
    pub name: String,
    /// The executable, absolute.
    pub program: PathBuf,
    /// Its arguments: `--config <absolute config> run`.
    pub args: Vec<String>,
}

impl Service {
    /// The service of `program` for the config at `config` (made absolute).
    pub fn new(program: &Path, config: &Path) -> Result<Service, ShellError> {
        let absolute = |p: &Path| {
            std::path::absolute(p).map_err(|e| {
                ShellError::Service(format!("cannot make {} absolute: {e}", p.display()))
            })
        };
        let program = absolute(program)?;
        let name = program
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| ShellError::Service(format!("{} has no name", program.display())))?;
        Ok(Service {
            name,
            program,
            args: vec![
                "--config".into(),
                absolute(config)?.to_string_lossy().into_owned(),
                "run".into(),
            ],
        })
    }

    /// The description every manager shows.
    pub fn description(&self) -> String {
        format!("{} (minis.gg studio worker)", self.name)
    }

    /// The launchd label: `gg.minis.<bin>`.
    pub fn label(&self) -> String {
        format!("gg.minis.{}", self.name)
    }
}

/// The service managers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
    TaskScheduler,
}

impl Manager {
    /// The running OS's.
    pub fn current() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else if cfg!(windows) {
            Manager::TaskScheduler
        } else {
            Manager::Systemd
        }
    }
}

/// One argument of a systemd command line: quoted when it must be, `%` and `$` doubled
/// (systemd expands both).
fn systemd_arg(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// XML character data / attribute text (the service files here, the window's autostart
/// LaunchAgent).
pub fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One argument of a Windows command line (quoted when it holds a space or a quote).
fn windows_arg(arg: &str) -> String {
    if !arg.is_empty() && !arg.chars().any(|c| c.is_whitespace() || c == '"') {
        return arg.to_string();
    }
    format!("\"{}\"", arg.replace('"', "\\\""))
}

/// The systemd user unit.
pub fn systemd_unit(s: &Service) -> String {
    let mut exec = systemd_arg(&s.program.to_string_lossy());
    for a in &s.args {
        exec.push(' ');
        exec.push_str(&systemd_arg(a));
    }
    format!(
        "[Unit]\n\
         Description={}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        s.description()
    )
}

/// The launchd LaunchAgent property list.
pub fn launchd_plist(s: &Service) -> String {
    let mut args = String::new();
    for a in std::iter::once(s.program.to_string_lossy().into_owned()).chain(s.args.clone()) {
        let _ = writeln!(args, "        <string>{}</string>", xml(&a));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
         \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n\
         <dict>\n\
         \x20   <key>Label</key>\n\
         \x20   <string>{}</string>\n\
         \x20   <key>ProgramArguments</key>\n\
         \x20   <array>\n\
         {args}\
         \x20   </array>\n\
         \x20   <key>RunAtLoad</key>\n\
         \x20   <true/>\n\
         \x20   <key>KeepAlive</key>\n\
         \x20   <true/>\n\
         \x20   <key>ProcessType</key>\n\
         \x20   <string>Background</string>\n\
         </dict>\n\
         </plist>\n",
        xml(&s.label())
    )
}

/// The Task Scheduler task (logon trigger, restart on failure, runs on battery).
pub fn task_xml(s: &Service) -> String {
    let args: Vec<String> = s.args.iter().map(|a| windows_arg(a)).collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-16\"?>\n\
         <Task version=\"1.2\" xmlns=\"http://schemas.microsoft.com/windows/2004/02/mit/task\">\n\
         \x20 <RegistrationInfo>\n\
         \x20   <Description>{}</Description>\n\
         \x20 </RegistrationInfo>\n\
         \x20 <Triggers>\n\
         \x20   <LogonTrigger>\n\
         \x20     <Enabled>true</Enabled>\n\
         \x20   </LogonTrigger>\n\
         \x20 </Triggers>\n\
         \x20 <Principals>\n\
         \x20   <Principal id=\"Author\">\n\
         \x20     <LogonType>InteractiveToken</LogonType>\n\
         \x20     <RunLevel>LeastPrivilege</RunLevel>\n\
         \x20   </Principal>\n\
         \x20 </Principals>\n\
         \x20 <Settings>\n\
         \x20   <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>\n\
         \x20   <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>\n\
         \x20   <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>\n\
         \x20   <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>\n\
         \x20   <RestartOnFailure>\n\
         \x20     <Interval>PT1M</Interval>\n\
         \x20     <Count>999</Count>\n\
         \x20   </RestartOnFailure>\n\
         \x20   <StartWhenAvailable>true</StartWhenAvailable>\n\
         \x20   <Enabled>true</Enabled>\n\
         \x20 </Settings>\n\
         \x20 <Actions Context=\"Author\">\n\
         \x20   <Exec>\n\
         \x20     <Command>{}</Command>\n\
         \x20     <Arguments>{}</Arguments>\n\
         \x20   </Exec>\n\
         \x20 </Actions>\n\
         </Task>\n",
        xml(&s.description()),
        xml(&s.program.to_string_lossy()),
        xml(&args.join(" "))
    )
}

/// Where a manager's file goes and what the environment says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirs {
    /// The home directory.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`, when set (and absolute).
    pub xdg_config_home: Option<PathBuf>,
    /// The folder of the worker's config file (the Task Scheduler XML goes there).
    pub config_dir: PathBuf,
    /// The user id (launchd's `gui/<uid>` domain).
    pub uid: u32,
}

impl Dirs {
    /// This process's.
    pub fn from_env(config: &Path) -> Dirs {
        let config_dir = std::path::absolute(config)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        Dirs {
            home: crate::config::home_dir(),
            xdg_config_home: std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            config_dir,
            uid: uid(),
        }
    }
}

#[cfg(unix)]
fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(not(unix))]
fn uid() -> u32 {
    0
}

/// What installing a service does on one manager: the file and the commands around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub manager: Manager,
    pub path: PathBuf,
    pub text: String,
    /// Answers (exit 0) when the manager can take commands.
    pub probe: Vec<String>,
    /// After writing the file.
    pub start: Vec<Vec<String>>,
    /// Before removing it (failures ignored: it may not be running).
    pub stop: Vec<Vec<String>>,
    /// After removing it.
    pub reload: Vec<Vec<String>>,
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The plan for `service` on `manager`.
pub fn plan(manager: Manager, service: &Service, dirs: &Dirs) -> Result<Plan, ShellError> {
    let home = || {
        dirs.home.clone().ok_or_else(|| {
            ShellError::Service("cannot find the home directory for the service file".into())
        })
    };
    let name = &service.name;
    Ok(match manager {
        Manager::Systemd => {
            let base = match &dirs.xdg_config_home {
                Some(x) => x.clone(),
                None => home()?.join(".config"),
            };
            let unit = format!("{name}.service");
            Plan {
                manager,
                path: base.join("systemd").join("user").join(&unit),
                text: systemd_unit(service),
                probe: argv(&["systemctl", "--user", "show-environment"]),
                start: vec![
                    argv(&["systemctl", "--user", "daemon-reload"]),
                    argv(&["systemctl", "--user", "enable", "--now", &unit]),
                ],
                stop: vec![argv(&["systemctl", "--user", "disable", "--now", &unit])],
                reload: vec![argv(&["systemctl", "--user", "daemon-reload"])],
            }
        }
        Manager::Launchd => {
            let path = home()?
                .join("Library")
                .join("LaunchAgents")
                .join(format!("{}.plist", service.label()));
            let domain = format!("gui/{}", dirs.uid);
            let shown = path.to_string_lossy().into_owned();
            Plan {
                manager,
                text: launchd_plist(service),
                probe: argv(&["launchctl", "print", &domain]),
                start: vec![argv(&["launchctl", "bootstrap", &domain, &shown])],
                stop: vec![argv(&["launchctl", "bootout", &domain, &shown])],
                reload: Vec::new(),
                path,
            }
        }
        Manager::TaskScheduler => {
            let path = dirs.config_dir.join(format!("{name}.task.xml"));
            let shown = path.to_string_lossy().into_owned();
            Plan {
                manager,
                text: task_xml(service),
                probe: argv(&["schtasks", "/Query", "/FO", "LIST"]),
                start: vec![argv(&[
                    "schtasks", "/Create", "/TN", name, "/XML", &shown, "/F",
                ])],
                stop: vec![
                    argv(&["schtasks", "/End", "/TN", name]),
                    argv(&["schtasks", "/Delete", "/TN", name, "/F"]),
                ],
                reload: Vec::new(),
                path,
            }
        }
    })
}

/// Runs the service manager's commands.
pub trait Runner {
    /// Runs `argv`; `Err` says why it did not succeed (not found, exit status, stderr).
    fn run(&mut self, argv: &[String]) -> Result<(), String>;
}

/// The real one: the commands as child processes (no shell).
pub struct System;

impl Runner for System {
    fn run(&mut self, argv: &[String]) -> Result<(), String> {
        let (program, args) = argv.split_first().ok_or("an empty command")?;
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{}` failed ({}): {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

fn shown(commands: &[Vec<String>]) -> String {
    commands
        .iter()
        .map(|c| format!("  {}\n", c.join(" ")))
        .collect()
}

/// `install-service [--dry-run]`: writes the file and starts the service (see the module
/// docs). Returns the report.
pub fn install(plan: &Plan, dry_run: bool, runner: &mut dyn Runner) -> Result<String, ShellError> {
    if dry_run {
        return Ok(format!(
            "would write {}:\n\n{}\nthen run:\n{}",
            plan.path.display(),
            plan.text,
            shown(&plan.start)
        ));
    }
    if let Some(dir) = plan.path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| ShellError::Service(format!("cannot create {}: {e}", dir.display())))?;
    }
    write_file(plan)?;
    let mut report = format!("wrote {}\n", plan.path.display());
    if let Err(why) = runner.run(&plan.probe) {
        let _ = write!(
            report,
            "the service manager did not answer ({why}); to start the service, run:\n{}",
            shown(&plan.start)
        );
        return Ok(report);
    }
    for cmd in &plan.start {
        runner
            .run(cmd)
            .map_err(|e| ShellError::Service(format!("{report}{e}")))?;
        let _ = writeln!(report, "ran {}", cmd.join(" "));
    }
    report.push_str("the service is installed and started; it starts at every login\n");
    Ok(report)
}

#[cfg(windows)]
fn write_file(plan: &Plan) -> Result<(), ShellError> {
    // Task Scheduler reads its XML as UTF-16 (with a byte order mark).
    let mut bytes = vec![0xFF, 0xFE];
    for unit in plan.text.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    fs::write(&plan.path, bytes)
        .map_err(|e| ShellError::Service(format!("cannot write {}: {e}", plan.path.display())))
}

#[cfg(not(windows))]
fn write_file(plan: &Plan) -> Result<(), ShellError> {
    fs::write(&plan.path, &plan.text)
        .map_err(|e| ShellError::Service(format!("cannot write {}: {e}", plan.path.display())))
}

/// `uninstall-service`: stops and disables when the manager answers, removes the file,
/// reloads. Idempotent. Returns the report.
pub fn uninstall(plan: &Plan, runner: &mut dyn Runner) -> Result<String, ShellError> {
    if !plan.path.exists() {
        return Ok(format!(
            "nothing to uninstall: {} does not exist\n",
            plan.path.display()
        ));
    }
    let answers = runner.run(&plan.probe);
    let mut report = String::new();
    if answers.is_ok() {
        for cmd in &plan.stop {
            match runner.run(cmd) {
                Ok(()) => {
                    let _ = writeln!(report, "ran {}", cmd.join(" "));
                }
                Err(e) => {
                    let _ = writeln!(report, "(ignored) {e}");
                }
            }
        }
    }
    fs::remove_file(&plan.path)
        .map_err(|e| ShellError::Service(format!("cannot remove {}: {e}", plan.path.display())))?;
    let _ = writeln!(report, "removed {}", plan.path.display());
    match answers {
        Ok(()) => {
            for cmd in &plan.reload {
                runner
                    .run(cmd)
                    .map_err(|e| ShellError::Service(format!("{report}{e}")))?;
                let _ = writeln!(report, "ran {}", cmd.join(" "));
            }
        }
        Err(why) => {
            let mut todo = plan.stop.clone();
            todo.extend(plan.reload.iter().cloned());
            let _ = write!(
                report,
                "the service manager did not answer ({why}); if the service still runs, run:\n{}",
                shown(&todo)
            );
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        Service {
            name: "studio-worker".into(),
            program: PathBuf::from("/opt/studio worker/bin/studio-worker"),
            args: vec![
                "--config".into(),
                "/home/ann/.config/minis-studio-worker/config.toml".into(),
                "run".into(),
            ],
        }
    }

    #[test]
    fn the_systemd_unit() {
        assert_eq!(
            systemd_unit(&service()),
            "[Unit]\n\
             Description=studio-worker (minis.gg studio worker)\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             Type=simple\n\
             ExecStart=\"/opt/studio worker/bin/studio-worker\" --config \
             /home/ann/.config/minis-studio-worker/config.toml run\n\
             Restart=on-failure\n\
             RestartSec=5\n\
             \n\
             [Install]\n\
             WantedBy=default.target\n"
        );
        assert_eq!(systemd_arg("100%"), "100%%");
        assert_eq!(systemd_arg("$HOME"), "$$HOME");
        assert_eq!(systemd_arg("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn the_launchd_plist() {
        let text = launchd_plist(&service());
        assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist"));
        assert!(text.contains("<key>Label</key>\n    <string>gg.minis.studio-worker</string>"));
        assert!(text.contains(
            "<key>ProgramArguments</key>\n    <array>\n\
             \x20       <string>/opt/studio worker/bin/studio-worker</string>\n\
             \x20       <string>--config</string>\n\
             \x20       <string>/home/ann/.config/minis-studio-worker/config.toml</string>\n\
             \x20       <string>run</string>\n    </array>"
        ));
        assert!(text.contains("<key>RunAtLoad</key>\n    <true/>"));
        assert!(text.contains("<key>KeepAlive</key>\n    <true/>"));
        assert!(text.ends_with("</dict>\n</plist>\n"));
        let mut odd = service();
        odd.args[1] = "/tmp/a&b<c>.toml".into();
        assert!(launchd_plist(&odd).contains("<string>/tmp/a&amp;b&lt;c&gt;.toml</string>"));
    }

    #[test]
    fn the_task_scheduler_xml() {
        let mut s = service();
        s.program = PathBuf::from(r"C:\Program Files\studio-worker\studio-worker.exe");
        s.args[1] = r"C:\Users\Ann\AppData\Roaming\minis\config.toml".into();
        let text = task_xml(&s);
        assert!(
            text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-16\"?>\n<Task version=\"1.2\"")
        );
        assert!(text.contains("<LogonTrigger>\n      <Enabled>true</Enabled>\n    </LogonTrigger>"));
        assert!(text.contains("<DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>"));
        assert!(text.contains("<StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>"));
        assert!(text.contains(
            "<RestartOnFailure>\n      <Interval>PT1M</Interval>\n      <Count>999</Count>"
        ));
        assert!(
            text.contains(r"<Command>C:\Program Files\studio-worker\studio-worker.exe</Command>")
        );
        assert!(text.contains(
            r"<Arguments>--config C:\Users\Ann\AppData\Roaming\minis\config.toml run</Arguments>"
        ));
        s.args[1] = r"C:\My Config\config.toml".into();
        assert!(task_xml(&s).contains(
            r#"<Arguments>--config &quot;C:\My Config\config.toml&quot; run</Arguments>"#
        ));
    }

    fn dirs(root: &Path) -> Dirs {
        Dirs {
            home: Some(root.join("home")),
            xdg_config_home: None,
            config_dir: root.join("cfg"),
            uid: 501,
        }
    }

    #[test]
    fn where_each_file_goes() {
        let d = dirs(Path::new("/r"));
        let p = plan(Manager::Systemd, &service(), &d).unwrap();
        assert_eq!(
            p.path,
            Path::new("/r/home/.config/systemd/user/studio-worker.service")
        );
        let xdg = Dirs {
            xdg_config_home: Some("/x".into()),
            ..d.clone()
        };
        let p = plan(Manager::Systemd, &service(), &xdg).unwrap();
        assert_eq!(p.path, Path::new("/x/systemd/user/studio-worker.service"));
        assert_eq!(
            p.start[1],
            argv(&[
                "systemctl",
                "--user",
                "enable",
                "--now",
                "studio-worker.service"
            ])
        );
        let p = plan(Manager::Launchd, &service(), &d).unwrap();
        assert_eq!(
            p.path,
            Path::new("/r/home/Library/LaunchAgents/gg.minis.studio-worker.plist")
        );
        assert_eq!(
            p.start[0][..3],
            argv(&["launchctl", "bootstrap", "gui/501"])
        );
        let p = plan(Manager::TaskScheduler, &service(), &d).unwrap();
        assert_eq!(p.path, Path::new("/r/cfg/studio-worker.task.xml"));
        assert_eq!(
            p.start[0][..4],
            argv(&["schtasks", "/Create", "/TN", "studio-worker"])
        );
        assert!(p.start[0].contains(&"/XML".to_string()));
    }

    /// Records the commands; the probe answers when `up`.
    struct Fake {
        up: bool,
        ran: Vec<String>,
    }

    impl Runner for Fake {
        fn run(&mut self, argv: &[String]) -> Result<(), String> {
            self.ran.push(argv.join(" "));
            if self.up {
                Ok(())
            } else {
                Err(format!("{}: not found", argv[0]))
            }
        }
    }

    #[test]
    fn install_and_uninstall_round_trip_with_systemd_answering() {
        let root = tempfile::tempdir().unwrap();
        let xdg = root.path().join("xdg");
        let d = Dirs {
            xdg_config_home: Some(xdg.clone()),
            ..dirs(root.path())
        };
        let p = plan(Manager::Systemd, &service(), &d).unwrap();
        let mut fake = Fake {
            up: true,
            ran: Vec::new(),
        };
        let dry = install(&p, true, &mut fake).unwrap();
        assert!(dry.contains(&p.path.display().to_string()) && dry.contains("ExecStart="));
        assert!(
            fake.ran.is_empty() && !p.path.exists(),
            "a dry run changes nothing"
        );
        let report = install(&p, false, &mut fake).unwrap();
        assert_eq!(std::fs::read_to_string(&p.path).unwrap(), p.text);
        assert_eq!(
            fake.ran,
            [
                "systemctl --user show-environment",
                "systemctl --user daemon-reload",
                "systemctl --user enable --now studio-worker.service"
            ]
        );
        assert!(report.contains("installed and started"), "{report}");
        fake.ran.clear();
        let report = uninstall(&p, &mut fake).unwrap();
        assert!(!p.path.exists(), "{report}");
        assert_eq!(
            fake.ran,
            [
                "systemctl --user show-environment",
                "systemctl --user disable --now studio-worker.service",
                "systemctl --user daemon-reload"
            ]
        );
        fake.ran.clear();
        let again = uninstall(&p, &mut fake).unwrap();
        assert!(again.starts_with("nothing to uninstall"), "{again}");
        assert!(fake.ran.is_empty());
    }

    #[test]
    fn without_a_user_systemd_the_commands_are_printed() {
        let root = tempfile::tempdir().unwrap();
        let d = Dirs {
            xdg_config_home: Some(root.path().join("xdg")),
            ..dirs(root.path())
        };
        let p = plan(Manager::Systemd, &service(), &d).unwrap();
        let mut fake = Fake {
            up: false,
            ran: Vec::new(),
        };
        let report = install(&p, false, &mut fake).unwrap();
        assert!(p.path.exists());
        assert!(report.contains("did not answer"), "{report}");
        assert!(report.contains("  systemctl --user daemon-reload\n  systemctl --user enable --now studio-worker.service\n"), "{report}");
        assert_eq!(
            fake.ran,
            ["systemctl --user show-environment"],
            "only the probe"
        );
        let report = uninstall(&p, &mut fake).unwrap();
        assert!(!p.path.exists());
        assert!(
            report.contains("systemctl --user disable --now studio-worker.service"),
            "{report}"
        );
    }

    /// `systemd-analyze verify` on the unit this build would write (it checks that
    /// `ExecStart`'s binary exists: the test binary stands in). Skipped where
    /// systemd-analyze is missing; CI installs it.
    #[test]
    fn the_unit_passes_systemd_analyze_verify() {
        let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
            eprintln!("systemd-analyze not found: skipped");
            return;
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let s = Service::new(&std::env::current_exe().unwrap(), &config).unwrap();
        let unit = dir.path().join(format!("{}.service", s.name));
        std::fs::write(&unit, systemd_unit(&s)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify: {stderr}");
        let about_ours: Vec<&str> = stderr.lines().filter(|l| l.contains(&s.name)).collect();
        assert!(about_ours.is_empty(), "{stderr}");
    }
}
