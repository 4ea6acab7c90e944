//! fieldgate: an edge gateway that makes every field-bus device its own XMPP entity.

use fieldgate::{config, gateway};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEFAULT_CONFIG: &str = "/etc/fieldgate/fieldgate.toml";

#[derive(Parser)]
#[command(
    name = "fieldgate",
    version,
    about = "Every field-bus device its own XMPP entity"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file and print a summary.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Export stored samples from the history store (of a running or stopped gateway).
    History {
        /// The configuration file (says where the store is).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The device id.
        #[arg(long)]
        device: String,
        /// One field (default: every field with samples).
        #[arg(long)]
        field: Option<String>,
        /// From this time (RFC 3339, e.g. 2026-11-29T00:00:00Z). Default: the oldest.
        #[arg(long)]
        from: Option<String>,
        /// To this time (RFC 3339). Default: now.
        #[arg(long)]
        to: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: fieldgate::history::export::Format,
    },
    /// Read a CoAP server's /.well-known/core and print a configuration skeleton for
    /// the resources it lists.
    #[cfg(feature = "coap")]
    CoapDiscover {
        /// The server: coap://host[:port].
        address: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                print!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                report_config_error(&e);
                ExitCode::from(2)
            }
        },
        #[cfg(feature = "coap")]
        Command::CoapDiscover { address } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(fieldgate_coap::discover::discover(&address)) {
                Ok(skeleton) => {
                    print!("{skeleton}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::History {
            config,
            device,
            field,
            from,
            to,
            format,
        } => {
            let c = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    report_config_error(&e);
                    return ExitCode::from(2);
                }
            };
            let q = fieldgate::history::export::Query {
                file: c.history.file.clone(),
                device,
                field,
                from,
                to,
                format,
            };
            let stdout = std::io::stdout();
            match fieldgate::history::export::export(&q, &mut stdout.lock()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run { config } => {
            init_tracing();
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    report_config_error(&e);
                    tracing::error!(error = %e, "invalid configuration, not starting");
                    return ExitCode::from(2);
                }
            };
            match run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn report_config_error(e: &config::ConfigError) {
    eprintln!("error: {e}");
    if let Some(snippet) = e.snippet() {
        eprintln!("{snippet}");
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("FIELDGATE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    // Under systemd the journal stamps time itself.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if journal {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn run(cfg: config::Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let sig_shutdown = shutdown.clone();
        let signals = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
                    _ = int.recv() => { tracing::info!("SIGINT received"); break; }
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received: reloading configuration");
                        // A reload already pending covers this one too.
                        let _ = reload_tx.try_send(());
                    }
                }
            }
            sig_shutdown.cancel();
        });
        let controls = gateway::Controls {
            shutdown: shutdown.clone(),
            reload: reload_rx,
        };
        let result = gateway::run(cfg, controls, Box::new(Systemd::new())).await;
        signals.abort();
        result.context("gateway failed")
    })?;
    // Tasks still blocked in I/O must not hold the exit beyond the promised 5 s.
    rt.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

/// sd_notify integration; every call is a no-op outside systemd.
struct Systemd {
    watchdog: Option<Duration>,
}

impl Systemd {
    fn new() -> Self {
        let mut usec = 0;
        let watchdog =
            sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2));
        Systemd { watchdog }
    }
}

impl gateway::Supervisor for Systemd {
    fn ready(&mut self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
    fn watchdog(&mut self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
    }
    fn stopping(&mut self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }
    fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }
    fn status(&mut self, text: &str) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(text)]);
    }
}
