//! The webhook source's configuration, one file per component: the source
//! itself ([`webhook`]), its signature check ([`verify`]) and its retry
//! dedupe ([`dedupe`]); each holds its raw form, spec, defaults and checks,
//! and `check --explain` prints the spec through `Serialize`. The poll
//! source's are in [`super::poll`].

pub mod dedupe;
pub mod verify;
pub mod webhook;
