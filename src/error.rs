//! Error classes shared by every module. Each module keeps its own `thiserror`
//! enum; this file only says how a caller should react to one: fix the config,
//! retry with backoff, dead-letter the input, or stop the pipeline.

/// How a caller acts on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration is wrong; a person must edit a file.
    Config,
    /// Worth retrying with backoff (network, a storage hiccup).
    Transient,
    /// The input itself is bad; retrying cannot help (dead-letter it).
    Permanent,
    /// A broken invariant or a local disk failure; stop the pipeline.
    Internal,
}

/// Implemented by every module error so runners can decide what to do.
pub trait Classify {
    /// The class of this error.
    fn kind(&self) -> ErrorKind;
}

/// An error and its causes on one line, `outer: cause: root`, each cause
/// once: a cause whose text the message already holds (an error that prints
/// its source itself) is not repeated. The library's one way to print an
/// error chain; the binary uses `anyhow`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the table failed: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("the sink stopped")]
    struct Outer(#[source] Repeats);

    #[test]
    fn a_chain_names_each_cause_once() {
        let root = std::io::Error::other("disk full");
        let error = Outer(Repeats(root));
        assert_eq!(
            chain(&error),
            "the sink stopped: opening the table failed: disk full"
        );
    }
}
