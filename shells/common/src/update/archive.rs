//! Unpacking a release archive in-process (tar + xz, tar + gzip, zip), refusing anything
//! that could write outside the unpack folder: absolute paths, `..`, links (symbolic and
//! hard), device and other special entries, and members or totals over the limits.

use std::fs::{self, File};
use std::io::{self, BufReader, Cursor, Read, Write};
use std::path::{Component, Path, PathBuf};

/// The largest member an archive may hold (the worker binary is well under it).
pub const MAX_MEMBER_BYTES: u64 = 512 * 1024 * 1024;
/// The most bytes an archive may unpack to in all.
pub const MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;
/// The most entries an archive may hold.
pub const MAX_ENTRIES: usize = 10_000;

/// The bounds of one unpack (defaults: the constants above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveLimits {
    pub max_member_bytes: u64,
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_member_bytes: MAX_MEMBER_BYTES,
            max_unpacked_bytes: MAX_UNPACKED_BYTES,
            max_entries: MAX_ENTRIES,
        }
    }
}

/// The archive formats a release may use (by the asset name's extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    TarXz,
    TarGz,
    Zip,
}

impl Format {
    /// The format an asset name ends with.
    pub fn of(name: &str) -> Option<Format> {
        if name.ends_with(".tar.xz") {
            Some(Format::TarXz)
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Format::TarGz)
        } else if name.ends_with(".zip") {
            Some(Format::Zip)
        } else {
            None
        }
    }
}

/// Unpacks `archive` into the existing folder `dest` (see the module docs).
pub fn unpack(
    archive: &Path,
    format: Format,
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<(), String> {
    let file = File::open(archive).map_err(|e| format!("cannot open the archive: {e}"))?;
    match format {
        Format::TarGz => unpack_tar(
            flate2::read::GzDecoder::new(BufReader::new(file)),
            dest,
            limits,
        ),
        Format::TarXz => {
            // lzma-rs decodes into a writer: the tar is held in memory, bounded.
            let mut tar = Bounded {
                out: Vec::new(),
                left: limits.max_unpacked_bytes.saturating_add(64 * 1024),
            };
            lzma_rs::xz_decompress(&mut BufReader::new(file), &mut tar)
                .map_err(|e| format!("the archive is not valid xz: {e}"))?;
            unpack_tar(Cursor::new(tar.out), dest, limits)
        }
        Format::Zip => unpack_zip(file, dest, limits),
    }
}

/// A writer that refuses to grow past `left` bytes (an xz bomb stops there).
struct Bounded {
    out: Vec<u8>,
    left: u64,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(
                "the archive unpacks to more than the limit",
            ));
        }
        self.left -= buf.len() as u64;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A member's path as a relative path inside the unpack folder, or why not.
fn inside(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "archive entry `{}` would escape the unpack folder",
                    path.display()
                ))
            }
        }
    }
    Ok(out)
}

struct Budget<'a> {
    limits: &'a ArchiveLimits,
    entries: usize,
    total: u64,
}

impl Budget<'_> {
    fn entry(&mut self) -> Result<(), String> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(format!(
                "the archive holds more than {} entries",
                self.limits.max_entries
            ));
        }
        Ok(())
    }

    fn member(&mut self, name: &Path, size: u64) -> Result<(), String> {
        if size > self.limits.max_member_bytes {
            return Err(format!(
                "archive entry `{}` is {size} bytes, over the {}-byte limit",
                name.display(),
                self.limits.max_member_bytes
            ));
        }
        self.total = self.total.saturating_add(size);
        if self.total > self.limits.max_unpacked_bytes {
            return Err(format!(
                "the archive unpacks to more than {} bytes",
                self.limits.max_unpacked_bytes
            ));
        }
        Ok(())
    }
}

