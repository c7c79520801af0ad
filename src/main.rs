//! The gradcamd binary: logging, flags, Ctrl-C, then the library does the work.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use clap::Parser;
use gradcamd::cli::{Cli, Command};
use gradcamd::error::{fail, Classified, Kind};

#[global_allocator]
static ALLOC: gradcamd::alloc::Counting = gradcamd::alloc::Counting;

fn main() {
    gradcamd::alloc::Counting::mark_installed();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .compact()
        .init();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            gradcamd::say!("error: {e:#}");
            gradcamd::error::exit_code(&e)
        }
    };
    // Every output is final here. _exit, not exit: a camera's connection attempt may still be
    // waiting inside FFmpeg on a thread of its own, and exit() would run C++ static
    // destructors under it.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(code) };
}

/// First Ctrl-C (or SIGTERM): stop capturing and let the pipeline drain and finalize.
/// Second: exit at once.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let hits = AtomicUsize::new(0);
    let s = stop.clone();
    ctrlc::set_handler(move || {
        if hits.fetch_add(1, Ordering::SeqCst) == 0 {
            gradcamd::say!("\nstopping: finishing the frames already read (Ctrl-C again to quit at once)");
            s.store(true, Ordering::SeqCst);
        } else {
            // _exit, not exit: exit() would run C++ static destructors under threads that are
            // still inside ONNX Runtime or OpenCV (spurious errors, once a hang of seconds).
            // SAFETY: _exit only ends the process; it touches no Rust state.
            unsafe { libc::_exit(130) };
        }
    })
    .map_err(|e| fail(Kind::Runtime, format!("cannot install the Ctrl-C handler: {e}")))?;
    Ok(stop)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(lib) = &cli.ort_lib {
        gradcamd::engine::init_runtime(Some(lib)).classified()?;
    }
    match &cli.command {
        Command::Inspect(a) => gradcamd::app::inspect::inspect(a),
        Command::Augment(a) => gradcamd::app::inspect::augment_cmd(a),
        Command::ExportTriton(a) => gradcamd::app::export::export_triton(a),
        Command::Bench(a) => gradcamd::app::bench::bench(a),
        Command::Compare(a) => gradcamd::app::compare::compare(a),
        Command::Report(a) => gradcamd::app::report::report(a),
        #[cfg(feature = "video")]
        Command::Run(a) => gradcamd::app::run::run(a, stop_flag()?),
        #[cfg(feature = "video")]
        Command::Explain(a) => gradcamd::app::explain::explain(a),
        #[cfg(not(feature = "video"))]
        Command::Run(_) | Command::Explain(_) => {
            let _ = stop_flag;
            Err(fail(
                Kind::Config,
                "this gradcamd was built without the `video` feature (OpenCV); run and explain need it",
            ))
        }
    }
}
