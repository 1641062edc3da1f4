//! `wasmsched`: the command-line front end of the runtime.

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wasmsched::sdk::Vm;
use wasmsched::{
    Cluster, Detail, Format, Migration, MigrationTrigger, Policy, Runtime, ScheduleRequest,
    StartOutcome, WatchOptions,
};

mod author;
mod diff;
mod simulate;
mod size;
mod timeline;

const DEMO_CLUSTER: &str = include_str!("../../examples/demo/cluster.json");
const DEMO_VMS: &str = include_str!("../../examples/demo/vms.json");

/// Longest watch interval (poll, debounce, settle) accepted, in milliseconds: one hour. A
/// longer settle time meant a module never loaded.
const MAX_WATCH_MS: u64 = 3_600_000;

/// Exit code of `diff` when the two policies decided differently (0: identical).
const EXIT_DIFFERENT: u8 = 1;

/// Exit code of `diff` and `test` on bad input (files, policies, the scenario, a case
/// file, a module the engine refuses).
const EXIT_BAD_INPUT: u8 = 2;

/// Exit code when a decision found no host (or a memory hot set is not possible: the host
/// cannot take it, or no set of DIMMs adds up to the reduction).
const EXIT_NO_HOST: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "wasmsched",
    version,
    about = "Scheduling-policy engine with WebAssembly policy units"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// Directory of operator policy modules (*.wasm) to load next to the builtins.
    #[arg(long, global = true, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Do not load the builtin modules.
    #[arg(long, global = true)]
    no_builtins: bool,
    /// Compiled-module cache directory (default: the user's cache dir).
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Disable the compiled-module cache.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Log level filter (e.g. `info`, `wasmsched=debug`); also RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the builtins and schedule a handful of VMs on the sample cluster.
    Demo,
    /// Schedule one VM on a cluster.
    Schedule {
        /// Cluster snapshot (JSON or TOML).
        #[arg(long, value_name = "FILE")]
        cluster: PathBuf,
        /// The VM to place (JSON or TOML).
        #[arg(long, value_name = "FILE")]
        vm: PathBuf,
        /// Cluster policy: a file, or a builtin name (default, none, evenly_distributed,
        /// power_saving). Default: the builtin default policy.
        #[arg(long, value_name = "FILE|NAME")]
        policy: Option<PathBuf>,
        /// Hosts (ids) that must not be chosen.
        #[arg(long, value_name = "HOST", value_delimiter = ',')]
        blacklist: Vec<String>,
        /// Only these hosts (ids) may be chosen.
        #[arg(long, value_name = "HOST", value_delimiter = ',')]
        whitelist: Option<Vec<String>>,
        /// Show how the choice was made: per host every filter's verdict, every weight's
        /// raw penalty, rank, factor and contribution, and how the selector chose.
        #[arg(long)]
        explain: bool,
    },
    /// Choose a destination for a running VM (`--vm`), or for every VM on a host going to
    /// maintenance (`--host`), honouring migration modes.
    Migrate {
        /// Cluster snapshot (JSON or TOML).
        #[arg(long, value_name = "FILE")]
        cluster: PathBuf,
        /// The running VM to move (its id).
        #[arg(
            long,
            value_name = "ID",
            conflicts_with = "host",
            required_unless_present = "host"
        )]
        vm: Option<String>,
        /// Move every VM running on this host (host maintenance).
        #[arg(long, value_name = "ID")]
        host: Option<String>,
        /// Why the VM moves (decides which migration modes may move it); `--host` implies
        /// `host-maintenance`.
        #[arg(long, value_enum, default_value = "user-forced")]
        trigger: TriggerArg,
        /// Cluster policy: a file, or a builtin name (default, none, evenly_distributed,
        /// power_saving). Default: the builtin default policy.
        #[arg(long, value_name = "FILE|NAME")]
        policy: Option<PathBuf>,
    },
    /// Replay lifecycle events (a mass start, VMs coming up or failing, migrations, hosts
    /// going down) on a cluster: every decision and the pending resources after each event.
    Simulate {
        /// Cluster snapshot (JSON or TOML).
        #[arg(long, value_name = "FILE")]
        cluster: PathBuf,
        /// The scenario: `events` and optional extra `vms` (JSON or TOML).
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        /// Cluster policy: a file, or a builtin name (default, none, evenly_distributed,
        /// power_saving). Default: the builtin default policy.
        #[arg(long, value_name = "FILE|NAME")]
        policy: Option<PathBuf>,
        /// Draw the balance cycles (hosts by status, cluster load) as an SVG file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Replay the events of a scenario under two policies and report every decision that
    /// differs, with both explanations. Exit 0 when the decisions are identical, 1 when
    /// they differ, 2 on bad input.
    Diff {
        /// Cluster snapshot (JSON or TOML).
        #[arg(long, value_name = "FILE")]
        cluster: PathBuf,
        /// The scenario, as `simulate` reads it.
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        /// The two policies, A then B: files or builtin names (`--policy A --policy B`).
        #[arg(long, value_name = "FILE|NAME", required = true)]
        policy: Vec<PathBuf>,
    },
    /// Run one balance cycle: the proposed migrations and power actions with their reasons,
    /// and the actions the engine vetoed. Nothing is carried out.
    Balance {
        /// Cluster snapshot (JSON or TOML).
        #[arg(long, value_name = "FILE")]
        cluster: PathBuf,
        /// Cluster policy: a file, or a builtin name (default: power_saving).
        #[arg(long, value_name = "FILE|NAME")]
        policy: Option<PathBuf>,
    },
    /// Plan a memory hot plug or hot unplug of a running VM: the DIMM devices with their
    /// libvirt XML and the pending memory change on its host.
    Memory {
        /// Cluster snapshot (JSON or TOML).
        #[arg(long, value_name = "FILE")]
        cluster: PathBuf,
        /// Id of the running VM.
        #[arg(long, value_name = "ID")]
        vm: String,
        /// New memory size: MiB, or with a binary suffix M, G or T (4096, 4096M, 4G).
        #[arg(long, value_name = "SIZE")]
        to: String,
        /// Cluster policy whose filters check the host: a file, or a builtin name (default,
        /// none, evenly_distributed, power_saving). Default: the builtin default policy.
        #[arg(long, value_name = "FILE|NAME")]
        policy: Option<PathBuf>,
    },
    /// List the loaded units with kind, module, version and parameters.
    Units,
    /// Whether the engine would load a module (exit 0) or not (exit 1, with the reason):
    /// ABI version, units, parameters with types and defaults, imports, size, and the
    /// load-time trial over generated hosts.
    Check {
        /// The module file.
        module: PathBuf,
    },
    /// Create a unit crate (`DIR/NAME`) that builds and passes its own tests at once: a
    /// unit with a parameter, native tests, and table cases for `wasmsched test`.
    New {
        /// Crate and unit name: lower-case letters, digits, '-' and '_'.
        name: String,
        /// The unit's kind.
        #[arg(long, value_enum)]
        kind: author::KindArg,
        /// Directory to create the crate in (default: the current directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Where policy-sdk comes from: `embedded` (written from the copy in this binary
        /// to the user's data directory) or a policy-sdk directory. Default: the
        /// repository this binary was built from while it exists, else `embedded`.
        #[arg(long, value_name = "embedded|DIR")]
        sdk: Option<String>,
    },
    /// Compile a unit crate to a size-optimized wasm module (installing the
    /// wasm32-unknown-unknown target if missing); prints the module's path and size.
    Build {
        /// The unit crate (default: the current directory).
        #[arg(value_name = "CRATE_DIR")]
        crate_dir: Option<PathBuf>,
    },
    /// Run table cases through the real runtime: exit 0 when every case passes, 1 with
    /// the differences (expected vs got, per host) when one fails, 2 for bad input.
    Test {
        /// The module file.
        module: PathBuf,
        /// The case file (TOML or JSON).
        #[arg(long, value_name = "FILE")]
        cases: PathBuf,
    },
    /// Watch the policy directory (`--policies DIR`) and hot-reload modules as they are
    /// added, replaced or removed, logging every reload and rejection. Runs until
    /// interrupted (Ctrl-C).
    Watch {
        /// Poll the directory at this interval (milliseconds) instead of using native
        /// file events (for network filesystems).
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=MAX_WATCH_MS))]
        poll_ms: Option<u64>,
        /// Quiet time after the last event before re-scanning (milliseconds).
        #[arg(long, value_name = "MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=MAX_WATCH_MS))]
        debounce_ms: u64,
        /// How long a written file must stay unchanged before it is loaded (milliseconds).
        #[arg(long, value_name = "MS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=MAX_WATCH_MS))]
        settle_ms: u64,
        /// Stop after this many seconds (for scripts and tests).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
        exit_after: Option<u64>,
    },
    /// Serve scheduling decisions over HTTP (see the README's "Service" section). The
    /// policy directory (`--policies DIR`) is watched and hot-reloaded while serving;
    /// pending reservations are durable under `--data`. Runs until SIGINT/SIGTERM.
    Serve {
        /// Address to listen on; port 0 picks a free port. Beyond loopback a token is
        /// required.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Directory of the durable state (default: the user's data directory).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// File whose first line is the bearer token every request must carry.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Largest request body, bytes.
        #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
        body_limit: usize,
        /// Longest a request may take, milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 30_000)]
        timeout_ms: u64,
        /// Keep the state in PostgreSQL (`postgres://user:pass@host:port/db`) shared by
        /// several replicas, instead of the embedded store under --data (see
        /// docs/replicas.md).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// With --store: this replica's id (default: host name, process id, start time).
        #[arg(long, value_name = "ID", requires = "store")]
        replica_id: Option<String>,
        /// With --store: the base URL the other replicas reach this one at (default:
        /// http:// and the bound address).
        #[arg(long, value_name = "URL", requires = "store")]
        advertise: Option<String>,
        /// With --store: how long a cluster lease lasts without renewal; a replica that
        /// dies is replaced within about 4/3 of it.
        #[arg(long, value_name = "MS", default_value_t = 3_000)]
        lease_ms: u64,
    },
    /// Write the builtin modules to a directory.
    Builtins {
        /// Target directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Migration triggers on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TriggerArg {
    /// Balancing or host trouble: only migratable VMs move.
    Automatic,
    /// A user asked: migratable and manual-only VMs move.
    UserForced,
    /// The host goes to maintenance: migratable and manual-only VMs move.
    HostMaintenance,
}

