//! The README's main command, `studio-worker demo`, as a user runs it: the binary on its
//! own in a fresh directory (its own loopback studio, config and port), every demo job
//! done, the table printed and the results left in `./demo-out`.
//!
//! The worker binaries carry the demo when built with their `demo` feature, which this
//! crate's dev-dependency on `studio-shell` turns on in a workspace test run (`cargo test
//! --workspace`). Run alone, build them first: `cargo build -p studio-worker -p
//! studio-worker-async --features demo`.

use studio_e2e::{for_each_shell, Bin, Worker};
use studio_shell::demo::{demo_jobs, kind_name, DEFAULT_OUT_DIR};

fn the_readme_demo_completes_every_job_from_a_fresh_directory(bin: &Bin) {
    let mut demo = Worker::demo(bin);
    assert_eq!(demo.expect_exit_code(), 0, "{}", demo.stderr());
    let stdout = demo.stdout();
    // `job | kind | status | ms | output`, one row per job.
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .filter(|cells: &Vec<String>| cells.len() == 5)
        .collect();
    for (kind, _) in demo_jobs() {
        assert!(
            rows.iter()
                .any(|r| r[1] == kind_name(kind) && r[2] == "done"),
            "no done {kind:?} row:\n{stdout}"
        );
    }
    assert!(stdout.contains("all jobs completed"), "{stdout}");
    let results = std::fs::read_dir(demo.dir().join(DEFAULT_OUT_DIR))
        .unwrap_or_else(|e| panic!("no {DEFAULT_OUT_DIR} beside the demo: {e}\n{stdout}"))
        .count();
    assert_eq!(results, demo_jobs().len(), "{stdout}");
}

for_each_shell!(the_readme_demo_completes_every_job_from_a_fresh_directory);
