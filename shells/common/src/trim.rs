//! Idle memory trim: a worker that has sat idle for [`IDLE_TRIM_AFTER`] gives back its
//! mappings of the executable's read-only pages.
//!
//! Starting the worker (argument and config parsing, TLS setup, the engine roster, the
//! connection) runs code that an idle worker never runs again. The kernel maps a binary's
//! pages in blocks around each one touched (fault-around), so after start most of the
//! executable is mapped and counted in the process's RSS (`RssFile`), although the idle loop
//! (a heartbeat and its ack every few seconds) uses a small part of it. Once the worker has
//! been idle for a while, [`release_read_only_pages`] drops those mappings with
//! `madvise(MADV_DONTNEED)`: the pages stay in the page cache, and a page that is needed
//! again is mapped again on its first use (a minor fault, no disk read). Nothing is lost:
//! only read-only, file-backed mappings whose pages all still match the file (no private
//! copy, `Anonymous: 0 kB`) are touched, of the executable and of the shared libraries
//! loaded with it (libc, libm, the dynamic loader); data, heap and stacks never are. A
//! library is only touched once it is pinned (`dlopen` with `RTLD_NOLOAD | RTLD_NODELETE`,
//! which never loads anything): a pinned library is never unmapped, so the address range
//! read from `/proc/self/smaps` cannot be handed to another mapping meanwhile. (A library
//! that happens to be open at that moment, such as the CUDA driver while the GPU is probed,
//! then stays loaded.)
//!
//! [`IdleTrim`] decides when: once per idle period, [`IDLE_TRIM_AFTER`] after the last
//! activity (a job, an upload, an update check), never while a job runs or a result waits.
//! A shell asks it on every wake-up it has anyway, so the trim costs no wake-up of its own.

use std::time::Duration;

use studio_core::Mono;

/// How long a worker must be idle (no job running, no result held, no completion) before it
/// gives back the executable pages it mapped while busy or starting.
pub const IDLE_TRIM_AFTER: Duration = Duration::from_secs(30);

/// When to trim: once per idle period, [`IdleTrim::after`] into it.
#[derive(Debug, Clone)]
pub struct IdleTrim {
    after: Duration,
    /// The start of the current idle period (`None`: busy, or not seen idle yet).
    idle_since: Option<Mono>,
    /// This idle period has been trimmed.
    trimmed: bool,
}

impl IdleTrim {
    /// A policy that trims `after` into each idle period.
    pub fn new(after: Duration) -> IdleTrim {
        IdleTrim {
            after,
            idle_since: None,
            trimmed: false,
        }
    }

    /// How long into an idle period the trim comes.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Something happened (a completion arrived): the idle period starts again from `now`,
    /// and it will be trimmed again.
    pub fn activity(&mut self, now: Mono) {
        self.idle_since = Some(now);
        self.trimmed = false;
    }

    /// Called at each wake-up with whether work is in flight; true when the trim is due now
    /// (at most once per idle period).
    pub fn due(&mut self, now: Mono, busy: bool) -> bool {
        if busy {
            self.idle_since = None;
            self.trimmed = false;
            return false;
        }
        let since = *self.idle_since.get_or_insert(now);
        if self.trimmed || now.saturating_since(since) < self.after {
            return false;
        }
        self.trimmed = true;
        true
    }
}

impl Default for IdleTrim {
    fn default() -> IdleTrim {
        IdleTrim::new(IDLE_TRIM_AFTER)
    }
}

