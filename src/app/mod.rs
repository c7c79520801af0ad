//! The subcommands. Each takes its parsed arguments and returns when done.
pub mod bench;
pub mod compare;
#[cfg(feature = "video")]
pub mod explain;
pub mod export;
pub mod inspect;
pub mod report;
#[cfg(feature = "video")]
pub mod run;
