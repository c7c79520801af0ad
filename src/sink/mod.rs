//! Sinks: where annotated frames go. One thread per source and sink; each re-orders its
//! frames by `seq` (render workers finish out of order) before writing.
pub mod file;
