//! The sources' configuration, one file per component: a webhook
//! ([`webhook`]) with its signature check ([`verify`]) and retry dedupe
//! ([`dedupe`]), and a poll source ([`poll`]). Each holds its raw form,
//! spec, defaults and checks; `check --explain` prints the spec through
//! `Serialize`.

pub mod dedupe;
pub mod poll;
pub mod verify;
pub mod webhook;
