//! The list of runs one `chorus bench` invocation makes, expanded from its flags.

use super::args::{BenchArgs, Encoding, Protocol};
use serde::Serialize;

/// Concurrency levels when neither `--concurrency` nor `--rate` is given.
pub const DEFAULT_CONCURRENCY: [usize; 4] = [1, 8, 32, 64];

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// The ensemble in this process, on ONNX Runtime directly.
    Floor,
    /// A Chorus coordinator over REST or gRPC.
    Chorus {
        protocol: Protocol,
        encoding: Encoding,
    },
}

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Load {
    /// `concurrency` clients, each sending its next request when the previous one is answered.
    Closed { concurrency: usize },
    /// Requests on a fixed schedule of `rate` per second.
    Open { rate: f64 },
}

/// One run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSpec {
    pub target: Target,
    pub load: Load,
    pub rows: usize,
}

/// Expands the flags into runs. For each row count, each load level: the floor first (when
/// asked), then Chorus in each protocol and encoding, so that a floor figure and the Chorus figures it is
/// compared with are measured minutes apart at most. The floor runs closed-loop only.
pub fn expand(args: &BenchArgs) -> Result<Vec<RunSpec>, String> {
    let mut loads: Vec<Load> = args
        .concurrency
        .iter()
        .map(|&concurrency| Load::Closed { concurrency })
        .collect();
    if args.concurrency.contains(&0) {
        return Err("--concurrency levels must be 1 or more".into());
    }
    if args.concurrency.is_empty() && args.rate.is_empty() {
        loads.extend(
            DEFAULT_CONCURRENCY
                .iter()
                .map(|&concurrency| Load::Closed { concurrency }),
        );
    }
    loads.extend(args.rate.iter().map(|&rate| Load::Open { rate }));
    if args.floor && loads.iter().all(|l| matches!(l, Load::Open { .. })) {
        return Err("the floor runs closed-loop only: give --concurrency with --floor".into());
    }
    if args.max_outstanding == 0 {
        return Err("--max-outstanding must be 1 or more".into());
    }
    if args.encoding.is_empty() || args.rows.is_empty() || args.protocol.is_empty() {
        return Err("give at least one --protocol, --encoding and --rows value".into());
    }
    let floor = args.floor || args.with_floor;
    let chorus = !args.floor;
    let mut runs = Vec::new();
    for &rows in &args.rows {
        for &load in &loads {
            if floor && matches!(load, Load::Closed { .. }) {
                runs.push(RunSpec {
                    target: Target::Floor,
                    load,
                    rows,
                });
            }
            if chorus {
                for &protocol in &args.protocol {
                    runs.extend(args.encoding.iter().map(|&encoding| RunSpec {
                        target: Target::Chorus { protocol, encoding },
                        load,
                        rows,
                    }));
                }
            }
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::args::BenchArgs;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn plan(args: &[&str]) -> Result<Vec<RunSpec>, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        expand(&cli.bench)
    }

    fn closed(concurrency: usize) -> Load {
        Load::Closed { concurrency }
    }

    #[test]
    fn default_is_four_closed_loop_levels_in_json() {
        let runs = plan(&[]).unwrap();
        let loads: Vec<Load> = runs.iter().map(|r| r.load).collect();
        assert_eq!(loads, [closed(1), closed(8), closed(32), closed(64)]);
        assert!(runs.iter().all(|r| r.rows == 1
            && r.target
                == Target::Chorus {
                    protocol: Protocol::Http,
                    encoding: Encoding::Json
                }));
    }

    #[test]
    fn floor_comes_first_and_skips_open_loop() {
        let runs = plan(&[
            "--with-floor",
            "--concurrency=1,8",
            "--rate=100",
            "--encoding=json,binary",
            "--rows=1,32",
        ])
        .unwrap();
        // Per rows value: c=1 floor, json, binary; c=8 floor, json, binary; rate json, binary.
        assert_eq!(runs.len(), 2 * (3 + 3 + 2));
        assert_eq!(runs[0].target, Target::Floor);
        assert_eq!(
            runs[1].target,
            Target::Chorus {
                protocol: Protocol::Http,
                encoding: Encoding::Json
            }
        );
        assert_eq!(runs[6].load, Load::Open { rate: 100.0 });
        assert_eq!(runs[8].rows, 32);
        assert!(
            runs.iter()
                .all(|r| r.target != Target::Floor || matches!(r.load, Load::Closed { .. }))
        );
    }

    #[test]
    fn floor_alone() {
        let runs = plan(&["--floor", "--concurrency=2", "--rows=32"]).unwrap();
        assert_eq!(
            runs,
            [RunSpec {
                target: Target::Floor,
                load: closed(2),
                rows: 32
            }]
        );
        assert!(
            plan(&["--floor", "--rate=10"])
                .unwrap_err()
                .contains("closed-loop")
        );
        assert!(plan(&["--concurrency=0"]).is_err());
        assert!(plan(&["--max-outstanding=0", "--rate=5"]).is_err());
    }
}
