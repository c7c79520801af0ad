//! Failure classes and their exit codes. Every user-facing failure is one line that says what
//! went wrong, where, and what to do; the class picks the exit code so scripts can tell a bad
//! config from a missing model or an unwritable output.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad command line or config file.
    Config,
    /// Model file missing, unreadable or not ONNX.
    Model,
    /// A valid ONNX model that gradcamd cannot explain (not a CNN classifier, unsupported op).
    Unsupported,
    /// Video or image input missing or undecodable.
    Input,
    /// Output path not writable.
    Output,
    /// ONNX Runtime could not be loaded or failed.
    Runtime,
}

impl Kind {
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Config => 2,
            Kind::Model => 3,
            Kind::Unsupported => 4,
            Kind::Input => 5,
            Kind::Output => 6,
            Kind::Runtime => 7,
        }
    }
}

/// An error tagged with its [`Kind`].
#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: Kind,
    pub error: anyhow::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Failure {}

pub(crate) trait KindExt<T> {
    fn kind(self, kind: Kind) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> KindExt<T> for Result<T, E> {
    fn kind(self, kind: Kind) -> anyhow::Result<T> {
        self.map_err(|e| {
            anyhow::Error::new(Failure {
                kind,
                error: e.into(),
            })
        })
    }
}

/// Shorthand for a tagged error from a message.
pub fn fail(kind: Kind, msg: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Failure {
        kind,
        error: anyhow::anyhow!("{msg}"),
    })
}

/// Exit code for any error that reaches `main`.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<Failure>())
        .map_or(1, |f| f.kind.exit_code())
}

/// The exit class of an error type, said once per type (where the type is defined, or here for
/// another crate's): call sites write `.classified()?` instead of choosing a [`Kind`] each time.
pub(crate) trait Classify: fmt::Display {
    fn class(&self) -> Kind;
}

/// The rewriter's errors: a file that is not a model is a model error; a model it cannot
/// explain is unsupported.
impl Classify for onnx_gradcam::OnnxError {
    fn class(&self) -> Kind {
        use onnx_gradcam::OnnxError as E;
        match self {
            E::Read { .. } | E::Corrupt { .. } | E::Decode(_) => Kind::Model,
            _ => Kind::Unsupported,
        }
    }
}

pub trait Classified<T> {
    /// The error as a one-line [`Failure`] of its type's class.
    fn classified(self) -> anyhow::Result<T>;
}

impl<T, E: Classify> Classified<T> for Result<T, E> {
    fn classified(self) -> anyhow::Result<T> {
        self.map_err(|e| fail(e.class(), e))
    }
}
