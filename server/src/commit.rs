//! Group commit, shared by the stores: submissions queue up in the order they were made,
//! and one writer task takes every submission waiting (up to [`MAX_GROUP`]) and commits
//! them in one transaction, so concurrent requests share one fsync.

use crate::metrics::Metrics;
use crate::store::{BoxFuture, LeaseToken, StoreError, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// At most this many submissions go into one transaction.
pub const MAX_GROUP: usize = 256;

/// One submission: its writes and the lease token they were decided under.
#[derive(Debug)]
pub struct Submission {
    /// The token of the cluster's lease (`None` for a single-process store).
    pub lease: Option<LeaseToken>,
    /// The writes, applied atomically in order.
    pub writes: Vec<Write>,
}

/// A store's side of group commit: one connection, one transaction per group.
pub trait Committer: Send + 'static {
    /// Commits `group` in one transaction. `Ok` holds one verdict per submission (a
    /// submission may be refused alone, e.g. fenced); `Err` fails them all.
    fn commit<'a>(
        &'a mut self,
        group: &'a [Submission],
    ) -> BoxFuture<'a, Result<Vec<Result<(), StoreError>>, StoreError>>;

    /// Closes the connection once every group is committed.
    fn close(self) -> BoxFuture<'static, ()>;
}

enum Message {
    Submit(Submission, oneshot::Sender<Result<(), StoreError>>),
    Close(oneshot::Sender<()>),
}

/// The queue in front of a [`Committer`]'s writer task.
#[derive(Debug)]
pub struct CommitQueue {
    queue: Mutex<Option<mpsc::UnboundedSender<Message>>>,
}

impl CommitQueue {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(committer: impl Committer, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(Self::writer(committer, rx, metrics));
        Self {
            queue: Mutex::new(Some(tx)),
        }
    }

    /// Enqueues a submission now; the future resolves once it is durable (or refused).
    pub fn submit(
        &self,
        lease: Option<LeaseToken>,
        writes: Vec<Write>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let (done, wait) = oneshot::channel();
        let sent = match self.queue.lock().unwrap().as_ref() {
            Some(queue) => queue
                .send(Message::Submit(Submission { lease, writes }, done))
                .is_ok(),
            None => false,
        };
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            wait.await.unwrap_or(Err(StoreError::Closed))
        })
    }

    /// Waits for every submission made so far, then closes; later submissions fail with
    /// [`StoreError::Closed`].
    pub fn close(&self) -> BoxFuture<'_, ()> {
        let queue = self.queue.lock().unwrap().take();
        Box::pin(async move {
            if let Some(queue) = queue {
                let (done, wait) = oneshot::channel();
                if queue.send(Message::Close(done)).is_ok() {
                    let _ = wait.await;
                }
            }
        })
    }

    async fn writer(
        mut committer: impl Committer,
        mut rx: mpsc::UnboundedReceiver<Message>,
        metrics: Arc<Metrics>,
    ) {
        let mut closing = None;
        while closing.is_none() {
            let Some(first) = rx.recv().await else { break };
            let (mut group, mut waiting) = (Vec::new(), Vec::new());
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    Message::Submit(submission, done) => {
                        group.push(submission);
                        waiting.push(done);
                    }
                    Message::Close(done) => {
                        closing = Some(done);
                        break;
                    }
                }
                if group.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            if group.is_empty() {
                continue;
            }
            let started = Instant::now();
            let verdicts = committer.commit(&group).await;
            metrics.store_committed(started.elapsed(), group.len());
            for (index, done) in waiting.into_iter().enumerate() {
                let verdict = match &verdicts {
                    Ok(verdicts) => verdicts[index].clone(),
                    Err(e) => Err(e.clone()),
                };
                if matches!(verdict, Err(StoreError::Fenced { .. })) {
                    metrics.store_fenced.fetch_add(1, Ordering::Relaxed);
                }
                let _ = done.send(verdict);
            }
        }
        committer.close().await;
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }
}
