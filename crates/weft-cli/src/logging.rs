//! Where `weft` logs: stderr (with the rank in front of every line of a job's worker) and,
//! for `weft train`, the rank's log file in the run directory.

use std::io::IsTerminal;

/// Logs to stderr (ranks other than 0 of a job: warnings and errors only, prefixed with the
/// rank) and, when given, to `file` in full. Returns why the file could not be opened.
pub fn init_logging(file: Option<&std::path::Path>, rank: Option<usize>) -> Option<String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
            .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let stderr_filter = match rank {
        Some(r) if r > 0 && std::env::var_os("WEFT_LOG").is_none() => {
            tracing_subscriber::EnvFilter::new("warn")
        }
        _ => filter(),
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let stderr = match rank {
        Some(r) => stderr
            .event_format(
                tracing_subscriber::fmt::format()
                    .with_target(false)
                    .with_thread_names(false),
            )
            .map_event_format(move |f| RankPrefix { rank: r, inner: f })
            .with_filter(stderr_filter)
            .boxed(),
        None => stderr.with_filter(stderr_filter).boxed(),
    };
    let mut problem = None;
    let file_layer = file.and_then(|path| {
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            });
        match opened {
            Ok(f) => Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_target(false)
                    .with_filter(filter()),
            ),
            Err(e) => {
                problem = Some(format!("{}: {e}", path.display()));
                None
            }
        }
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .init();
    problem
}

/// `[rank N] ` before every stderr line of a job's worker.
struct RankPrefix<F> {
    rank: usize,
    inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for RankPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "[rank {}] ", self.rank)?;
        self.inner.format_event(ctx, writer, event)
    }
}
