//! The dynamic batcher: a model's queue of checked requests, and worker threads that take the
//! next batch from it and run it with `predict` (never on the async runtime).
//!
//! - **Merging** (when the model allows it): requests join a batch until their rows reach
//!   `max_batch_size` (a request that would pass it starts the next batch). While other
//!   requests to the model are arriving (received, not yet queued), the batch waits for them,
//!   at most `max_queue_delay` after its first request came; when none is, it runs at once, so
//!   a lone client never waits.
//! - **Chunks** (when the bundle is paddable): the rows run as the chunks of exported batch
//!   sizes that cost least, by the time each size took at warm-up (9 rows with sizes 4 and 256
//!   run as 4 + 4 + 1 padded to 4, not as 256). Each request gets its own rows of the outputs
//!   that carry the batch axis, and the whole of the others. Planning, padding, concatenating
//!   and splitting are the layer's batching module's (`crate::layer::batching`); the batcher
//!   only forms the batches.
//! - **Unbatched**: each request runs alone, one at a time per worker.
//! - A merged batch that fails is run again request by request, so a request that fails
//!   fails only itself.
//! - **Admission** ([`Admission`]): a model admits at most so many requests and so many bytes
//!   of inputs at once (queued or running); a request over either limit is refused before it
//!   is decoded or queued. A job whose client has gone (its answer's receiver dropped: the
//!   connection closed, or its deadline passed) is dropped before it runs.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::{observe, Metrics, ModelLabels};
use crate::layer::batching::{self, Plan};
use crate::{Error, FlaxLayer, Result, Tensor, TensorView};

/// One checked request: its inputs in the layer's flatten order, all with `rows` rows.
pub struct Job {
    /// The input leaves, in flatten order.
    pub inputs: Vec<Tensor>,
    /// The batch size they share.
    pub rows: usize,
    /// When the request was queued.
    pub enqueued: Instant,
    /// When its answer stops being wanted: a job still queued then is dropped unrun.
    pub deadline: Option<Instant>,
    /// Where its outputs (in flatten order) go.
    pub reply: oneshot::Sender<Result<Vec<Tensor>>>,
    /// Its place in the model's queue limits, given back when the job is answered or dropped
    /// (held for its `Drop`).
    #[allow(dead_code)]
    pub admission: Admission,
}

impl Job {
    /// Whether nobody waits for the answer any more: the client went (the receiver was
    /// dropped) or the deadline passed.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// A model's queue limits and what is admitted now: requests and bytes of inputs, queued or
/// running.
#[derive(Debug)]
pub struct QueueLimits {
    requests: AtomicUsize,
    bytes: AtomicUsize,
    max_requests: usize,
    max_bytes: usize,
}

/// Which queue limit a request would pass, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full(pub String);

impl QueueLimits {
    /// Limits of `max_requests` requests and `max_bytes` bytes at once.
    pub fn new(max_requests: usize, max_bytes: usize) -> QueueLimits {
        QueueLimits { requests: AtomicUsize::new(0), bytes: AtomicUsize::new(0), max_requests, max_bytes }
    }

    /// Admits one more request (with no bytes yet), or says which limit it would pass.
    pub fn admit(self: &Arc<Self>) -> std::result::Result<Admission, Full> {
        let max = self.max_requests;
        self.requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|n| Full(format!("{n} requests queued or running, the limit is {max} (--max-queue-requests)")))?;
        Ok(Admission { limits: Some(self.clone()), bytes: 0 })
    }

    /// The limits: requests and bytes.
    pub fn max(&self) -> (usize, usize) {
        (self.max_requests, self.max_bytes)
    }

    /// The requests and bytes admitted now.
    pub fn in_use(&self) -> (usize, usize) {
        (self.requests.load(Ordering::Acquire), self.bytes.load(Ordering::Acquire))
    }
}

/// One admitted request: counts against its model's [`QueueLimits`] until dropped.
#[derive(Debug)]
pub struct Admission {
    limits: Option<Arc<QueueLimits>>,
    bytes: usize,
}

impl Admission {
    /// An admission under no limits (tests, and calls made by the server itself).
    pub fn unlimited() -> Admission {
        Admission { limits: None, bytes: 0 }
    }