/// Drops this process's mappings of the read-only, unmodified pages of the executable and
/// its shared libraries (see the module docs); returns how many bytes of them were
/// resident. Elsewhere than on Linux it
/// does nothing and returns 0.
pub fn release_read_only_pages() -> std::io::Result<u64> {
    imp::release_read_only_pages()
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::BTreeSet;
    use std::ffi::CString;
    use std::io;
    use std::os::unix::fs::MetadataExt;

    /// One mapping of `/proc/self/smaps`, as far as the trim needs it.
    #[derive(Debug, Default, PartialEq)]
    pub(super) struct Mapping {
        pub start: usize,
        pub end: usize,
        pub writable: bool,
        pub private: bool,
        /// `major:minor` of the mapped file's device, in hex as smaps writes it.
        pub dev: String,
        pub inode: u64,
        /// The mapped file's path (empty for anonymous memory).
        pub path: String,
        pub rss_kib: u64,
        pub anonymous_kib: u64,
    }

    /// Parses the mappings of an smaps text. A line it cannot read ends the parse of that
    /// mapping's fields (the mapping is then kept with what was read).
    pub(super) fn parse_smaps(text: &str) -> Vec<Mapping> {
        let mut out: Vec<Mapping> = Vec::new();
        for line in text.lines() {
            let mut words = line.split_ascii_whitespace();
            let Some(first) = words.next() else { continue };
            if let Some((start, end)) = first.split_once('-') {
                // A mapping's header: `start-end perms offset dev inode [path]`.
                let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) else {
                    continue;
                };
                let perms = words.next().unwrap_or("");
                let _offset = words.next();
                let dev = words.next().unwrap_or("").to_string();
                let inode = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let path = words.collect::<Vec<_>>().join(" ");
                out.push(Mapping {
                    start,
                    end,
                    writable: perms.as_bytes().get(1) == Some(&b'w'),
                    private: perms.as_bytes().get(3) == Some(&b'p'),
                    dev,
                    inode,
                    path,
                    ..Mapping::default()
                });
                continue;
            }
            let Some(current) = out.last_mut() else {
                continue;
            };
            let kib = || words.clone().next().and_then(|w| w.parse::<u64>().ok());
            match first {
                "Rss:" => current.rss_kib = kib().unwrap_or(0),
                // Unknown: treat as modified, so the mapping is left alone.
                "Anonymous:" => current.anonymous_kib = kib().unwrap_or(u64::MAX),
                _ => {}
            }
        }
        out
    }

    /// A mapped file: `(device, inode)`.
    pub(super) type FileId = (String, u64);

    /// Whether `m` may be dropped: a read-only, private mapping of one of `files`, resident,
    /// and without a page that differs from the file.
    pub(super) fn may_drop(m: &Mapping, files: &BTreeSet<FileId>) -> bool {
        !m.writable
            && m.private
            && m.inode != 0
            && m.rss_kib > 0
            && m.anonymous_kib == 0
            && files.contains(&(m.dev.clone(), m.inode))
    }

    /// A shared library's path, as smaps names it (not a deleted file).
    pub(super) fn is_library(path: &str) -> bool {
        path.starts_with('/') && path.contains(".so") && !path.ends_with(" (deleted)")
    }

    /// Pins each loaded shared library among `maps` (never loading one) and returns the
    /// files of those now pinned.
    fn pin_libraries(maps: &[Mapping]) -> BTreeSet<FileId> {
        let mut pinned = BTreeSet::new();
        let mut tried = BTreeSet::new();
        for m in maps.iter().filter(|m| is_library(&m.path)) {
            if !tried.insert(m.path.as_str()) {
                continue;
            }
            let Ok(path) = CString::new(m.path.as_str()) else {
                continue;
            };
            // SAFETY: RTLD_NOLOAD never loads (no constructor runs): it returns the handle
            // of a library already loaded, now marked never to be unloaded, or null.
            let handle = unsafe {
                libc::dlopen(
                    path.as_ptr(),
                    libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
                )
            };
            if !handle.is_null() {
                pinned.insert((m.dev.clone(), m.inode));
                // SAFETY: the handle came from dlopen above; the library stays (NODELETE).
                unsafe { libc::dlclose(handle) };
            }
        }
        pinned
    }

    pub(super) fn release_read_only_pages() -> io::Result<u64> {
        let exe = std::fs::metadata("/proc/self/exe")?;
        let raw = exe.dev();
        let dev = format!("{:02x}:{:02x}", libc::major(raw), libc::minor(raw));
        let mut files = pin_libraries(&parse_smaps(&std::fs::read_to_string("/proc/self/smaps")?));
        files.insert((dev, exe.ino()));
        // Read again: the ranges of pinned libraries and of the executable cannot change
        // from here on.
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut released = 0;
        for m in parse_smaps(&smaps).iter().filter(|m| may_drop(m, &files)) {
            // SAFETY: the range is a whole, page-aligned, read-only private mapping of the
            // executable or a pinned library whose pages all equal the file (no private
            // copy): dropping them loses nothing, the next access maps the same bytes again
            // from the page cache. Neither is ever unmapped while the process runs.
            let rc = unsafe {
                libc::madvise(
                    m.start as *mut libc::c_void,
                    m.end - m.start,
                    libc::MADV_DONTNEED,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            released += m.rss_kib * 1024;
        }
        Ok(released)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn release_read_only_pages() -> std::io::Result<u64> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Mono {
        Mono::from_secs(secs)
    }

    #[test]
    fn trims_once_per_idle_period_after_the_quiet_time() {
        let mut t = IdleTrim::new(Duration::from_secs(30));
        assert!(!t.due(at(0), false), "the idle period starts here");
        assert!(!t.due(at(29), false));
        assert!(t.due(at(30), false), "30 s into the idle period");
        assert!(!t.due(at(35), false), "once per idle period");
        assert!(!t.due(at(500), false));
        // A job: busy, then idle again; the next trim is 30 s after the job's end.
        assert!(!t.due(at(501), true));
        assert!(!t.due(at(520), false));
        assert!(!t.due(at(549), false));
        assert!(t.due(at(550), false));
    }

    #[test]
    fn activity_restarts_the_idle_period() {
        let mut t = IdleTrim::default();
        assert_eq!(t.after(), IDLE_TRIM_AFTER);
        assert!(!t.due(at(0), false));
        t.activity(at(20));
        assert!(!t.due(at(30), false), "20 s after the completion");
        assert!(t.due(at(50), false));
        t.activity(at(60));
        assert!(!t.due(at(70), false));
        assert!(t.due(at(90), false), "trimmed again after the new activity");
    }

    #[test]
    fn never_trims_while_busy() {
        let mut t = IdleTrim::new(Duration::from_secs(1));
        for s in 0..100 {
            assert!(!t.due(at(s), true));
        }
    }

    #[cfg(target_os = "linux")]
    mod linux {
        use super::super::imp::{is_library, may_drop, parse_smaps, FileId, Mapping};
        use super::super::release_read_only_pages;
        use std::collections::BTreeSet;
        use std::sync::atomic::{AtomicU64, Ordering};

        const SMAPS: &str = "\
55d0c0a00000-55d0c0a40000 r--p 00000000 fd:01 1234 /opt/studio-worker
Size:                256 kB
Rss:                 200 kB
Anonymous:             0 kB
55d0c0a40000-55d0c0b40000 r-xp 00040000 fd:01 1234 /opt/studio-worker
Rss:                1024 kB
Anonymous:             0 kB
55d0c0b40000-55d0c0b48000 r--p 00140000 fd:01 1234 /opt/studio-worker
Rss:                  32 kB
Anonymous:            32 kB
55d0c0b48000-55d0c0b50000 rw-p 00148000 fd:01 1234 /opt/studio-worker
Rss:                  32 kB
Anonymous:            16 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 99 /usr/lib/libc.so.6
Rss:                 900 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 fd:02 1234 /mnt/other
Rss:                 100 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  48 kB
Anonymous:            48 kB
";

        #[test]
        fn only_unmodified_read_only_mappings_of_the_executable_are_dropped() {
            let maps = parse_smaps(SMAPS);
            assert_eq!(maps.len(), 7);
            assert_eq!(
                maps[1],
                Mapping {
                    start: 0x55d0c0a40000,
                    end: 0x55d0c0b40000,
                    writable: false,
                    private: true,
                    dev: "fd:01".into(),
                    inode: 1234,
                    path: "/opt/studio-worker".into(),
                    rss_kib: 1024,
                    anonymous_kib: 0,
                }
            );
            let exe: BTreeSet<FileId> = [("fd:01".to_string(), 1234)].into();
            let dropped: Vec<bool> = maps.iter().map(|m| may_drop(m, &exe)).collect();
            // Rodata and text: yes. Relocated read-only data (a private copy), writable
            // data, another file, the same inode on another device, the stack: no.
            assert_eq!(dropped, [true, true, false, false, false, false, false]);
            // With libc pinned, its text too.
            let both: BTreeSet<FileId> =
                [("fd:01".to_string(), 1234), ("fd:01".to_string(), 99)].into();
            let dropped: Vec<bool> = maps.iter().map(|m| may_drop(m, &both)).collect();
            assert_eq!(dropped, [true, true, false, false, true, false, false]);
        }

        #[test]
        fn libraries_are_told_by_their_path() {
            assert!(is_library("/usr/lib/x86_64-linux-gnu/libc.so.6"));
            assert!(is_library("/usr/lib/libonnxruntime.so"));
            assert!(!is_library("/usr/lib/libgone.so.1 (deleted)"));
            assert!(!is_library("/opt/studio-worker"));
            assert!(!is_library("[vdso]"));
            assert!(!is_library(""));
        }

        #[test]
        fn an_unreadable_anonymous_count_keeps_the_mapping() {
            let maps = parse_smaps(
                "00400000-00500000 r-xp 00000000 fd:01 7 /x\nRss: 64 kB\nAnonymous: ?? kB\n",
            );
            let files: BTreeSet<FileId> = [("fd:01".to_string(), 7)].into();
            assert!(!may_drop(&maps[0], &files));
        }

        fn exe_rss_kib() -> u64 {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let ino =
                std::os::unix::fs::MetadataExt::ino(&std::fs::metadata("/proc/self/exe").unwrap());
            parse_smaps(&smaps)
                .iter()
                .filter(|m| m.inode == ino && !m.writable)
                .map(|m| m.rss_kib)
                .sum()
        }

        static KEPT: AtomicU64 = AtomicU64::new(0);

        #[test]
        fn the_trim_releases_pages_and_the_process_goes_on() {
            KEPT.store(0x5eed, Ordering::SeqCst);
            let before = exe_rss_kib();
            let released = release_read_only_pages().expect("trim");
            let after = exe_rss_kib();
            assert!(
                released > 0,
                "the test binary had resident pages ({before} KiB)"
            );
            assert!(
                after < before,
                "resident executable pages: {before} KiB before, {after} KiB after"
            );
            // Writable data is untouched, and code, relocations and libc calls still work.
            assert_eq!(KEPT.load(Ordering::SeqCst), 0x5eed);
            let text = format!("{:?}", std::env::current_dir().map(|p| p.is_absolute()));
            assert_eq!(text, "Ok(true)");
        }
    }
}
