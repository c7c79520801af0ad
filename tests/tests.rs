//! One integration test binary (as ripgrep does): faster to link, one place for helpers.
//! The media and ONNX Runtime come from `make setup`; nothing here needs Python.

// Counts each thread's allocations; `alloc` asserts the pipeline makes none per frame.
#[global_allocator]
static ALLOC: gradcamd::alloc::Counting = gradcamd::alloc::Counting;

#[cfg(feature = "video")]
mod alloc;
#[cfg(feature = "video")]
mod attention;
mod augment;
mod util;

#[cfg(feature = "video")]
mod bad_input;
#[cfg(feature = "video")]
mod commands;
mod configs;
#[cfg(feature = "video")]
mod files;
mod fuzz;
mod heads;
#[cfg(feature = "video")]
mod hostile;
#[cfg(feature = "video")]
mod http;
#[cfg(feature = "video")]
mod layers;
#[cfg(feature = "video")]
mod live;
#[cfg(feature = "video")]
mod methods;
#[cfg(feature = "video")]
mod mqtt;
mod nhwc;
#[cfg(feature = "video")]
mod reference;
#[cfg(feature = "video")]
mod remote;
#[cfg(feature = "video")]
mod report;
mod rules;
#[cfg(feature = "video")]
mod schedule;
