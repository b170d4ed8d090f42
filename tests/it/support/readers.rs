//! The independent readers (DuckDB, delta-rs, Polars) run as Python
//! processes that print one JSON document. Every reader script ends by
//! flushing its output and leaving with `os._exit(0)`: the engines' native
//! threads, still joinable when the interpreter tears down, can abort a
//! normal exit after the output is printed ("terminate called without an
//! active exception"), which failed whole CI runs. A reader that aborts
//! that way anyway is run again, twice at most; any other failure fails the
//! test with the reader's own message.

use std::ffi::OsStr;
use std::process::Command;

use serde::de::DeserializeOwned;

/// What every inline reader script ends with (the files end the same way).
const LEAVE: &str = "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_os._exit(0)\n";

/// The Python the tests use (`scripts/test` installs the readers into it).
pub fn python() -> String {
    std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the reader script `tests/it/support/{file}` with `args` (and `env`)
/// and parses what it prints.
pub fn run_reader<T: DeserializeOwned, S: AsRef<OsStr>>(
    file: &str,
    args: &[S],
    env: &[(&str, &str)],
) -> T {
    let script = format!("{}/tests/it/support/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(python());
    command.arg(&script).args(args).envs(env.iter().copied());
    json_of(command, file)
}

/// Runs the inline reader `script` with `args` and parses what it prints.
pub fn run_inline_reader<T: DeserializeOwned, S: AsRef<OsStr>>(script: &str, args: &[S]) -> T {
    let mut command = Command::new(python());
    command.arg("-c").arg(format!("{script}{LEAVE}")).args(args);
    json_of(command, "an inline reader")
}

fn json_of<T: DeserializeOwned>(mut command: Command, what: &str) -> T {
    let mut tries = 0;
    loop {
        let out = command.output().unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; scripts/test installs the readers",
                python()
            )
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && stderr.contains("terminate called") && tries < 2 {
            tries += 1;
            eprintln!("{what} aborted at exit, run again: {stderr}");
            std::thread::sleep(std::time::Duration::from_millis(200));
            continue;
        }
        assert!(
            out.status.success(),
            "{what} failed (scripts/test installs duckdb, deltalake, polars): {stderr}"
        );
        if !stderr.is_empty() {
            eprintln!("{stderr}");
        }
        return serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {stderr}"));
    }
}