    /// Adds `n` bytes (the request's input tensors) to the admitted bytes, or says that the
    /// limit would be passed (the request stays admitted with the bytes it had).
    pub fn add_bytes(&mut self, n: usize) -> std::result::Result<(), Full> {
        let Some(l) = &self.limits else { return Ok(()) };
        let max = l.max_bytes;
        l.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_add(n).filter(|&t| t <= max))
            .map_err(|b| Full(format!("{b} bytes of inputs queued or running, {n} more would pass the limit of {max} (--max-queue-bytes)")))?;
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(l) = self.limits.take() {
            l.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
            l.requests.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// How a model's batches are formed and run.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Merge requests (else each runs alone).
    pub merge: bool,
    /// The most rows of a merged batch.
    pub max_rows: usize,
    /// How long the first request of a batch waits for more.
    pub max_delay: Duration,
    /// Per output leaf: whether its leading axis is the batch (needed to merge).
    pub output_batched: Vec<bool>,
    /// For a paddable bundle: each exported batch size with the cost of one call at it (any
    /// unit); rows then run in the cheapest chunks of these sizes. Empty: one call as is.
    pub chunk_costs: Vec<(usize, f64)>,
}

/// Requests to a model that have arrived but are not queued yet: a forming batch waits for
/// them (up to its deadline) only while there are some. One that is refused instead of queued
/// nudges the queue, so a waiting batch re-checks at once: the wait needs no polling.
#[derive(Debug, Default)]
pub struct Arrivals {
    count: AtomicUsize,
    nudge: Mutex<Option<Sender<Msg>>>,
}

impl Arrivals {
    /// Counts a request until the guard is dropped (when it is queued, or refused).
    pub fn arrive(self: &Arc<Self>) -> Arriving {
        self.count.fetch_add(1, Ordering::SeqCst);
        Arriving { arrivals: Some(self.clone()), queued: false }
    }

    fn any(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }
}

/// One arriving request; dropping it stops counting it (after [`Arriving::queued`], or when
/// the request is refused, which nudges a waiting batch).
pub struct Arriving {
    arrivals: Option<Arc<Arrivals>>,
    queued: bool,
}

impl Arriving {
    /// The request is queued: its job wakes a waiting batch by itself.
    pub fn queued(mut self) {
        self.queued = true;
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        if let Some(a) = self.arrivals.take() {
            a.count.fetch_sub(1, Ordering::SeqCst);
            if !self.queued {
                if let Some(tx) = a.nudge.lock().ok().and_then(|n| n.clone()) {
                    let _ = tx.send(Msg::Nudge);
                }
            }
        }
    }
}

/// What the queue carries: a job, or a nudge (an arriving request was refused).
pub enum Msg {
    /// A request to run.
    Job(Job),
    /// Re-check the arriving requests.
    Nudge,
}

/// A model's queue and its worker threads. Dropping it lets the workers finish every queued
/// request, then joins them.
pub struct Batcher {
    sender: Option<Sender<Msg>>,
    arrivals: Arc<Arrivals>,
    workers: Vec<JoinHandle<()>>,
}

/// What the workers share: the receiver, a request held back for the next batch, and the
/// count of arriving requests.
struct Queue {
    rx: Receiver<Msg>,
    held: Option<Job>,
    arrivals: Arc<Arrivals>,
    /// Jobs dropped unrun since the last batch, because nobody waits for their answer.
    abandoned: u64,
}

/// What a worker needs to run batches.
struct Runner {
    layer: Arc<FlaxLayer>,
    policy: Policy,
    metrics: Arc<Metrics>,
    labels: ModelLabels,
}

impl Batcher {
    /// Starts `instances` worker threads for `layer`.
    pub fn start(layer: Arc<FlaxLayer>, policy: Policy, instances: usize, arrivals: Arc<Arrivals>, metrics: Arc<Metrics>, labels: ModelLabels) -> Result<Batcher> {
        let (sender, rx) = mpsc::channel();
        if let Ok(mut n) = arrivals.nudge.lock() {
            *n = Some(sender.clone());
        }
        let queue = Arc::new(Mutex::new(Queue { rx, held: None, arrivals: arrivals.clone(), abandoned: 0 }));
        let runner = Arc::new(Runner { layer, policy, metrics, labels });
        let mut workers = Vec::with_capacity(instances);
        for i in 0..instances {
            let (queue, runner) = (queue.clone(), runner.clone());
            let name = format!("{}-{}-{i}", runner.labels.model, runner.labels.version);
            let handle = std::thread::Builder::new()
                .name(name.chars().take(15).collect())
                .spawn(move || work(&queue, &runner))
                .map_err(|e| Error::invalid("worker thread", format!("could not start: {e}")))?;
            workers.push(handle);
        }
        Ok(Batcher { sender: Some(sender), arrivals, workers })
    }

