//! The instance threads around the batcher: queueing, overload, skipping, batched runs and their
//! fallbacks, with stand-in runners (the batching rules themselves are tested in `batch`).

use super::*;
use std::sync::mpsc;

/// Echoes its inputs back (so each answer shows whose rows it holds), recording the rows of
/// every run and, when gated, announcing each run and waiting for a permit first.
struct Echo {
    gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    runs: Arc<Mutex<Vec<usize>>>,
}

/// The test's side of a gated runner.
struct Gate {
    permits: mpsc::Sender<()>,
    started: mpsc::Receiver<()>,
}

impl Gate {
    /// Waits until a run has started (and holds the instance).
    fn wait_started(&self) {
        self.started
            .recv_timeout(Duration::from_secs(5))
            .expect("a run starts");
    }

    fn release(&self, runs: usize) {
        for _ in 0..runs {
            self.permits.send(()).unwrap();
        }
    }
}

impl Echo {
    fn new() -> (Self, Arc<Mutex<Vec<usize>>>) {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let echo = Echo {
            gate: None,
            runs: Arc::clone(&runs),
        };
        (echo, runs)
    }

    fn gated() -> (Self, Gate, Arc<Mutex<Vec<usize>>>) {
        let (permits, gate) = mpsc::channel();
        let (announce, started) = mpsc::channel();
        let (echo, runs) = Echo::new();
        (
            Echo {
                gate: Some((announce, gate)),
                ..echo
            },
            Gate { permits, started },
            runs,
        )
    }
}

impl Runner for Echo {
    fn run(&mut self, inputs: &[Tensor], _: &[String]) -> JobResult {
        if let Some((announce, gate)) = &self.gate {
            let _ = announce.send(());
            let _ = gate.recv();
        }
        self.runs
            .lock()
            .unwrap()
            .push(rows::rows_of(&inputs[0]).unwrap_or(1));
        Ok(inputs.to_vec())
    }
}

/// Answers a fixed one-element tensor whatever the batch: not batch-major.
struct Summary {
    runs: Arc<Mutex<Vec<usize>>>,
}

impl Runner for Summary {
    fn run(&mut self, inputs: &[Tensor], _: &[String]) -> JobResult {
        self.runs.lock().unwrap().push(inputs[0].shape[0] as usize);
        Ok(vec![Tensor::from_values("total", vec![1], &[7.0f32])])
    }
}

struct Panics;

impl Runner for Panics {
    fn run(&mut self, _: &[Tensor], _: &[String]) -> JobResult {
        panic!("boom")
    }
}

/// A job of `rows` rows of `x` (values `first`, `first + 1`, ...) and, when `with_y`, an
/// integer input `y` of the same rows.
fn job_of(
    rows: usize,
    first: f32,
    with_y: bool,
    outputs: &[&str],
    deadline: Instant,
) -> (Job, oneshot::Receiver<JobResult>) {
    let (reply, rx) = oneshot::channel();
    let values: Vec<f32> = (0..rows * 2).map(|i| first + i as f32).collect();
    let mut inputs = vec![Tensor::from_values("x", vec![rows as i64, 2], &values)];
    if with_y {
        let ys: Vec<i64> = (0..rows as i64).collect();
        inputs.push(Tensor::from_values("y", vec![rows as i64], &ys));
    }
    let outputs = outputs.iter().map(|s| s.to_string()).collect();
    (Job::new(inputs, outputs, deadline, reply), rx)
}

