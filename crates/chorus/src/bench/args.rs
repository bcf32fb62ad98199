//! The flags of `chorus bench` and the parsers clap cannot derive (`10s`, `250ms`).

pub use chorus_coordinator::infer::Protocol;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `chorus bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Coordinator to drive over REST, `http://host:port` (ignored with --spawn and --floor).
    #[arg(
        long,
        env = "CHORUS_BENCH_TARGET",
        default_value = "http://127.0.0.1:8000"
    )]
    pub target: String,

    /// The same coordinator's gRPC address, `http://host:port`, for `--protocol grpc` (ignored
    /// with --spawn and --floor).
    #[arg(
        long,
        env = "CHORUS_BENCH_GRPC_TARGET",
        default_value = "http://127.0.0.1:8001"
    )]
    pub grpc_target: String,

    /// Protocols to drive, comma-separated: `http` (OIP v2 REST) and/or `grpc` (OIP v2 gRPC, one
    /// HTTP/2 connection per client). Each protocol runs each `--encoding`.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "http")]
    pub protocol: Vec<Protocol>,

    /// Start a local cluster with the same code as `chorus up` (on a free port), benchmark it,
    /// and stop it; reports each process's peak RSS per run.
    #[arg(long)]
    pub spawn: bool,

    /// Run only the in-process floor: the ensemble's member models on ONNX Runtime in this process
    /// (the worker's own loading code), combined in place; no network, no serialisation.
    #[arg(long, conflicts_with_all = ["spawn", "with_floor"])]
    pub floor: bool,

    /// Run the floor too, interleaved with the Chorus runs (same rows and concurrency), so that
    /// both are measured side by side under the same conditions.
    #[arg(long)]
    pub with_floor: bool,

    /// Local cluster file: --spawn starts it; --floor reads its model repository and ensemble specs.
    #[arg(
        long,
        env = "CHORUS_CLUSTER_CONFIG",
        default_value = "config/cluster.toml"
    )]
    pub config: PathBuf,

    /// Worker processes for --spawn (overrides the cluster file's `workers`).
    #[arg(long)]
    pub workers: Option<usize>,

    /// An extra flag for every spawned worker; repeat it for several
    /// (e.g. `--worker-arg=--max-batch-size=32`).
    #[arg(long = "worker-arg", allow_hyphen_values = true, value_name = "FLAG")]
    pub worker_args: Vec<String>,

    /// An extra flag for the spawned coordinator; repeat it for several.
    #[arg(
        long = "coordinator-arg",
        allow_hyphen_values = true,
        value_name = "FLAG"
    )]
    pub coordinator_args: Vec<String>,

    /// Link the spawned coordinator to its workers over TCP only (as `chorus up
    /// --no-local-sockets`), to measure what the workers' Unix sockets change.
    #[arg(long)]
    pub no_local_sockets: bool,

    /// Model or ensemble to call.
    #[arg(long, default_value = "digits_soft")]
    pub model: String,

    /// Closed-loop concurrency levels, comma-separated: each level is one run with that many
    /// clients, each sending its next request as soon as the previous one is answered.
    /// Default 1,8,32,64 when no --rate is given.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(usize))]
    pub concurrency: Vec<usize>,

    /// Open-loop arrival rates in requests/s, comma-separated: requests are issued on a fixed
    /// schedule whatever the answers, and latency runs from the scheduled send time.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
    pub rate: Vec<f64>,

    /// Open loop: most requests outstanding at once; a request due when all are busy is
    /// counted as dropped (overload) and not sent.
    #[arg(long, default_value_t = 256)]
    pub max_outstanding: usize,

    /// Rows per request, comma-separated (e.g. `1,32`): one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = parse_rows)]
    pub rows: Vec<usize>,

    /// REST: send request bodies with this `Content-Encoding` (compressed once before the run)
    /// and accept answers in it (the coordinator compresses answers above 1 KiB): `none`,
    /// `gzip`, `deflate` or `zstd`.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: Compression,

    /// gRPC: HTTP/2 connections the clients share, their calls multiplexed as streams (Triton's
    /// clients share one channel per server, so 1 by default).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub grpc_connections: u16,

    /// Request and response encoding, comma-separated: `json`, or `binary` (the binary tensor
    /// extension, `Inference-Header-Content-Length`, for the request and every output). Over
    /// gRPC, `json` sends typed `contents` and `binary` sends `raw_input_contents` (answers are
    /// always raw).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "json")]
    pub encoding: Vec<Encoding>,

    /// Measured time per run (`10s`, `500ms`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Unmeasured load before each run's measured time.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Idle time between runs, so that one run's backlog does not spill into the next.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub pause: Duration,

    /// A request without an answer by then counts as a timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Threads of the load generator's async runtime. It shares the machine with the cluster:
    /// keep it small.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub client_threads: u16,

    /// Check the answer's labels against the fixture on every Nth response of each client
    /// (0: never). A wrong label counts as an error.
    #[arg(long, default_value_t = 64)]
    pub verify_every: u64,

    /// Input rows and expected labels: the digits fixture (`x`: rows of 64 floats; `models` and
    /// `ensembles`: expected labels by name).
    #[arg(long, default_value = "fixtures/digits/expected.json")]
    pub fixture: PathBuf,

    /// Name of the model's FP32 `[rows, features]` input.
    #[arg(long, default_value = "input")]
    pub input_name: String,

    /// Free text recorded with every run (e.g. `batching-off`).
    #[arg(long, default_value = "")]
    pub label: String,

    /// Also report the peak RSS of these processes (comma-separated PIDs), e.g. an external
    /// cluster's coordinator and workers.
    #[arg(long, value_delimiter = ',')]
    pub watch_pid: Vec<u32>,

    /// Write every run's parameters and results to this file as JSON.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// A REST body's content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Deflate,
    Zstd,
}

