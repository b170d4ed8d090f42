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