fn job(deadline: Instant) -> (Job, oneshot::Receiver<JobResult>) {
    job_of(1, 1.0, false, &[], deadline)
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn batching(max: usize) -> PoolSettings {
    PoolSettings {
        capacity: 64,
        batching: BatchPolicy {
            max_batch_size: max,
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: vec![],
        },
        metrics: ModelMetrics::detached(),
        inline_max_run: Duration::ZERO,
    }
}

fn start(runner: impl Runner, settings: PoolSettings) -> InstancePool {
    InstancePool::start_with("m v1".into(), "m-1", vec![Box::new(runner)], settings).unwrap()
}

#[test]
fn jobs_run_and_answer() {
    let (echo, runs) = Echo::new();
    let pool = InstancePool::start("m v1".into(), "m-1", vec![Box::new(echo)], 4).unwrap();
    let (j, rx) = job(later());
    pool.submit(j).unwrap();
    let out = rx.blocking_recv().unwrap().unwrap();
    assert_eq!(out[0].name, "x");
    assert_eq!(pool.instances(), 1);
    assert!(!pool.batching().enabled());
    assert_eq!(*runs.lock().unwrap(), [1]);
}

#[test]
fn expired_jobs_are_answered_without_running() {
    let pool = InstancePool::start("m v1".into(), "m-1", vec![Box::new(Panics)], 4).unwrap();
    let (j, rx) = job(Instant::now());
    pool.submit(j).unwrap();
    assert_eq!(
        rx.blocking_recv().unwrap(),
        Err(WorkerError::DeadlineExceeded)
    );
}

#[test]
fn a_full_queue_answers_overloaded_at_once() {
    let (echo, gate, _) = Echo::gated();
    let pool = InstancePool::start("m v1".into(), "m-1", vec![Box::new(echo)], 1).unwrap();
    let mut receivers = Vec::new();
    let mut overloaded = 0;
    // One job is taken by the (blocked) instance and one waits in the queue; the rest
    // must be refused. The instance may not have taken the first yet, hence "at most 2".
    for _ in 0..5 {
        let (j, rx) = job(later());
        match pool.submit(j) {
            Ok(()) => receivers.push(rx),
            Err(WorkerError::Overloaded(msg)) => {
                assert!(msg.contains("m v1"), "{msg}");
                overloaded += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(receivers.len() <= 2 && overloaded >= 3, "{overloaded}");
    gate.release(receivers.len());
    for rx in receivers {
        assert!(rx.blocking_recv().unwrap().is_ok());
    }
}

#[test]
fn a_panicking_run_is_an_internal_error_and_the_thread_survives() {
    let pool = InstancePool::start("m v1".into(), "m-1", vec![Box::new(Panics)], 4).unwrap();
    for _ in 0..2 {
        let (j, rx) = job(later());
        pool.submit(j).unwrap();
        assert!(matches!(
            rx.blocking_recv().unwrap(),
            Err(WorkerError::Internal(_))
        ));
    }
}

#[test]
fn abandoned_jobs_are_not_run() {
    let (echo, gate, runs) = Echo::gated();
    let pool = InstancePool::start("m v1".into(), "m-1", vec![Box::new(echo)], 4).unwrap();
    // The first job occupies the instance; the second is abandoned while queued.
    let (first, first_rx) = job(later());
    pool.submit(first).unwrap();
    gate.wait_started();
    let (second, second_rx) = job(later());
    pool.submit(second).unwrap();
    drop(second_rx);
    let (third, third_rx) = job(later());
    pool.submit(third).unwrap();
    // Two permits: if the abandoned job ran it would eat the third's permit and the third
    // would hang; the test then fails by timing out instead of passing.
    gate.release(2);
    assert!(first_rx.blocking_recv().unwrap().is_ok());
    assert!(third_rx.blocking_recv().unwrap().is_ok());
    assert_eq!(*runs.lock().unwrap(), [1, 1]);
}

#[test]
fn jobs_queued_behind_a_run_go_together_and_get_their_own_rows_back() {
    let (echo, gate, runs) = Echo::gated();
    let settings = batching(8);
    let metrics = settings.metrics.clone();
    let pool = start(echo, settings);
    // The first job starts at once (no delay) and holds the instance...
    let (first, first_rx) = job_of(1, 0.0, true, &[], later());
    pool.submit(first).unwrap();
    gate.wait_started();
    // ...while three more queue up, each with its own rows and its own choice of outputs.
    let (a, a_rx) = job_of(1, 100.0, true, &["y", "x"], later());
    let (b, b_rx) = job_of(2, 200.0, true, &[], later());
    let (c, c_rx) = job_of(1, 300.0, true, &["x"], later());
    for j in [a, b, c] {
        pool.submit(j).unwrap();
    }
    gate.release(2);
    assert!(first_rx.blocking_recv().unwrap().is_ok());
    let a = a_rx.blocking_recv().unwrap().unwrap();
    let b = b_rx.blocking_recv().unwrap().unwrap();
    let c = c_rx.blocking_recv().unwrap().unwrap();
    assert_eq!(*runs.lock().unwrap(), [1, 4], "one run for the three");
    let names = |out: &[Tensor]| out.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), ["y", "x"]);
    assert_eq!(names(&b), ["x", "y"]);
    assert_eq!(names(&c), ["x"]);
    assert_eq!(a[1].to_values::<f32>().unwrap(), [100.0, 101.0]);
    assert_eq!(a[0].to_values::<i64>().unwrap(), [0]);
    assert_eq!(b[0].shape, [2, 2]);
    assert_eq!(
        b[0].to_values::<f32>().unwrap(),
        [200.0, 201.0, 202.0, 203.0]
    );
    assert_eq!(b[1].to_values::<i64>().unwrap(), [0, 1]);
    assert_eq!(c[0].to_values::<f32>().unwrap(), [300.0, 301.0]);
    // Metrics: two runs of 1 and 4 rows, four queue waits, nothing left queued.
    assert_eq!(metrics.batch_size.count(), 2);
    assert_eq!(metrics.batch_size.sum(), 5.0);
    assert_eq!(metrics.inference.count(), 2);
    assert_eq!(metrics.queue.count(), 4);
    assert_eq!(metrics.queue_depth.get(), 0);
}

#[test]
fn incompatible_jobs_run_in_separate_batches() {
    let (echo, gate, runs) = Echo::gated();
    let pool = start(echo, batching(8));
    let (first, first_rx) = job_of(1, 0.0, false, &[], later());
    pool.submit(first).unwrap();
    gate.wait_started();
    let (a, a_rx) = job_of(1, 1.0, false, &[], later());
    let (b, b_rx) = job_of(1, 2.0, true, &[], later());
    let (c, c_rx) = job_of(2, 3.0, false, &[], later());
    for j in [a, b, c] {
        pool.submit(j).unwrap();
    }
    gate.release(3);
    for rx in [first_rx, a_rx, b_rx, c_rx] {
        assert!(rx.blocking_recv().unwrap().is_ok());
    }
    // First alone; then a and c (x only) together; then b (x and y) on its own.
    assert_eq!(*runs.lock().unwrap(), [1, 3, 1]);
}

#[test]
fn a_model_that_is_not_batch_major_runs_each_alone_and_stops_batching() {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let (permits, gate) = mpsc::channel::<()>();
    let (announce, started) = mpsc::channel::<()>();
    // Gate only the first run, so that the next jobs queue up behind it.
    struct FirstGated {
        inner: Summary,
        gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    }
    impl Runner for FirstGated {
        fn run(&mut self, inputs: &[Tensor], outputs: &[String]) -> JobResult {
            if let Some((announce, gate)) = self.gate.take() {
                let _ = announce.send(());
                let _ = gate.recv();
            }
            self.inner.run(inputs, outputs)
        }
    }
    let runner = FirstGated {
        inner: Summary {
            runs: Arc::clone(&runs),
        },
        gate: Some((announce, gate)),
    };
    let pool = start(runner, batching(8));
    let (first, first_rx) = job(later());
    pool.submit(first).unwrap();
    started.recv_timeout(Duration::from_secs(5)).unwrap();
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let (j, rx) = job(later());
            pool.submit(j).unwrap();
            rx
        })
        .collect();
    permits.send(()).unwrap();
    assert!(first_rx.blocking_recv().unwrap().is_ok());
    for rx in queued {
        let out = rx.blocking_recv().unwrap().unwrap();
        assert_eq!(out[0].shape, [1], "answered by its own run");
    }
    // The batched attempt (2 rows) could not be split: each ran alone.
    assert_eq!(*runs.lock().unwrap(), [1, 2, 1, 1]);
    // From now on nothing is batched: two jobs submitted together run one by one.
    let rxs: Vec<_> = (0..2)
        .map(|_| {
            let (j, rx) = job(later());
            pool.submit(j).unwrap();
            rx
        })
        .collect();
    for rx in rxs {
        assert!(rx.blocking_recv().unwrap().is_ok());
    }
    assert_eq!(&runs.lock().unwrap()[4..], [1, 1]);
}