/// Writes one regular member (at most `size` bytes are read; fewer is an error).
fn write_member(
    dest: &Path,
    rel: &Path,
    mut data: impl Read,
    size: u64,
    mode: Option<u32>,
) -> Result<(), String> {
    let path = dest.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut out =
        File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let copied = io::copy(&mut (&mut data).take(size), &mut out)
        .map_err(|e| format!("cannot unpack `{}`: {e}", rel.display()))?;
    if copied != size {
        return Err(format!("archive entry `{}` is truncated", rel.display()));
    }
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o755))
            .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}

fn unpack_tar(reader: impl Read, dest: &Path, limits: &ArchiveLimits) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    let mut budget = Budget {
        limits,
        entries: 0,
        total: 0,
    };
    let entries = archive
        .entries()
        .map_err(|e| format!("the archive is not a valid tar: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("the archive is not a valid tar: {e}"))?;
        budget.entry()?;
        let raw = entry
            .path()
            .map_err(|e| format!("an archive entry has an unreadable path: {e}"))?
            .into_owned();
        let rel = inside(&raw)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(format!(
                "archive entry `{}` is a link; links are refused",
                raw.display()
            ));
        }
        if kind.is_dir() {
            let dir = dest.join(&rel);
            fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(format!(
                "archive entry `{}` is not a regular file or folder",
                raw.display()
            ));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| format!("archive entry `{}` has no size: {e}", raw.display()))?;
        budget.member(&raw, size)?;
        let mode = entry.header().mode().ok();
        if rel.as_os_str().is_empty() {
            return Err(format!("archive entry `{}` has no name", raw.display()));
        }
        write_member(dest, &rel, entry, size, mode)?;
    }
    Ok(())
}

fn unpack_zip(file: File, dest: &Path, limits: &ArchiveLimits) -> Result<(), String> {
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| format!("the archive is not a valid zip: {e}"))?;
    let mut budget = Budget {
        limits,
        entries: 0,
        total: 0,
    };
    for i in 0..archive.len() {
        let member = archive
            .by_index(i)
            .map_err(|e| format!("the archive is not a valid zip: {e}"))?;
        budget.entry()?;
        let raw = PathBuf::from(
            member
                .name()
                .map_err(|e| format!("an archive entry has an unreadable name: {e}"))?
                .into_owned(),
        );
        let rel = inside(&raw)?;
        if member.enclosed_name().is_none() {
            return Err(format!(
                "archive entry `{}` would escape the unpack folder",
                raw.display()
            ));
        }
        if member.is_symlink() {
            return Err(format!(
                "archive entry `{}` is a link; links are refused",
                raw.display()
            ));
        }
        if member.is_dir() {
            let dir = dest.join(&rel);
            fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            continue;
        }
        let size = member.size();
        budget.member(&raw, size)?;
        let mode = member.unix_mode();
        write_member(dest, &rel, member, size, mode)?;
    }
    Ok(())
}

