//! Captures the target triple this crate is built for (the self-updater picks the release
//! archive named for it).

fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=STUDIO_BUILD_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