impl Compression {
    /// The `Content-Encoding` / `Accept-Encoding` token; `None` for no compression.
    pub fn token(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Deflate => Some("deflate"),
            Compression::Zstd => Some("zstd"),
        }
    }

    /// `body` in this coding (at the default level, as clients compress).
    pub fn compress(self, body: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let level = flate2::Compression::default();
        match self {
            Compression::None => body.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
                e.write_all(body).expect("writing to memory");
                e.finish().expect("writing to memory")
            }
            Compression::Deflate => {
                let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
                e.write_all(body).expect("writing to memory");
                e.finish().expect("writing to memory")
            }
            Compression::Zstd => zstd::encode_all(body, 3).expect("writing to memory"),
        }
    }

    /// `body` decoded from `coding` (a response's `Content-Encoding`); `None` if it does not
    /// decode.
    pub fn decompress(coding: &str, body: &[u8]) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut out = Vec::new();
        match coding {
            "gzip" => flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .ok()?,
            "deflate" => flate2::read::ZlibDecoder::new(body)
                .read_to_end(&mut out)
                .ok()?,
            "zstd" => return zstd::decode_all(body).ok(),
            _ => return None,
        };
        Some(out)
    }
}

/// How request and response tensors travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Tensors as JSON arrays.
    Json,
    /// The binary tensor extension, for the request and the response.
    Binary,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        }
    }
}

/// Parses `10s`, `1.5s`, `250ms`, `500us`, `2m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write e.g. 10s, 500ms or 2m"))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use us, ms, s or m"
            ));
        }
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("`{text}` is out of range"))
}

/// A positive, finite arrival rate in requests/s.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate: give requests/s as a positive number"
        )),
    }
}

/// Rows per request: at least 1.
pub fn parse_rows(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(rows) if rows >= 1 => Ok(rows),
        _ => Err(format!("`{text}` is not a row count: give 1 or more")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "ten", "10 parsecs", "1h", "-1s", "1e999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_and_rows() {
        assert_eq!(parse_rate("2000"), Ok(2000.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-3", "inf", "NaN", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rows("32"), Ok(32));
        assert!(parse_rows("0").is_err());
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.target, "http://127.0.0.1:8000");
        assert!(a.concurrency.is_empty() && a.rate.is_empty());
        assert_eq!(a.rows, vec![1]);
        assert_eq!(a.encoding, vec![Encoding::Json]);
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.warmup, Duration::from_secs(2));
        assert_eq!(a.client_threads, 1);
        assert_eq!(a.model, "digits_soft");
    }

    #[test]
    fn lists_and_repeated_flags() {
        let a = parse(&[
            "--concurrency",
            "1,8,32",
            "--rows=1,32",
            "--encoding=json,binary",
            "--rate",
            "500,2000.5",
            "--duration=1s",
            "--worker-arg=--max-batch-size=32",
            "--worker-arg",
            "--max-queue-delay-us=200",
        ])
        .unwrap();
        assert_eq!(a.concurrency, vec![1, 8, 32]);
        assert_eq!(a.rows, vec![1, 32]);
        assert_eq!(a.encoding, vec![Encoding::Json, Encoding::Binary]);
        assert_eq!(a.rate, vec![500.0, 2000.5]);
        assert_eq!(a.duration, Duration::from_secs(1));
        assert_eq!(
            a.worker_args,
            vec!["--max-batch-size=32", "--max-queue-delay-us=200"]
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["--concurrency", "1,x"][..],
            &["--encoding", "xml"],
            &["--rows", "0"],
            &["--rate", "-1"],
            &["--duration", "forever"],
            &["--client-threads", "0"],
            &["--floor", "--spawn"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }
}