#[test]
fn dropping_the_pool_runs_what_is_queued_then_stops() {
    let (echo, gate, runs) = Echo::gated();
    let pool = InstancePool::start_with(
        "m v1".into(),
        "m-1",
        vec![Box::new(echo)],
        PoolSettings {
            batching: BatchPolicy {
                max_queue_delay: Duration::from_secs(3600),
                ..batching(8).batching
            },
            ..batching(8)
        },
    )
    .unwrap();
    let receivers: Vec<_> = (0..3)
        .map(|_| {
            let (j, rx) = job(later());
            pool.submit(j).unwrap();
            rx
        })
        .collect();
    // An hour's delay, but closing the queue dispatches without waiting.
    drop(pool);
    gate.release(1);
    for rx in receivers {
        assert!(rx.blocking_recv().unwrap().is_ok());
    }
    assert_eq!(runs.lock().unwrap().iter().sum::<usize>(), 3);
}

#[test]
fn only_jobs_with_one_common_fixed_size_batch_dimension_can_batch() {
    let x = |shape: Vec<i64>| {
        Tensor::from_values(
            "x",
            shape.clone(),
            &vec![0f32; shape.iter().product::<i64>() as usize],
        )
    };
    assert_eq!(batch_rows(&[x(vec![3, 2])]), Some(3));
    assert_eq!(batch_rows(&[x(vec![3, 2]), x(vec![3])]), Some(3));
    assert_eq!(batch_rows(&[x(vec![3, 2]), x(vec![2])]), None);
    assert_eq!(batch_rows(&[x(vec![])]), None);
    assert_eq!(batch_rows(&[]), None);
    let text = Tensor {
        name: "s".into(),
        datatype: DataType::Bytes,
        shape: vec![1],
        data: chorus_common::tensor::encode_bytes_elements([b"a".as_slice()]),
    };
    assert_eq!(batch_rows(&[text]), None);
}

