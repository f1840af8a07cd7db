//! The release feed: a JSON array of GitHub releases, and the choice of the release and
//! asset this build would install.

use semver::Version;
use serde::Deserialize;

/// One release of the feed (the fields of GitHub's releases API this updater reads).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FeedRelease {
    pub tag_name: String,
    #[serde(default)]
    pub prerelease: bool,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub assets: Vec<FeedAsset>,
}

/// One downloadable file of a release.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FeedAsset {
    pub name: String,
    pub browser_download_url: String,
}

/// The release chosen for this build: its version and the two files to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub version: Version,
    pub tag: String,
    /// The archive for this build's binary and target.
    pub archive: FeedAsset,
    /// `<archive name>.sha256`, when the release carries one (required to install).
    pub checksum: Option<FeedAsset>,
}

/// The version a tag names: `vX.Y.Z`, `X.Y.Z` or `studio-worker-vX.Y.Z` (any semver,
/// pre-release and build metadata included). `None` for anything else.
pub fn tag_version(tag: &str) -> Option<Version> {
    let rest = tag.strip_prefix("studio-worker-").unwrap_or(tag);
    let rest = rest.strip_prefix('v').unwrap_or(rest);
    Version::parse(rest).ok()
}

/// The archive names this build accepts, in order of preference: `<bin>-<target>.tar.xz`,
/// `.tar.gz` (`.zip` first on Windows), as cargo-dist names them.
pub fn asset_names(bin: &str, target: &str) -> Vec<String> {
    let exts: &[&str] = if target.contains("windows") {
        &["zip", "tar.xz", "tar.gz"]
    } else {
        &["tar.xz", "tar.gz"]
    };
    exts.iter().map(|e| format!("{bin}-{target}.{e}")).collect()
}

/// What [`choose`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Choice {
    /// The newest release above the running version that has an archive for this build.
    pub release: Option<Release>,
    /// Tags that are not versions (logged and skipped).
    pub skipped_tags: Vec<String>,
    /// Newer releases without an archive for this build (their tags).
    pub without_asset: Vec<String>,
}

/// Parses the feed (`text`: a JSON array of releases) and picks the newest release above
/// `current` by semver: drafts skipped, pre-releases only with `prerelease`, unparseable
/// tags skipped (and listed), releases without an archive named for `bin` and `target`
/// skipped (and listed).
pub fn choose(
    text: &str,
    current: &Version,
    bin: &str,
    target: &str,
    prerelease: bool,
) -> Result<Choice, String> {
    let releases: Vec<FeedRelease> = serde_json::from_str(text)
        .map_err(|e| format!("the feed is not a JSON array of releases: {e}"))?;
    let names = asset_names(bin, target);
    let mut skipped_tags = Vec::new();
    let mut candidates: Vec<(Version, FeedRelease)> = Vec::new();
    for r in releases {
        if r.draft {
            continue;
        }
        let Some(version) = tag_version(&r.tag_name) else {
            skipped_tags.push(r.tag_name);
            continue;
        };
        if (r.prerelease || !version.pre.is_empty()) && !prerelease {
            continue;
        }
        if version > *current {
            candidates.push((version, r));
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0));
    let mut without_asset = Vec::new();
    for (version, r) in candidates {
        let archive = names
            .iter()
            .find_map(|n| r.assets.iter().find(|a| &a.name == n))
            .cloned();
        let Some(archive) = archive else {
            without_asset.push(r.tag_name);
            continue;
        };
        let sum_name = format!("{}.sha256", archive.name);
        let checksum = r.assets.iter().find(|a| a.name == sum_name).cloned();
        return Ok(Choice {
            release: Some(Release {
                version,
                tag: r.tag_name,
                archive,
                checksum,
            }),
            skipped_tags,
            without_asset,
        });
    }
    Ok(Choice {
        release: None,
        skipped_tags,
        without_asset,
    })
}

