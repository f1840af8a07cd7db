//! `demo` in-process on a daemon type: the local studio, the daemon and one job of each
//! kind. Generous timeouts; nothing asserts speed.

use crate::daemon::WorkerDaemon;
use crate::demo::{run_with, DemoOptions};

pub fn the_demo_completes_every_job_and_leaves_the_results<D: WorkerDaemon>() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo-out");
    let code = run_with::<D>(&DemoOptions {
        out_dir: out.clone(),
        keep_running: false,
        handle_signals: false,
    })
    .unwrap();
    assert_eq!(code, 0);
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    // Three binary results (image, audio_tts, video) uploaded, two JSON results written.
    assert_eq!(files.len(), 5, "{files:?}");
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".json")).count(),
        2,
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.ends_with(".wav")), "{files:?}");
}