/// The executable named `exe_name` at the root of `dest` or in one of its top-level
/// folders.
pub fn find_executable(dest: &Path, exe_name: &str) -> Result<PathBuf, String> {
    let at_root = dest.join(exe_name);
    if at_root.is_file() {
        return Ok(at_root);
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(dest)
        .map_err(|e| format!("cannot read {}: {e}", dest.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| d.join(exe_name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("the archive has no `{exe_name}` at its root or in a top-level folder")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::update::testing::{gz, tar_of, xz};

    fn run(
        bytes: &[u8],
        format: Format,
        limits: &ArchiveLimits,
    ) -> (tempfile::TempDir, Result<(), String>) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a");
        fs::write(&archive, bytes).unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let r = unpack(&archive, format, &dest, limits);
        (dir, r)
    }

    #[test]
    fn tar_xz_and_tar_gz_unpack_and_the_executable_is_found() {
        let tar = tar_of(&[("studio-worker-x/studio-worker", b"#!/bin/sh\n")]);
        for (bytes, format) in [(xz(&tar), Format::TarXz), (gz(&tar), Format::TarGz)] {
            let (dir, r) = run(&bytes, format, &ArchiveLimits::default());
            r.unwrap();
            let exe = find_executable(&dir.path().join("out"), "studio-worker").unwrap();
            assert_eq!(fs::read(&exe).unwrap(), b"#!/bin/sh\n");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(
                    fs::metadata(&exe).unwrap().permissions().mode() & 0o777,
                    0o755
                );
            }
        }
    }

    #[test]
    fn escaping_paths_are_refused() {
        for path in ["../evil", "a/../../evil", "/etc/evil"] {
            let tar = tar_of(&[(path, b"x")]);
            let (dir, r) = run(&gz(&tar), Format::TarGz, &ArchiveLimits::default());
            let e = r.unwrap_err();
            assert!(e.contains("would escape the unpack folder"), "{path}: {e}");
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn links_are_refused() {
        for kind in [tar::EntryType::Symlink, tar::EntryType::Link] {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            b.append_link(&mut h, "studio-worker", "/bin/sh").unwrap();
            let tar = b.into_inner().unwrap();
            let (_dir, r) = run(&gz(&tar), Format::TarGz, &ArchiveLimits::default());
            assert!(r.unwrap_err().contains("is a link"), "{kind:?}");
        }
    }

    #[test]
    fn oversized_members_totals_and_entry_counts_are_refused() {
        let limits = ArchiveLimits {
            max_member_bytes: 10,
            max_unpacked_bytes: 15,
            max_entries: 3,
        };
        let big = tar_of(&[("big", &[0; 11])]);
        let e = run(&gz(&big), Format::TarGz, &limits).1.unwrap_err();
        assert!(e.contains("over the 10-byte limit"), "{e}");
        let total = tar_of(&[("a", &[0; 8]), ("b", &[0; 8])]);
        let e = run(&gz(&total), Format::TarGz, &limits).1.unwrap_err();
        assert!(e.contains("more than 15 bytes"), "{e}");
        let many = tar_of(&[("a", b""), ("b", b""), ("c", b""), ("d", b"")]);
        let e = run(&gz(&many), Format::TarGz, &limits).1.unwrap_err();
        assert!(e.contains("more than 3 entries"), "{e}");
        // An xz stream that inflates past the limit stops there.
        let e = run(
            &xz(&big),
            Format::TarXz,
            &ArchiveLimits {
                max_unpacked_bytes: 0,
                ..limits
            },
        )
        .1
        .unwrap_err();
        assert!(e.contains("limit"), "{e}");
    }

    fn zip_with(entries: &[(&str, &[u8])], symlink: Option<(&str, &str)>) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        if let Some((name, target)) = symlink {
            w.add_symlink(name, target, opts).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn zip_unpacks_and_refuses_escapes_and_links() {
        let ok = zip_with(&[("studio-worker.exe", b"MZ")], None);
        let (dir, r) = run(&ok, Format::Zip, &ArchiveLimits::default());
        r.unwrap();
        find_executable(&dir.path().join("out"), "studio-worker.exe").unwrap();
        let escape = zip_with(&[("../evil", b"x")], None);
        let e = run(&escape, Format::Zip, &ArchiveLimits::default())
            .1
            .unwrap_err();
        assert!(e.contains("would escape"), "{e}");
        let link = zip_with(&[], Some(("studio-worker", "/bin/sh")));
        let e = run(&link, Format::Zip, &ArchiveLimits::default())
            .1
            .unwrap_err();
        assert!(e.contains("is a link"), "{e}");
    }

    #[test]
    fn a_missing_executable_is_named() {
        let tar = tar_of(&[("README.md", b"hi")]);
        let (dir, r) = run(&gz(&tar), Format::TarGz, &ArchiveLimits::default());
        r.unwrap();
        let e = find_executable(&dir.path().join("out"), "studio-worker").unwrap_err();
        assert!(e.contains("no `studio-worker`"), "{e}");
    }

    #[test]
    fn formats_by_name() {
        assert_eq!(Format::of("a-x.tar.xz"), Some(Format::TarXz));
        assert_eq!(Format::of("a-x.tar.gz"), Some(Format::TarGz));
        assert_eq!(Format::of("a-x.zip"), Some(Format::Zip));
        assert_eq!(Format::of("a-x.7z"), None);
    }
}
