//! Arbitrary bytes after the segment magic as a log's only segment: opening
//! the log (tail recovery, in both formats) and reading every event it then
//! reports must return events or an error, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::buffer::{self, segment, Options};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for magic in [segment::MAGIC, *b"TRBLOG\0\x02", *b"TRBLOG\0\x01"] {
        // tmpfs where there is one: recovery fsyncs, and a disk would make
        // each execution take milliseconds.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let log_dir = dir.path().join("log");
        std::fs::create_dir_all(&log_dir).unwrap();
        let mut file = magic.to_vec();
        file.extend_from_slice(data);
        std::fs::write(segment::path(&log_dir, 0), &file).unwrap();
        let options = Options {
            dir: dir.path().to_path_buf(),
            segment_bytes: 64 << 10,
            sinks: vec!["table".into()],
            floor: 0,
        };
        let Ok((appender, log)) = buffer::open(options) else {
            continue;
        };
        runtime.block_on(async {
            let mut reader = log.reader(0);
            while reader.position() < log.end() {
                match reader.read(1024).await {
                    Ok(events) if !events.is_empty() => {}
                    _ => break,
                }
            }
        });
        drop(appender);
    }
});
