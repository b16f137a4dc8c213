//! The dynamic batcher: a model's queue of checked requests, and worker threads that take the
//! next batch from it and run it with `predict` (never on the async runtime).
//!
//! - **Merging** (when the model allows it): the first request of a batch waits at most
//!   `max_queue_delay` for more; requests join until their rows reach `max_batch_size`, and a
//!   request that would pass it starts the next batch. The rows are concatenated, the layer
//!   pads them to an exported size (or splits them), and each request gets its own rows of the
//!   outputs that carry the batch axis, and the whole of the others.
//! - **Unbatched**: each request runs alone, one at a time per worker.
//! - A merged batch that fails is run again request by request, so a request that fails
//!   fails only itself.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::{observe, Metrics, ModelLabels};
use crate::{Error, JaxLayer, Result, Tensor, TensorView};

/// One checked request: its inputs in the layer's flatten order, all with `rows` rows.
pub struct Job {
    /// The input leaves, in flatten order.
    pub inputs: Vec<Tensor>,
    /// The batch size they share.
    pub rows: usize,
    /// When the request was queued.
    pub enqueued: Instant,
    /// Where its outputs (in flatten order) go.
    pub reply: oneshot::Sender<Result<Vec<Tensor>>>,
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
}

/// A model's queue and its worker threads. Dropping it lets the workers finish every queued
/// request, then joins them.
pub struct Batcher {
    sender: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

/// What the workers share: the receiver, and a request held back for the next batch.
struct Queue {
    rx: Receiver<Job>,
    held: Option<Job>,
}

/// What a worker needs to run batches.
struct Runner {
    layer: Arc<JaxLayer>,
    policy: Policy,
    metrics: Arc<Metrics>,
    labels: ModelLabels,
}

impl Batcher {
    /// Starts `instances` worker threads for `layer`.
    pub fn start(layer: Arc<JaxLayer>, policy: Policy, instances: usize, metrics: Arc<Metrics>, labels: ModelLabels) -> Result<Batcher> {
        let (sender, rx) = mpsc::channel();
        let queue = Arc::new(Mutex::new(Queue { rx, held: None }));
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
        Ok(Batcher { sender: Some(sender), workers })
    }

    /// Queues a job. Fails only when the workers are gone.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        match &self.sender {
            Some(s) => s.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
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
            next_batch(&mut q, &runner.policy)
        };
        match batch {
            Some(jobs) => runner.run(jobs),
            None => return,
        }
    }
}