/// The SHA-256 a `.sha256` file states: lowercase hex digits, optionally followed by
/// whitespace and the file name (with or without a leading `*`), which, when present,
/// must be `archive`.
pub fn parse_checksum(text: &str, archive: &str) -> Result<String, String> {
    let line = text.lines().next().unwrap_or("").trim();
    let mut parts = line.splitn(2, char::is_whitespace);
    let hex = parts.next().unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "{archive}.sha256 does not start with 64 lowercase hex digits"
        ));
    }
    if let Some(name) = parts.next().map(str::trim).filter(|n| !n.is_empty()) {
        let name = name.strip_prefix('*').unwrap_or(name);
        if name != archive {
            return Err(format!("{archive}.sha256 names another file (`{name}`)"));
        }
    }
    Ok(hex.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn release(tag: &str, pre: bool, draft: bool, assets: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "tag_name": tag, "prerelease": pre, "draft": draft,
            "assets": assets.iter().map(|n| serde_json::json!({
                "name": n, "browser_download_url": format!("https://dl.test/{tag}/{n}")
            })).collect::<Vec<_>>(),
        })
    }

    fn feed(releases: &[serde_json::Value]) -> String {
        serde_json::Value::Array(releases.to_vec()).to_string()
    }

    const BIN: &str = "studio-worker";
    const TARGET: &str = "x86_64-unknown-linux-gnu";
    const XZ: &str = "studio-worker-x86_64-unknown-linux-gnu.tar.xz";
    const GZ: &str = "studio-worker-x86_64-unknown-linux-gnu.tar.gz";

    fn pick(text: &str, current: &str, prerelease: bool) -> Choice {
        choose(
            text,
            &Version::parse(current).unwrap(),
            BIN,
            TARGET,
            prerelease,
        )
        .unwrap()
    }

    #[test]
    fn tags_in_the_three_spellings_are_versions() {
        for (tag, want) in [
            ("v1.2.3", Some("1.2.3")),
            ("1.2.3", Some("1.2.3")),
            ("studio-worker-v1.2.3", Some("1.2.3")),
            ("v2.0.0-rc.1", Some("2.0.0-rc.1")),
            ("nightly", None),
            ("v1.2", None),
            ("release-1.2.3", None),
        ] {
            assert_eq!(
                tag_version(tag),
                want.map(|v| Version::parse(v).unwrap()),
                "{tag}"
            );
        }
    }

    #[test]
    fn the_newest_by_semver_wins_drafts_and_prereleases_skipped() {
        let text = feed(&[
            release("v0.9.0", false, false, &[XZ]),
            release("v0.10.0", false, false, &[XZ, &format!("{XZ}.sha256")]),
            release("v0.11.0", false, true, &[XZ]),
            release("v0.12.0-rc.1", true, false, &[XZ]),
            release("nightly", false, false, &[XZ]),
        ]);
        let c = pick(&text, "0.1.0", false);
        let r = c.release.unwrap();
        assert_eq!(
            r.version,
            Version::parse("0.10.0").unwrap(),
            "10 > 9 by semver"
        );
        assert_eq!(r.archive.name, XZ);
        assert_eq!(r.checksum.unwrap().name, format!("{XZ}.sha256"));
        assert_eq!(c.skipped_tags, ["nightly"]);
        let c = pick(&text, "0.1.0", true);
        assert_eq!(
            c.release.unwrap().version,
            Version::parse("0.12.0-rc.1").unwrap()
        );
    }

    #[test]
    fn nothing_newer_is_up_to_date() {
        let text = feed(&[release("v0.1.0", false, false, &[XZ])]);
        assert_eq!(pick(&text, "0.1.0", false).release, None);
        assert_eq!(pick(&text, "0.2.0", false).release, None);
    }

    #[test]
    fn a_release_without_our_asset_is_passed_over_for_an_older_one_that_has_it() {
        let text = feed(&[
            release(
                "v0.3.0",
                false,
                false,
                &["studio-worker-aarch64-apple-darwin.tar.xz"],
            ),
            release("v0.2.0", false, false, &[GZ]),
        ]);
        let c = pick(&text, "0.1.0", false);
        assert_eq!(c.release.unwrap().archive.name, GZ);
        assert_eq!(c.without_asset, ["v0.3.0"]);
        // xz is preferred over gz when both are there.
        let text = feed(&[release("v0.2.0", false, false, &[GZ, XZ])]);
        assert_eq!(
            pick(&text, "0.1.0", false).release.unwrap().archive.name,
            XZ
        );
    }

    #[test]
    fn windows_prefers_zip() {
        let names = asset_names("studio-worker", "x86_64-pc-windows-msvc");
        assert_eq!(names[0], "studio-worker-x86_64-pc-windows-msvc.zip");
    }

    #[test]
    fn a_feed_that_is_not_an_array_is_an_error() {
        let e = choose(
            "{\"message\":\"rate limited\"}",
            &Version::new(0, 1, 0),
            BIN,
            TARGET,
            false,
        )
        .unwrap_err();
        assert!(e.contains("not a JSON array of releases"), "{e}");
    }

    #[test]
    fn checksum_files_in_the_usual_spellings() {
        assert_eq!(parse_checksum(SUM, XZ).unwrap(), SUM);
        assert_eq!(parse_checksum(&format!("{SUM}\n"), XZ).unwrap(), SUM);
        assert_eq!(parse_checksum(&format!("{SUM}  {XZ}\n"), XZ).unwrap(), SUM);
        assert_eq!(parse_checksum(&format!("{SUM} *{XZ}"), XZ).unwrap(), SUM);
        for bad in [
            "",
            "not a checksum",
            &SUM[..63],
            &SUM.to_uppercase(),
            &format!("{SUM}  other-file.tar.xz"),
        ] {
            assert!(parse_checksum(bad, XZ).is_err(), "{bad:?}");
        }
    }
}