    /// Queues a job; `false` when the workers are gone.
    pub fn submit(&self, job: Job) -> bool {
        self.sender.as_ref().is_some_and(|s| s.send(Msg::Job(job)).is_ok())
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // The nudging sender too, so that the workers see the queue close.
        if let Ok(mut n) = self.arrivals.nudge.lock() {
            *n = None;
        }
        drop(self.sender.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker: takes the next batch while holding the queue, runs it after letting go.
fn work(queue: &Mutex<Queue>, runner: &Runner) {
    loop {
        let batch = {
            let Ok(mut q) = queue.lock() else { return };
            let batch = next_batch(&mut q, &runner.policy);
            if q.abandoned > 0 {
                runner.metrics.abandoned.get_or_create(&runner.labels).inc_by(q.abandoned);
                q.abandoned = 0;
            }
            batch
        };
        match batch {
            Some(jobs) => runner.run(jobs),
            None => return,
        }
    }
}

/// The next batch: the held-back or next request, then (when merging) every queued request
/// that fits, and those still arriving before the first one's deadline. `None` once the queue
/// is closed and empty.
fn next_batch(q: &mut Queue, policy: &Policy) -> Option<Vec<Job>> {
    let first = loop {
        let j = match q.held.take() {
            Some(j) => j,
            None => match q.rx.recv().ok()? {
                Msg::Job(j) => j,
                Msg::Nudge => continue,
            },
        };
        if !j.abandoned() {
            break j;
        }
        q.abandoned += 1;
    };
    let deadline = first.enqueued + policy.max_delay;
    let mut rows = first.rows;
    let mut jobs = vec![first];
    while policy.merge && rows < policy.max_rows {
        let msg = match q.rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if now >= deadline || !q.arrivals.any() {
                    break;
                }
                // Until a job comes, an arriving request is refused (a nudge), or the deadline.
                match q.rx.recv_timeout(deadline - now) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        let Msg::Job(job) = msg else { continue };
        if job.abandoned() {
            q.abandoned += 1;
            continue;
        }
        if rows + job.rows > policy.max_rows {
            q.held = Some(job);
            break;
        }
        rows += job.rows;
        jobs.push(job);
    }
    Some(jobs)
}

impl Runner {
    fn run(&self, jobs: Vec<Job>) {
        let started = Instant::now();
        for j in &jobs {
            observe(&self.metrics.queue_seconds.get_or_create(&self.labels), started.saturating_duration_since(j.enqueued));
        }
        if jobs.len() == 1 {
            let job = jobs.into_iter().next().expect("one job");
            let out = self.predict(&job.inputs, job.rows, 1);
            let _ = job.reply.send(out);
            return;
        }
        let rows: usize = jobs.iter().map(|j| j.rows).sum();
        let parts: Vec<&[Tensor]> = jobs.iter().map(|j| j.inputs.as_slice()).collect();
        let per_job: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
        let merged = batching::concat_rows(&parts).and_then(|inputs| self.predict(&inputs, rows, jobs.len()));
        match merged.and_then(|outs| batching::split_rows(&outs, &per_job, &self.policy.output_batched)) {
            Ok(parts) => {
                for (job, part) in jobs.into_iter().zip(parts) {
                    let _ = job.reply.send(Ok(part));
                }
            }
            // Checked requests should not fail together; if they do, each runs alone so
            // that only the one at fault fails.
            Err(_) => {
                for job in jobs {
                    let out = self.predict(&job.inputs, job.rows, 1);
                    let _ = job.reply.send(out);
                }
            }
        }
    }

    /// The layer on `inputs` (flatten order, `rows` rows): one call, or the cheapest chunks
    /// of exported sizes for a paddable bundle. The outputs in flatten order.
    fn predict(&self, inputs: &[Tensor], rows: usize, requests: usize) -> Result<Vec<Tensor>> {
        let started = Instant::now();
        let lengths = batching::plan_by_cost(rows, &self.policy.chunk_costs);
        let call = || -> Result<Vec<Tensor>> {
            if lengths.len() <= 1 {
                return self.call(inputs.iter().map(Tensor::view).collect());
            }
            // Each chunk through the layer, which pads it to an exported size.
            let plan = Plan::from_lengths(&lengths);
            let views: Vec<TensorView<'_>> = inputs.iter().map(Tensor::view).collect();
            let mut per_chunk = Vec::with_capacity(plan.chunks.len());
            for c in &plan.chunks {
                let chunk = views.iter().map(|v| batching::rows(v, c.start, c.len, c.len, 0.0)).collect::<Result<Vec<_>>>()?;
                per_chunk.push(self.call(chunk.iter().map(|r| r.view()).collect())?);
            }
            let batched: Vec<Option<bool>> = self.policy.output_batched.iter().map(|&b| Some(b)).collect();
            batching::assemble(&plan, &batched, per_chunk)
        };
        let out = std::panic::catch_unwind(AssertUnwindSafe(call))
            .unwrap_or_else(|_| Err(Error::invalid("inference", "the call panicked; the server goes on")));
        observe(&self.metrics.compute_seconds.get_or_create(&self.labels), started.elapsed());
        self.metrics.batch_rows.get_or_create(&self.labels).observe(rows as f64);
        self.metrics.batch_requests.get_or_create(&self.labels).observe(requests as f64);
        out
    }

    /// One `predict` of the layer on leaves in flatten order.
    fn call(&self, views: Vec<TensorView<'_>>) -> Result<Vec<Tensor>> {
        let tree = self.layer.input_tree().unflatten(views)?;
        Ok(self.layer.predict(&tree)?.into_leaves())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(rows: usize, first: f32) -> (Job, oneshot::Receiver<Result<Vec<Tensor>>>) {
        let (reply, rx) = oneshot::channel();
        let values: Vec<f32> = (0..rows * 2).map(|i| first + i as f32).collect();
        let inputs = vec![Tensor::from_vec(vec![rows, 2], values).unwrap()];
        (Job { inputs, rows, enqueued: Instant::now(), deadline: None, reply, admission: Admission::unlimited() }, rx)
    }

    #[test]
    fn batches_fill_to_max_rows_and_hold_the_next_request() {
        let (tx, rx) = mpsc::channel();
        let mut q = Queue { rx, held: None, arrivals: Arc::default(), abandoned: 0 };
        let policy = Policy { merge: true, max_rows: 4, max_delay: Duration::ZERO, output_batched: vec![true], chunk_costs: vec![] };
        let mut keep = Vec::new();
        for rows in [1, 2, 3, 1] {
            let (j, r) = job(rows, 0.0);
            keep.push(r);
            tx.send(Msg::Job(j)).unwrap();
        }
        let sizes = |b: Vec<Job>| b.iter().map(|j| j.rows).collect::<Vec<_>>();
        assert_eq!(sizes(next_batch(&mut q, &policy).unwrap()), vec![1, 2]);
        assert_eq!(sizes(next_batch(&mut q, &policy).unwrap()), vec![3, 1]);
        drop(tx);
        assert!(next_batch(&mut q, &policy).is_none());
        let single = Policy { merge: false, ..policy };
        let (tx, rx) = mpsc::channel();
        let mut q = Queue { rx, held: None, arrivals: Arc::default(), abandoned: 0 };
        for rows in [1, 1] {
            let (j, r) = job(rows, 0.0);
            keep.push(r);
            tx.send(Msg::Job(j)).unwrap();
        }
        assert_eq!(sizes(next_batch(&mut q, &single).unwrap()), vec![1]);
    }

    #[test]
    fn a_batch_waits_for_arriving_requests_and_only_for_them() {
        let policy = Policy { merge: true, max_rows: 64, max_delay: Duration::from_millis(300), output_batched: vec![true], chunk_costs: vec![] };
        let arrivals: Arc<Arrivals> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let mut q = Queue { rx, held: None, arrivals: arrivals.clone(), abandoned: 0 };
        // Nothing arriving: the batch runs at once.
        let (j, _r1) = job(1, 0.0);
        tx.send(Msg::Job(j)).unwrap();
        let t = Instant::now();
        assert_eq!(next_batch(&mut q, &policy).unwrap().len(), 1);
        assert!(t.elapsed() < Duration::from_millis(250), "{:?}", t.elapsed());
        // One arriving: the batch waits for it.
        let (j, _r2) = job(1, 0.0);
        tx.send(Msg::Job(j)).unwrap();
        let coming = arrivals.arrive();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            let (j, r) = job(2, 0.0);
            tx.send(Msg::Job(j)).unwrap();
            drop(coming);
            (tx, r)
        });
        let batch = next_batch(&mut q, &policy).unwrap();
        let (tx, _r3) = late.join().unwrap();
        assert_eq!(batch.iter().map(|j| j.rows).collect::<Vec<_>>(), vec![1, 2]);
        // One that never comes (refused before queueing is dropped late): the deadline ends the wait.
        let never = arrivals.arrive();
        let (j, _r4) = job(1, 0.0);
        tx.send(Msg::Job(j)).unwrap();
        let t = Instant::now();
        assert_eq!(next_batch(&mut q, &policy).unwrap().len(), 1);
        assert!(t.elapsed() >= Duration::from_millis(290), "{:?}", t.elapsed());
        drop(never);
        // One that is refused (dropped unqueued) nudges the waiting batch: it runs at once,
        // not at the deadline.
        *arrivals.nudge.lock().unwrap() = Some(tx.clone());
        let refused = arrivals.arrive();
        let (j, _r5) = job(1, 0.0);
        tx.send(Msg::Job(j)).unwrap();
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            drop(refused);
        });
        let t = Instant::now();
        assert_eq!(next_batch(&mut q, &policy).unwrap().len(), 1);
        assert!(t.elapsed() < Duration::from_millis(250), "{:?}", t.elapsed());
        later.join().unwrap();
    }
}