/// The next batch: the held-back or next request, then (when merging) every request that
/// arrives before the first one's deadline and fits. `None` once the queue is closed and empty.
fn next_batch(q: &mut Queue, policy: &Policy) -> Option<Vec<Job>> {
    let first = match q.held.take() {
        Some(j) => j,
        None => q.rx.recv().ok()?,
    };
    let deadline = first.enqueued + policy.max_delay;
    let mut rows = first.rows;
    let mut jobs = vec![first];
    while policy.merge && rows < policy.max_rows {
        let job = match q.rx.try_recv() {
            Ok(j) => j,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match q.rx.recv_timeout(deadline - now) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        };
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
        let merged = concat(&jobs).and_then(|inputs| self.predict(&inputs, rows, jobs.len()));
        match merged.and_then(|outs| split(&outs, &jobs, &self.policy.output_batched)) {
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

    /// One call of the layer on `inputs` (flatten order); the outputs in flatten order.
    fn predict(&self, inputs: &[Tensor], rows: usize, requests: usize) -> Result<Vec<Tensor>> {
        let started = Instant::now();
        let views: Vec<TensorView<'_>> = inputs.iter().map(Tensor::view).collect();
        let call = || -> Result<Vec<Tensor>> {
            let tree = self.layer.input_tree().unflatten(views)?;
            Ok(self.layer.predict(&tree)?.into_leaves())
        };
        let out = std::panic::catch_unwind(AssertUnwindSafe(call))
            .unwrap_or_else(|_| Err(Error::invalid("inference", "the call panicked; the server goes on")));
        observe(&self.metrics.compute_seconds.get_or_create(&self.labels), started.elapsed());
        self.metrics.batch_rows.get_or_create(&self.labels).observe(rows as f64);
        self.metrics.batch_requests.get_or_create(&self.labels).observe(requests as f64);
        out
    }
}

/// The jobs' inputs concatenated along the batch axis, leaf by leaf.
fn concat(jobs: &[Job]) -> Result<Vec<Tensor>> {
    let first = &jobs[0].inputs;
    let rows: usize = jobs.iter().map(|j| j.rows).sum();
    let mut out = Vec::with_capacity(first.len());
    for (i, leaf) in first.iter().enumerate() {
        let mut shape = leaf.shape().to_vec();
        shape[0] = rows;
        let mut t = Tensor::zeros(leaf.dtype(), shape)?;
        let dst = t.as_mut_bytes();
        let mut at = 0;
        for j in jobs {
            let src = j.inputs[i].as_bytes();
            dst[at..at + src.len()].copy_from_slice(src);
            at += src.len();
        }
        out.push(t);
    }
    Ok(out)
}

/// Each job's part of a merged batch's outputs: its rows of the batched outputs, a copy of
/// the others.
fn split(outputs: &[Tensor], jobs: &[Job], batched: &[bool]) -> Result<Vec<Vec<Tensor>>> {
    let total: usize = jobs.iter().map(|j| j.rows).sum();
    let mut parts: Vec<Vec<Tensor>> = jobs.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for (out, &is_batched) in outputs.iter().zip(batched) {
        if !is_batched {
            parts.iter_mut().for_each(|p| p.push(out.clone()));
            continue;
        }
        if out.shape().first() != Some(&total) {
            return Err(Error::ShapeMismatch { what: "a batched output".into(), expected: vec![total], got: out.shape().to_vec() });
        }
        let row = out.num_bytes() / total.max(1);
        let mut start = 0;
        for (job, part) in jobs.iter().zip(parts.iter_mut()) {
            let mut shape = out.shape().to_vec();
            shape[0] = job.rows;
            part.push(Tensor::new(out.dtype(), shape, &out.as_bytes()[start * row..(start + job.rows) * row])?);
            start += job.rows;
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(rows: usize, first: f32) -> (Job, oneshot::Receiver<Result<Vec<Tensor>>>) {
        let (reply, rx) = oneshot::channel();
        let values: Vec<f32> = (0..rows * 2).map(|i| first + i as f32).collect();
        let inputs = vec![Tensor::from_vec(vec![rows, 2], values).unwrap()];
        (Job { inputs, rows, enqueued: Instant::now(), reply }, rx)
    }

    #[test]
    fn concat_and_split_give_each_job_its_rows() {
        let (a, _ra) = job(1, 0.0);
        let (b, _rb) = job(3, 100.0);
        let jobs = vec![a, b];
        let merged = concat(&jobs).unwrap();
        assert_eq!(merged[0].shape(), &[4, 2]);
        assert_eq!(merged[0].as_slice::<f32>().unwrap(), &[0.0, 1.0, 100.0, 101.0, 102.0, 103.0, 104.0, 105.0]);
        let scalar = Tensor::from_vec(vec![], vec![7i32]).unwrap();
        let parts = split(&[merged[0].clone(), scalar.clone()], &jobs, &[true, false]).unwrap();
        assert_eq!(parts[0][0].as_slice::<f32>().unwrap(), &[0.0, 1.0]);
        assert_eq!(parts[1][0].shape(), &[3, 2]);
        assert_eq!(parts[1][0].as_slice::<f32>().unwrap()[0], 100.0);
        assert_eq!(parts[1][1], scalar);
        assert!(split(&[scalar], &jobs, &[true]).is_err());
    }

    #[test]
    fn batches_fill_to_max_rows_and_hold_the_next_request() {
        let (tx, rx) = mpsc::channel();
        let mut q = Queue { rx, held: None };
        let policy = Policy { merge: true, max_rows: 4, max_delay: Duration::ZERO, output_batched: vec![true] };
        let mut keep = Vec::new();
        for rows in [1, 2, 3, 1] {
            let (j, r) = job(rows, 0.0);
            keep.push(r);
            tx.send(j).unwrap();
        }
        let sizes = |b: Vec<Job>| b.iter().map(|j| j.rows).collect::<Vec<_>>();
        assert_eq!(sizes(next_batch(&mut q, &policy).unwrap()), vec![1, 2]);
        assert_eq!(sizes(next_batch(&mut q, &policy).unwrap()), vec![3, 1]);
        drop(tx);
        assert!(next_batch(&mut q, &policy).is_none());
        let single = Policy { merge: false, ..policy };
        let (tx, rx) = mpsc::channel();
        let mut q = Queue { rx, held: None };
        for rows in [1, 1] {
            let (j, r) = job(rows, 0.0);
            keep.push(r);
            tx.send(j).unwrap();
        }
        assert_eq!(sizes(next_batch(&mut q, &single).unwrap()), vec![1]);
    }

    #[test]
    fn the_first_request_waits_at_most_the_delay() {
        let (tx, rx) = mpsc::channel();
        let mut q = Queue { rx, held: None };
        let policy = Policy { merge: true, max_rows: 64, max_delay: Duration::from_millis(30), output_batched: vec![true] };
        let (j, _r) = job(1, 0.0);
        tx.send(j).unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            let (j, r) = job(2, 0.0);
            tx.send(j).unwrap();
            (tx, r)
        });
        let batch = next_batch(&mut q, &policy).unwrap();
        let _keep = late.join().unwrap();
        assert_eq!(batch.iter().map(|j| j.rows).collect::<Vec<_>>(), vec![1, 2], "the second request came within the delay");
    }
}