#[test]
fn outputs_are_selected_by_name_in_the_order_asked() {
    let t = |name: &str| Tensor::from_values(name, vec![1], &[0u8]);
    let all = || vec![t("a"), t("b"), t("c")];
    let names = |v: Vec<Tensor>| v.into_iter().map(|t| t.name).collect::<Vec<_>>();
    assert_eq!(names(select_outputs(all(), &[]).unwrap()), ["a", "b", "c"]);
    assert_eq!(
        names(select_outputs(all(), &["c".into(), "a".into()]).unwrap()),
        ["c", "a"]
    );
    assert!(select_outputs(all(), &["d".into()]).is_err());
}

/// Records the name of the thread each run happens on.
struct WhereRun {
    threads: Arc<Mutex<Vec<String>>>,
}

impl Runner for WhereRun {
    fn run(&mut self, inputs: &[Tensor], _: &[String]) -> JobResult {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.threads.lock().unwrap().push(name);
        Ok(inputs.to_vec())
    }
}

fn inline_settings() -> PoolSettings {
    PoolSettings {
        inline_max_run: Duration::from_secs(1),
        ..batching(0)
    }
}

fn x_row() -> Vec<Tensor> {
    vec![Tensor::from_values("x", vec![1, 2], &[1.0f32, 2.0])]
}

#[test]
fn a_measured_short_model_runs_on_the_callers_thread() {
    let threads = Arc::new(Mutex::new(Vec::new()));
    let pool = start(
        WhereRun {
            threads: Arc::clone(&threads),
        },
        inline_settings(),
    );
    // Never measured: the first call goes to the instance thread.
    assert!(pool.try_run_inline(&x_row(), &[]).is_none());
    let (j, rx) = job(later());
    pool.submit(j).unwrap();
    rx.blocking_recv().unwrap().unwrap();
    assert!(pool.recent_run().is_some());
    // The instance thread answers before it lets go of its session: wait for that.
    let waiting_since = Instant::now();
    let answer = loop {
        if let Some(answer) = pool.try_run_inline(&x_row(), &[]) {
            break answer.unwrap();
        }
        assert!(
            waiting_since.elapsed() < Duration::from_secs(5),
            "measured, idle, nothing queued: the call should run inline"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(answer, x_row());
    let here = std::thread::current().name().unwrap_or("?").to_string();
    assert_eq!(*threads.lock().unwrap(), ["m-1-0".to_string(), here]);
}

#[test]
fn a_busy_instance_or_a_queued_job_keeps_calls_on_the_instance_threads() {
    let (echo, gate, runs) = Echo::gated();
    let pool = start(echo, inline_settings());
    let (first, first_rx) = job(later());
    pool.submit(first).unwrap();
    gate.wait_started();
    // The only session is running: nothing can run inline.
    assert!(pool.try_run_inline(&x_row(), &[]).is_none());
    let (second, second_rx) = job(later());
    pool.submit(second).unwrap();
    // Queued behind the running one: a call must not overtake it.
    assert!(pool.try_run_inline(&x_row(), &[]).is_none());
    gate.release(1);
    first_rx.blocking_recv().unwrap().unwrap();
    gate.wait_started();
    assert!(pool.try_run_inline(&x_row(), &[]).is_none());
    gate.release(1);
    second_rx.blocking_recv().unwrap().unwrap();
    assert_eq!(runs.lock().unwrap().len(), 2);
}

#[test]
fn batching_models_never_run_inline() {
    let (echo, _) = Echo::new();
    let pool = start(
        echo,
        PoolSettings {
            inline_max_run: Duration::from_secs(1),
            ..batching(8)
        },
    );
    for _ in 0..3 {
        let (j, rx) = job(later());
        pool.submit(j).unwrap();
        rx.blocking_recv().unwrap().unwrap();
    }
    assert!(pool.try_run_inline(&x_row(), &[]).is_none());
}

#[test]
fn a_panicking_inline_run_is_an_internal_error_and_the_pool_keeps_serving() {
    let pool = start(Panics, inline_settings());
    let (j, rx) = job(later());
    pool.submit(j).unwrap();
    assert!(matches!(
        rx.blocking_recv().unwrap(),
        Err(WorkerError::Internal(_))
    ));
    let waiting_since = Instant::now();
    let inline = loop {
        if let Some(inline) = pool.try_run_inline(&x_row(), &[]) {
            break inline;
        }
        assert!(
            waiting_since.elapsed() < Duration::from_secs(5),
            "never ran inline"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(matches!(inline, Err(WorkerError::Internal(_))));
    let (j, rx) = job(later());
    pool.submit(j).unwrap();
    assert!(matches!(
        rx.blocking_recv().unwrap(),
        Err(WorkerError::Internal(_))
    ));
}