impl From<TriggerArg> for MigrationTrigger {
    fn from(t: TriggerArg) -> Self {
        match t {
            TriggerArg::Automatic => MigrationTrigger::Automatic,
            TriggerArg::UserForced => MigrationTrigger::UserForced,
            TriggerArg::HostMaintenance => MigrationTrigger::HostMaintenance,
        }
    }
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    // `watch` exists to log reloads (info level); other commands only warn by default.
    let default = if matches!(cli.command, Command::Watch { .. } | Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.global.log.as_deref(), default);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `wasmsched units | head -1`: when the reader closes the pipe, end like other Unix tools
/// (the default action of SIGPIPE) instead of panicking in `println!` with exit 101. Rust
/// ignores SIGPIPE at start-up; this puts the default back.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any other thread exists; SIG_DFL is a
    // valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(filter: Option<&str>, default: &str) {
    use std::io::IsTerminal;
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colours only for a terminal, never into a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Reads the VM file of `schedule`, checked like every request, with errors that name the
/// file as well as the VM and the field.
fn read_vm(path: &Path) -> anyhow::Result<Vm> {
    let vm: Vm = wasmsched::read_document(path)?;
    if let Err(e) = ScheduleRequest::new(vm.clone()).validate() {
        anyhow::bail!("{}: {e}", path.display());
    }
    Ok(vm)
}

/// Host ids given on the command line must be hosts of the cluster.
fn known_hosts(cluster: &Cluster, flag: &str, ids: &[String]) -> anyhow::Result<()> {
    if let Some(unknown) = ids.iter().find(|id| cluster.host_index(id).is_none()) {
        anyhow::bail!("{flag}: unknown host {unknown:?} (not in the cluster)");
    }
    Ok(())
}

fn runtime(global: &Global, builtins: bool) -> anyhow::Result<Runtime> {
    let mut builder = Runtime::builder().builtins(builtins && !global.no_builtins);
    if global.no_cache {
        builder = builder.cache_dir(None);
    } else if let Some(dir) = &global.cache_dir {
        builder = builder.cache_dir(Some(dir.clone()));
    }
    let runtime = builder.build()?;
    if let Some(dir) = &global.policies {
        let report = runtime.sync_dir(dir)?;
        for error in &report.rejected {
            eprintln!("warning: skipped {error}");
        }
    }
    Ok(runtime)
}

/// A policy file, or (when no such file exists) a builtin policy by name.
fn policy(runtime: &Runtime, path: Option<&Path>) -> anyhow::Result<Policy> {
    Ok(match path {
        Some(path) if !path.exists() => {
            let name = path.to_string_lossy();
            if Policy::builtin_names().any(|n| n == name) {
                Policy::builtin(runtime, &name)?
            } else {
                Policy::from_file(runtime, path)?
            }
        }
        Some(path) => Policy::from_file(runtime, path)?,
        None => Policy::builtin_default(runtime)?,
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Demo => demo(g),
        Command::Schedule {
            cluster,
            vm,
            policy: policy_file,
            blacklist,
            whitelist,
            explain,
        } => {
            let runtime = runtime(g, true)?;
            let policy = policy(&runtime, policy_file.as_deref())?;
            let cluster = Cluster::from_file(cluster)?;
            let vm = read_vm(vm)?;
            known_hosts(&cluster, "--blacklist", blacklist)?;
            let mut request = ScheduleRequest::new(vm).blacklist(blacklist.iter().cloned());
            if let Some(w) = whitelist {
                known_hosts(&cluster, "--whitelist", w)?;
                request = request.whitelist(w.iter().cloned());
            }
            let decision = match policy.schedule_or_wake(&cluster, &request)? {
                StartOutcome::Scheduled(decision) => decision,
                StartOutcome::WakeUp(wake) => {
                    if g.json {
                        println!("{}", serde_json::to_string_pretty(&wake)?);
                    } else {
                        println!("{wake}");
                    }
                    return Ok(ExitCode::from(EXIT_NO_HOST));
                }
            };
            match (g.json, explain) {
                (true, false) => println!("{}", serde_json::to_string_pretty(&decision)?),
                (true, true) => {
                    let mut value = serde_json::to_value(&decision)?;
                    value["explanation"] = serde_json::json!({
                        "rule": decision.selector.rule(),
                        "choice": decision.explain().choice(),
                        "text": decision.explain().to_string(),
                    });
                    println!("{}", serde_json::to_string_pretty(&value)?);
                }
                (false, false) => print!("{decision}"),
                (false, true) => print!("{}", decision.explain()),
            }
            Ok(if decision.chosen.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NO_HOST)
            })
        }
        Command::Migrate {
            cluster,
            vm,
            host,
            trigger,
            policy: policy_file,
        } => {
            let runtime = runtime(g, true)?;
            let policy = policy(&runtime, policy_file.as_deref())?;
            let cluster = Cluster::from_file(cluster)?;
            let migrations = match (vm, host) {
                (Some(vm), _) => vec![policy.migrate(&cluster, vm, (*trigger).into())?],
                (None, Some(host)) => policy.evacuate_host(&cluster, host)?,
                (None, None) => unreachable!("clap requires --vm or --host"),
            };
            if g.json {
                println!("{}", serde_json::to_string_pretty(&migrations)?);
            } else {
                for m in &migrations {
                    print!("{m}");
                }
            }
            let stuck = migrations.iter().any(|m| match m {
                Migration::NotAllowed { .. } => true,
                Migration::Scheduled { decision, .. } => decision.chosen.is_none(),
            });
            Ok(if stuck {
                ExitCode::from(EXIT_NO_HOST)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Simulate {
            cluster,
            events,
            policy: policy_file,
            svg,
        } => simulate(g, cluster, events, policy_file.as_deref(), svg.as_deref()),
        Command::Diff {
            cluster,
            events,
            policy: policies,
        } => Ok(match diff(g, cluster, events, policies) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_BAD_INPUT)
            }
        }),
        Command::Memory {
            cluster,
            vm,
            to,
            policy: policy_file,
        } => {
            // Check the inputs before loading any module.
            let new_mb = size::parse_size_mb(to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
            let cluster = Cluster::from_file(cluster)?;
            let runtime = runtime(g, true)?;
            let policy = policy(&runtime, policy_file.as_deref())?;
            let plan = policy.hot_set_memory(&cluster, vm, new_mb)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{plan}");
            }
            Ok(if plan.is_possible() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NO_HOST)
            })
        }
        Command::Balance {
            cluster,
            policy: policy_file,
        } => {
            let cluster = Cluster::from_file(cluster)?;
            let runtime = runtime(g, true)?;
            let policy = match policy_file {
                Some(p) => policy(&runtime, Some(p))?,
                None => Policy::builtin(&runtime, "power_saving")?,
            };
            let plan = policy.balance(&cluster)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!(
                    "balance: policy {:?}, epoch {}: {} action(s), {} refused",
                    plan.policy,
                    plan.epoch,
                    plan.actions.len(),
                    plan.refused.len()
                );
                for action in &plan.actions {
                    println!("  {}", simulate::describe(action));
                }
                for refused in &plan.refused {
                    println!(
                        "  refused: {} ({})",
                        simulate::describe(&refused.action),
                        refused.why
                    );
                }
                if let Some(failure) = &plan.unit_failure {
                    println!(
                        "  unit {} failed and was skipped: {}",
                        failure.unit, failure.error
                    );
                }
                for note in &plan.notes {
                    println!("  why: {note}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Units => {
            let runtime = runtime(g, true)?;
            let units = runtime.units();
            let status = runtime.status();
            if g.json {
                #[derive(serde::Serialize)]
                struct Report<'a> {
                    units: &'a [wasmsched::UnitInfo],
                    status: &'a wasmsched::RuntimeStatus,
                }
                let report = Report {
                    units: &units,
                    status: &status,
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_modules(&status);
                println!();
                for u in &units {
                    println!(
                        "{:<20} {:<8} {} {} ({})",
                        u.name, u.kind, u.module, u.version, u.file
                    );
                    if !u.description.is_empty() {
                        println!("    {}", u.description);
                    }
                    for p in &u.params {
                        println!(
                            "    - {} = {} ({}): {}",
                            p.name, p.default, p.ty, p.description
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { module } => author::check(g, module),
        Command::New {
            name,
            kind,
            dir,
            sdk,
        } => author::new(g, name, *kind, dir.as_deref(), sdk.as_deref()),
        Command::Build { crate_dir } => author::build(g, crate_dir.as_deref()),
        Command::Test { module, cases } => author::test(g, module, cases),
        Command::Serve {
            listen,
            data,
            token_file,
            body_limit,
            timeout_ms,
            store,
            replica_id,
            advertise,
            lease_ms,
        } => {
            // The policy directory is watched by the server, not loaded once here.
            let mut builder = Runtime::builder().builtins(!g.no_builtins);
            if g.no_cache {
                builder = builder.cache_dir(None);
            } else if let Some(dir) = &g.cache_dir {
                builder = builder.cache_dir(Some(dir.clone()));
            }
            let mut options = wasmsched_server::ServeOptions::new();
            options.listen = listen.clone();
            if let Some(data) = data {
                options.data = data.clone();
            }
            options.policies = g.policies.clone();
            options.token_file = token_file.clone();
            options.body_limit = *body_limit;
            options.timeout = std::time::Duration::from_millis(*timeout_ms);
            options.store = store.clone();
            options.replica_id = replica_id.clone();
            options.advertise = advertise.clone();
            options.lease = std::time::Duration::from_millis(*lease_ms);
            wasmsched_server::serve(options, builder.build()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch {
            poll_ms,
            debounce_ms,
            settle_ms,
            exit_after,
        } => watch(g, *poll_ms, *debounce_ms, *settle_ms, *exit_after),
        Command::Builtins { out } => {
            if out.exists() && !out.is_dir() {
                anyhow::bail!("--out {}: exists and is not a directory", out.display());
            }
            std::fs::create_dir_all(out)
                .map_err(|e| anyhow::anyhow!("--out {}: cannot create: {e}", out.display()))?;
            for (file, bytes) in Runtime::builtin_modules() {
                let path = out.join(file);
                std::fs::write(&path, bytes)
                    .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn simulate(
    g: &Global,
    cluster: &Path,
    events: &Path,
    policy_file: Option<&Path>,
    svg: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    // Check the inputs before loading any module.
    let cluster_label = cluster.display().to_string();
    let cluster = Cluster::from_file(cluster)?;
    let scenario = simulate::Scenario::from_file(events)?;
    simulate::validate(
        &scenario,
        &cluster.snapshot(),
        &events.display().to_string(),
    )?;
    let runtime = runtime(g, true)?;
    let policy = policy(&runtime, policy_file)?;
    // Text shows each decision's summary line; JSON every host's outcome.
    let detail = if g.json {
        Detail::Full
    } else {
        Detail::Summary
    };
    let outcomes = simulate::run(&policy, &cluster, &scenario, detail)?;
    let summary = simulate::Summary::of(&outcomes, &cluster);
    if let Some(svg) = svg {
        let samples = simulate::samples(&outcomes);
        if samples.is_empty() {
            anyhow::bail!(
                "--svg {}: the scenario has no balance event, so there is nothing to draw",
                svg.display()
            );
        }
        let title = format!(
            "wasmsched simulate: policy {} on {} ({} balance cycles)",
            policy.name(),
            cluster_label,
            samples.len()
        );
        std::fs::write(svg, timeline::svg(&samples, &title))
            .map_err(|e| anyhow::anyhow!("--svg {}: cannot write: {e}", svg.display()))?;
        if !g.json {
            eprintln!("wrote {}", svg.display());
        }
    }
    // What the policy's shadow units would have changed over the whole run.
    let shadow = policy.shadow_status();
    let shadow = (!shadow.units.is_empty()).then_some(shadow);
    if g.json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            outcomes: &'a [simulate::EventOutcome],
            summary: &'a simulate::Summary,
            #[serde(skip_serializing_if = "Option::is_none")]
            shadow: Option<&'a wasmsched::shadow::ShadowStatus>,
        }
        let report = Report {
            outcomes: &outcomes,
            summary: &summary,
            shadow: shadow.as_ref(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for outcome in &outcomes {
            print!("{outcome}");
        }
        println!();
        print!("{summary}");
        if let Some(shadow) = &shadow {
            println!();
            print!("{shadow}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `diff`: exit 0 when both policies decide alike, 1 when they differ; errors are the
/// caller's exit 2.
fn diff(
    g: &Global,
    cluster: &Path,
    events: &Path,
    policies: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let [a, b] = policies else {
        anyhow::bail!(
            "--policy: give exactly two policies (--policy A --policy B), got {}",
            policies.len()
        );
    };
    // Check the inputs before loading any module.
    let first = Cluster::from_file(cluster)?;
    let scenario = simulate::Scenario::from_file(events)?;
    simulate::validate(&scenario, &first.snapshot(), &events.display().to_string())?;
    let runtime = runtime(g, true)?;
    let policy_a = policy(&runtime, Some(a))?;
    let policy_b = policy(&runtime, Some(b))?;
    let report = diff::compare(
        [&policy_a, &policy_b],
        || Cluster::from_file(cluster),
        &scenario,
    )?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFFERENT)
    })
}

fn demo(g: &Global) -> anyhow::Result<ExitCode> {
    let runtime = runtime(g, true)?;
    let policy = Policy::builtin_default(&runtime)?;
    let snapshot =
        wasmsched::parse_document(DEMO_CLUSTER, Format::Json, "examples/demo/cluster.json")?;
    let cluster = Cluster::new(snapshot, "examples/demo/cluster.json")?;
    let vms: Vec<Vm> = wasmsched::parse_document(DEMO_VMS, Format::Json, "examples/demo/vms.json")?;
    let mut decisions = Vec::new();
    if !g.json {
        println!(
            "wasmsched demo: policy {:?} ({}), {} hosts, units: {}\n",
            policy.name(),
            policy.description(),
            cluster.snapshot().hosts.len(),
            runtime
                .units()
                .iter()
                .map(|u| format!("{} ({})", u.name, u.kind))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for vm in vms {
        let decision = policy.schedule(&cluster, &ScheduleRequest::new(vm))?;
        if !g.json {
            println!("{decision}");
        }
        decisions.push(decision);
    }
    if g.json {
        println!("{}", serde_json::to_string_pretty(&decisions)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_modules(status: &wasmsched::RuntimeStatus) {
    println!("modules:");
    for m in &status.modules {
        println!(
            "  {}  {} {}  sha256 {}  loaded {}",
            m.file,
            m.module,
            m.version,
            &m.hash[..m.hash.len().min(16)],
            utc(m.loaded_at_unix_ms)
        );
        if m.breaker.open || m.breaker.trips > 0 {
            println!(
                "    circuit breaker: {} ({} trips, {} faults in a row{})",
                if m.breaker.open { "OPEN" } else { "closed" },
                m.breaker.trips,
                m.breaker.consecutive_failures,
                m.breaker
                    .last_fault
                    .as_deref()
                    .map(|f| format!("; last: {f}"))
                    .unwrap_or_default()
            );
        }
        if let Some(e) = &m.last_error {
            println!(
                "    last error ({}): {} (this version keeps serving)",
                utc(e.at_unix_ms),
                e.reason
            );
        }
    }
    for p in &status.problems {
        match (&p.error, &p.serving_hash) {
            // Listed under the module that keeps serving.
            (Some(_), Some(_)) => {}
            (Some(e), None) => println!(
                "  {}  REJECTED ({}): {}",
                p.file,
                utc(e.at_unix_ms),
                e.reason
            ),
            (None, _) => println!("  {}  still being written", p.file),
        }
    }
}

/// `2026-01-31T12:34:56Z` from milliseconds since the Unix epoch (UTC, proleptic
/// Gregorian).
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn watch(
    g: &Global,
    poll_ms: Option<u64>,
    debounce_ms: u64,
    settle_ms: u64,
    exit_after: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let Some(dir) = &g.policies else {
        anyhow::bail!("watch needs --policies DIR");
    };
    let mut builder = Runtime::builder().builtins(!g.no_builtins);
    if g.no_cache {
        builder = builder.cache_dir(None);
    } else if let Some(cache) = &g.cache_dir {
        builder = builder.cache_dir(Some(cache.clone()));
    }
    let runtime = builder.build()?;
    let mut options = match poll_ms {
        Some(ms) => WatchOptions::polling(Duration::from_millis(ms.max(1))),
        None => WatchOptions::default(),
    };
    options.debounce = Duration::from_millis(debounce_ms);
    options.settle = Duration::from_millis(settle_ms);
    let first = runtime.watch(dir, options)?;
    // With --json, standard output carries the JSON document alone; the start line goes to
    // the log (standard error).
    let started_line = format!(
        "watching {} ({}): {} modules loaded, {} rejected, {} still being written",
        dir.display(),
        if poll_ms.is_some() {
            "polling"
        } else {
            "native events"
        },
        first.loaded.len(),
        first.rejected.len(),
        first.pending.len()
    );
    if g.json {
        eprintln!("{started_line}");
    } else {
        println!("{started_line}");
    }
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if exit_after.is_some_and(|secs| started.elapsed() >= Duration::from_secs(secs)) {
            break;
        }
    }
    runtime.stop_watching();
    if g.json {
        println!("{}", serde_json::to_string_pretty(&runtime.status())?);
    } else {
        print_modules(&runtime.status());
    }
    Ok(ExitCode::SUCCESS)
}
