//! [`CliError`] and the exit codes it maps to.

use std::fmt::Write as _;

/// The process exit codes of the command line. Scripts can rely on them.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A runtime error: the database failed or could not be reached, a projection stopped.
    pub const FAILURE: u8 = 1;
    /// A usage error: bad arguments (clap's own code), an unsupported URL, an operation this
    /// binary cannot run (rebuilding a projection it does not embed).
    pub const USAGE: u8 = 2;
    /// Something asked for does not exist: a stream, a projection.
    pub const NOT_FOUND: u8 = 3;
    /// The database has no event store schema, or an older one: run `migrate`.
    pub const SCHEMA: u8 = 4;
}

/// Everything the command line reports as an error: one line on stderr, and an exit code
/// ([`exit_code`](Self::exit_code)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] eventsource::Error),

    /// The stream has no events.
    #[error("stream {stream} does not exist (it has no events)")]
    StreamNotFound {
        /// The stream asked for, as given.
        stream: String,
    },

    /// No projection of that name is known to this binary or has state in the store.
    #[error("no projection named `{name}`{}", known_list(.known))]
    UnknownProjection {
        /// The name asked for.
        name: String,
        /// The names that are known.
        known: Vec<String>,
    },

    /// `rebuild` or `replay` of a projection whose code is not in this binary.
    #[error(
        "projection `{name}` is not part of this binary: `{operation}` runs the projection's own code, so embed the command line in your application (`eventsource_cli::Cli`) and run it from there"
    )]
    NotEmbedded {
        /// The projection.
        name: String,
        /// `rebuild` or `replay`.
        operation: &'static str,
    },

    /// Another process holds the projection's lease: it runs there.
    #[error(
        "projection `{name}` is running in another process (it holds the projection's lease): stop it first"
    )]
    ProjectionBusy {
        /// The projection.
        name: String,
    },

    /// An argument the command line could not use.
    #[error("{0}")]
    Usage(String),

    /// Writing the output failed.
    #[error("cannot write the output")]
    Output(#[from] std::io::Error),
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        " (none is known)".to_owned()
    } else {
        format!(" (known: {})", known.join(", "))
    }
}

impl CliError {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Store(eventsource::Error::SchemaMissing { .. }) => exit::SCHEMA,
            CliError::Store(eventsource::Error::UnsupportedUrl { .. }) => exit::USAGE,
            CliError::Store(eventsource::Error::UnknownProjection { .. }) => exit::NOT_FOUND,
            CliError::Store(_) | CliError::Output(_) | CliError::ProjectionBusy { .. } => {
                exit::FAILURE
            }
            CliError::StreamNotFound { .. } | CliError::UnknownProjection { .. } => exit::NOT_FOUND,
            CliError::NotEmbedded { .. } | CliError::Usage(_) => exit::USAGE,
        }
    }

    /// The error as one line: its message, its sources' after it, and what to do for a missing
    /// schema. `program` names the binary in that advice.
    pub fn one_line(&self, program: &str) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(error) = source {
            let text = error.to_string();
            // Transparent wrappers repeat their source's message.
            if !line.ends_with(&text) {
                let _ = write!(line, ": {text}");
            }
            source = error.source();
        }
        if let CliError::Store(eventsource::Error::SchemaMissing { .. }) = self {
            let _ = write!(line, "; run `{program} migrate` to create it");
        }
        line.replace('\n', " ")
    }
}
