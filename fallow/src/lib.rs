//! The `fallow` command: one binary for coordinators, workers and the people who submit
//! projects and watch them.
//!
//! # Layout
//! - [`cli`]: the clap command line (a contract; tests and scripts drive it).
//! - `client`: the CLI's gRPC boundary (the only module here that touches `proto`).
//! - `commands`: one function per subcommand.
//! - `demo`: the bundled Mandelbrot run.
//! - `mosaic`: assembles Mandelbrot tiles into one PNG.
//! - `new`: `fallow new`, project templates (Rust, C) in `templates/`.
//! - `run`: `fallow run`, one unit in the worker's sandbox on this machine.

#![forbid(unsafe_code)]

pub mod cli;
mod client;
mod commands;
mod demo;
pub mod mosaic;
pub mod new;
mod run;

use cli::{Cli, Command};
use protocol::control::Action;

/// Logs go to stderr; `RUST_LOG` overrides. Long-running services log at info, client
/// commands and the demo only warnings so their own output stays readable.
pub fn logging(command: &Command) {
    let default = match command {
        Command::Coordinator { .. } | Command::Worker { action: None, .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // How the CLI's own connections trust a coordinator (workers add their data dir).
    let trust = worker::tls::Trust {
        known: None,
        allow_plaintext: cli.insecure_plaintext,
    };
    match cli.command {
        Command::Coordinator {
            action: Some(action),
            ..
        } => commands::coordinator_action(action).await,
        Command::Coordinator {
            action: None,
            listen,
            data,
            database,
            advertise,
            lease_seconds,
            allow_same_network,
            worker_requests_per_second,
            registrations_per_minute,
            max_connections_per_address,
            idle_timeout_seconds,
            require_enrollment,
            tls,
            tls_cert,
            tls_key,
            start_afresh,
            fault,
        } => {
            let tls = commands::ServeTls {
                force: tls,
                cert: tls_cert.zip(tls_key),
                insecure_plaintext: cli.insecure_plaintext,
            };
            let config = coordinator::CoordinatorConfig {
                data_dir: data,
                database,
                lease: std::time::Duration::from_secs(lease_seconds),
                distinct_subnets: !allow_same_network,
                worker_requests_per_second,
                registrations_per_minute,
                max_connections_per_address,
                idle_timeout: std::time::Duration::from_secs(idle_timeout_seconds),
                require_enrollment,
                start_afresh,
                tamper_inputs: matches!(fault, Some(cli::CoordinatorFaultArg::TamperInput)),
                ..Default::default()
            };
            commands::coordinator(listen, tls, advertise, config).await
        }
        Command::Worker {
            action: Some(action),
            ..
        } => commands::worker_action(action).await,
        Command::Worker {
            action: None,
            coordinator,
            attach,
            prefetch,
            data,
            cores,
            name,
            account,
            team,
            peer_listen,
            peer_advertise,
            no_inbound,
            drain_seconds,
            checkpoint_seconds,
            enroll_token,
            metrics,
            submitter_keys,
            allow_unsigned_projects,
            fault,
            dedicated,
            prefs,
        } => {
            let attach = attach
                .iter()
                .map(|a| worker::Attach::parse(a))
                .collect::<Result<Vec<_>, _>>()?;
            let mut config = worker::WorkerConfig {
                coordinator,
                attach,
                prefetch,
                data_dir: data,
                account,
                team,
                inbound: !no_inbound,
                peer_listen,
                peer_advertise,
                drain: std::time::Duration::from_secs(drain_seconds),
                checkpoint_every: std::time::Duration::from_secs(checkpoint_seconds),
                fault: fault.map(|f| match f {
                    cli::FaultArg::CorruptOutput => worker::Fault::CorruptOutput,
                    cli::FaultArg::LocalFailureOnce => worker::Fault::LocalFailureOnce,
                }),
                metrics,
                prefs: if dedicated {
                    let mut map = worker::prefs::dedicated();
                    map.extend(prefs.to_map());
                    map
                } else {
                    prefs.to_map()
                },
                insecure_plaintext: cli.insecure_plaintext,
                enroll_token,
                submitters: submitter_keys,
                allow_unsigned: allow_unsigned_projects,
                ..Default::default()
            };
            if let Some(cores) = cores {
                config.cores = cores;
            }
            config.name = name.unwrap_or_else(commands::host_name);
            commands::worker(config).await
        }
        Command::Submit {
            manifest,
            coordinator,
            token,
            key,
            once,
        } => commands::submit(&manifest, &coordinator, &trust, token, key, once).await,
        Command::Key { key } => commands::key(key),
        Command::Cancel(c) => commands::control(&c, &trust, Action::Cancel).await,
        Command::Pause(c) => commands::control(&c, &trust, Action::Pause).await,
        Command::Resume(c) => commands::control(&c, &trust, Action::Resume).await,
        Command::Retry(c) => commands::control(&c, &trust, Action::Retry).await,
        Command::Reduce(c) => commands::control(&c, &trust, Action::Reduce).await,
        Command::Extend { control, manifest } => {
            commands::extend(&control, &trust, &manifest).await
        }
        Command::New { name, lang } => {
            for file in new::create(&name, lang)? {
                println!("{}", file.display());
            }
            eprintln!(
                "next: cd {} && ./build.sh && fallow run {}.wasm --input inputs/… --manifest fallow.toml",
                name.display(),
                name.file_name()
                    .map_or_else(Default::default, |n| n.to_string_lossy())
            );
            Ok(())
        }
        Command::Run {
            module,
            input,
            name,
            manifest,
        } => {
            let options = run::Options {
                module,
                input,
                name,
                manifest,
            };
            // Guest code blocks its thread: keep it off the async runtime's workers.
            tokio::task::spawn_blocking(move || run::run(options)).await?
        }
        Command::Token { action, data } => commands::token(&data, action),
        Command::Status {
            project,
            coordinator,
            wait,
            json,
        } => commands::status(&coordinator, &trust, project, wait, json).await,
        Command::Results {
            project,
            out,
            format,
            coordinator,
            force,
            follow,
        } => {
            commands::results(
                &coordinator,
                &trust,
                project,
                out.as_deref(),
                format,
                force,
                follow,
            )
            .await
        }
        Command::Accounts { coordinator, json } => {
            commands::accounts(&coordinator, &trust, json).await
        }
        Command::Demo {
            workers,
            out,
            width,
            liar,
            dashboard,
            keep,
        } => {
            demo::run(demo::Options {
                workers,
                out,
                width,
                liar,
                listen: dashboard,
                keep,
            })
            .await
        }
    }
}

/// Resolves when the process gets Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
