//! The author commands: `new`, `build`, `test`, `check`. The work is in
//! `wasmsched-toolkit`; this module parses nothing and prints everything.

use crate::{Global, EXIT_BAD_INPUT};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmsched::sdk::UnitKind;
use wasmsched_toolkit::{cases, check, compile, scaffold};

/// Unit kinds on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// Passes or rejects each candidate host.
    Filter,
    /// A penalty per candidate host (lower is better).
    Weight,
    /// Migration and power actions for the cluster.
    Balance,
}

impl From<KindArg> for UnitKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Filter => UnitKind::Filter,
            KindArg::Weight => UnitKind::Weight,
            KindArg::Balance => UnitKind::Balance,
        }
    }
}

/// `wasmsched new`.
pub fn new(
    g: &Global,
    name: &str,
    kind: KindArg,
    dir: Option<&Path>,
    sdk: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let sdk = match sdk {
        None => scaffold::SdkSource::Auto,
        Some("embedded") => scaffold::SdkSource::Embedded,
        Some(path) => scaffold::SdkSource::Path(PathBuf::from(path)),
    };
    let made = scaffold::create(&scaffold::NewUnit {
        name: name.to_string(),
        kind: kind.into(),
        dir: dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        sdk,
    })?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&made)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "created {} ({} unit {name:?}): {}",
        made.dir.display(),
        UnitKind::from(kind),
        made.files.join(", ")
    );
    println!(
        "policy-sdk: {} ({})",
        made.sdk.display(),
        match made.sdk_origin {
            "repository" => "the repository this wasmsched was built from",
            "embedded" => "written from the copy this wasmsched embeds",
            _ => "given with --sdk",
        }
    );
    let dir = made.dir.display();
    println!("next:");
    println!("  cd {dir} && cargo test                 # native unit tests");
    println!("  wasmsched build {dir}                  # the wasm module (the first build compiles serde and bincode: about a minute)");
    println!("  wasmsched test MODULE --cases {dir}/cases.toml");
    Ok(ExitCode::SUCCESS)
}

/// `wasmsched build`.
pub fn build(g: &Global, crate_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let crate_dir = crate_dir.unwrap_or(Path::new("."));
    if !g.json {
        eprintln!(
            "building {} for {} (release, tuned for size)",
            crate_dir.display(),
            compile::TARGET
        );
    }
    let built = compile::build(crate_dir, |note| eprintln!("{note}"))?;
    if g.json {
        println!("{}", serde_json::to_string(&built)?);
    } else {
        println!("{} ({} bytes)", built.module.display(), built.bytes);
    }
    Ok(ExitCode::SUCCESS)
}

/// `wasmsched test`: exit 0 when every case passes, 1 when one fails, 2 for bad input.
pub fn test(g: &Global, module: &Path, cases_file: &Path) -> anyhow::Result<ExitCode> {
    let run = || -> wasmsched::Result<cases::TestReport> {
        let cases = cases::CaseFile::read(cases_file)?;
        let runtime =
            crate::runtime(g, false).map_err(|e| wasmsched::Error::Engine(format!("{e:#}")))?;
        let bytes = wasmsched::Runtime::read_module_file(module)?;
        let loaded = runtime.load_module(&module.display().to_string(), &bytes)?;
        cases::run(&runtime, &loaded, &cases)
    };
    let report = match run() {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `wasmsched check`: exit 0 for a module the engine loads, 1 otherwise.
pub fn check(g: &Global, module: &Path) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime(g, false)?;
    let report = check::check_module(&runtime, module);
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.ok {
        print!("{report}");
    } else {
        eprint!("{report}");
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
