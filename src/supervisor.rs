//! Supervised background work: the delivery worker, the audit sealer, the checkpoint
//! signer, the retention purge, and any task added later run under one
//! [`Supervisor`].
//!
//! A task that panics, returns an error, or ends before the gateway stops is logged
//! at ERROR (its name and the kind of failure, never patient data) and started again
//! after a backoff (`background.initial_backoff_ms`, doubling to
//! `background.max_backoff_ms`). A task that fails `background.max_restarts` times
//! within `background.restart_window_seconds` cannot stay up: `GET /health/live`
//! answers 503 naming it, so an orchestrator replaces the process, while the
//! supervisor keeps trying. `/metrics` shows `thrive_background_task_up{task}` and
//! `thrive_background_task_restarts_total{task}`.
//!
//! Panics are caught with [`FutureExt::catch_unwind`]: the task is a future polled by
//! the supervisor's own tokio task, so nothing else shares its state. A panic's
//! message is logged only when it is a string literal from the code (which cannot
//! hold data); any other message is withheld.

use crate::config::BackgroundSettings;
use crate::metrics::Metrics;
use futures_util::FutureExt;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a task gave up. Its text is logged: ids, counts and fixed words only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(String);

impl TaskError {
    /// An error whose `reason` holds no patient data (it is logged).
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// The state of one supervised task, as `/health/live` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskStatus {
    pub task: String,
    /// Running now.
    pub up: bool,
    /// Failures within the restart window.
    pub recent_failures: usize,
    /// Failed `background.max_restarts` times within the window: it cannot stay up.
    pub failing: bool,
    /// Restarts since the gateway started.
    pub restarts: u64,
}

#[derive(Debug, Default)]
struct TaskState {
    up: bool,
    failures: VecDeque<Instant>,
    restarts: u64,
}

struct Inner {
    settings: BackgroundSettings,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    tasks: Mutex<BTreeMap<String, TaskState>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// Runs background tasks, restarts them when they fail, and reports on them. Cheap to
/// clone; clones share everything.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("tasks", &self.status())
            .finish()
    }
}

/// How one run of a task ended.
enum Ended {
    /// The gateway is stopping and the task stopped with it.
    Stopped,
    Failed(&'static str, String),
}

impl Supervisor {
    pub fn new(settings: BackgroundSettings, metrics: Arc<Metrics>) -> Self {
        let (stop, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                settings,
                metrics,
                stop,
                tasks: Mutex::new(BTreeMap::new()),
                handles: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Starts `task` under supervision as `name` (a fixed word: it is a metric label).
    /// `task` is called for every (re)start with a receiver that turns true when the
    /// gateway stops; the future it returns should then end with `Ok(())`. Must be
    /// called inside the tokio runtime. Tests use it to add a task that fails.
    pub fn spawn<F, Fut>(&self, name: &str, task: F)
    where
        F: Fn(watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        let name = name.to_owned();
        self.with_tasks(|tasks| {
            tasks.entry(name.clone()).or_default();
        });
        self.inner.metrics.background_task(&name, false);
        let supervisor = self.clone();
        let handle = tokio::spawn(async move { supervisor.supervise(name, task).await });
        self.inner
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
    }

    /// Every task, by name.
    pub fn status(&self) -> Vec<TaskStatus> {
        let now = Instant::now();
        let window = self.window();
        let max = self.max_restarts();
        self.with_tasks(|tasks| {
            tasks
                .iter_mut()
                .map(|(name, state)| {
                    forget_before(&mut state.failures, now, window);
                    TaskStatus {
                        task: name.clone(),
                        up: state.up,
                        recent_failures: state.failures.len(),
                        failing: state.failures.len() >= max,
                        restarts: state.restarts,
                    }
                })
                .collect()
        })
    }

    /// The tasks that cannot stay up (failed `background.max_restarts` times within
    /// the window); empty when all is well.
    pub fn failing(&self) -> Vec<String> {
        self.status()
            .into_iter()
            .filter(|s| s.failing)
            .map(|s| s.task)
            .collect()
    }

    /// Tells every task to stop and waits until they have; none is restarted after.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let handles: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .inner
                .handles
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "a background task's supervisor ended abnormally");
            }
        }
    }

    async fn supervise<F, Fut>(self, name: String, task: F)
    where
        F: Fn(watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        let mut stop = self.inner.stop.subscribe();
        loop {
            if *stop.borrow() {
                break;
            }
            self.set_up(&name, true);
            let receiver = stop.clone();
            // The call itself is inside the guarded future, so a task that panics
            // before its first await is caught too.
            let run = AssertUnwindSafe(async { task(receiver).await }).catch_unwind();
            let ended = match run.await {
                Ok(_) if *stop.borrow() => Ended::Stopped,
                Ok(Ok(())) => Ended::Failed("ended before the gateway stopped", String::new()),
                Ok(Err(e)) => Ended::Failed("returned an error", e.to_string()),
                Err(panic) => Ended::Failed("panicked", panic_message(panic.as_ref())),
            };
            self.set_up(&name, false);
            let (what, detail) = match ended {
                Ended::Stopped => break,
                Ended::Failed(what, detail) => (what, detail),
            };
            let failures = self.failed(&name);
            let wait = self.backoff(failures);
            let failing = failures >= self.max_restarts();
            tracing::error!(
                task = %name,
                failure = what,
                detail = %detail,
                failures_in_window = failures,
                restart_in_ms = wait.as_millis() as u64,
                cannot_stay_up = failing,
                "background task failed; restarting it"
            );
            if failing {
                tracing::error!(
                    task = %name,
                    failures_in_window = failures,
                    window_seconds = self.inner.settings.restart_window_seconds,
                    "background task cannot stay up: /health/live answers 503"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            self.with_tasks(|tasks| {
                if let Some(state) = tasks.get_mut(&name) {
                    state.restarts += 1;
                }
            });
            self.inner.metrics.background_task_restarted(&name);
        }
        self.set_up(&name, false);
    }

    /// Records a failure now; returns how many fell within the window.
    fn failed(&self, name: &str) -> usize {
        let now = Instant::now();
        let window = self.window();
        self.with_tasks(|tasks| {
            let state = tasks.entry(name.to_owned()).or_default();
            forget_before(&mut state.failures, now, window);
            state.failures.push_back(now);
            state.failures.len()
        })
    }

    /// The wait before the next start: the initial backoff doubling with each
    /// failure in the window, up to the maximum.
    fn backoff(&self, failures: usize) -> Duration {
        let s = &self.inner.settings;
        let doublings = u32::try_from(failures.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(30);
        Duration::from_millis(
            s.initial_backoff_ms
                .saturating_mul(1u64 << doublings)
                .min(s.max_backoff_ms),
        )
    }

    fn set_up(&self, name: &str, up: bool) {
        self.with_tasks(|tasks| tasks.entry(name.to_owned()).or_default().up = up);
        self.inner.metrics.background_task(name, up);
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.inner.settings.restart_window_seconds)
    }

    fn max_restarts(&self) -> usize {
        usize::try_from(self.inner.settings.max_restarts).unwrap_or(usize::MAX)
    }

    fn with_tasks<R>(&self, f: impl FnOnce(&mut BTreeMap<String, TaskState>) -> R) -> R {
        // A panic elsewhere while the lock was held leaves the map as it was between
        // two whole updates: still fit to use.
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut tasks)
    }
}

fn forget_before(failures: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while failures
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) > window)
    {
        failures.pop_front();
    }
}

/// A panic's message when it is a string literal of the code (`panic!("...")`,
/// `unwrap()` on `None`, ...), which cannot hold data; otherwise a placeholder, as a
/// formatted message may hold values.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match payload.downcast_ref::<&'static str>() {
        Some(s) => (*s).to_owned(),
        None => "(message withheld: it may hold data)".to_owned(),
    }
}

/// Replaces the default panic hook, which prints every panic's message to standard
/// error, by one that logs at ERROR where it happened and the message only when it is
/// a string literal ([`panic_message`]). `serve` installs it.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            location = %location,
            message = %panic_message(info.payload()),
            "panic"
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BackgroundSettings {
        BackgroundSettings {
            max_restarts: 3,
            restart_window_seconds: 60,
            initial_backoff_ms: 100,
            max_backoff_ms: 350,
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let s = Supervisor::new(settings(), Arc::new(Metrics::new(None).unwrap()));
        let ms: Vec<u128> = [1, 2, 3, 4, 100, usize::MAX]
            .into_iter()
            .map(|n| s.backoff(n).as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 350, 350, 350, 350]);
    }

    #[test]
    fn only_literal_panic_messages_are_told() {
        let literal = std::panic::catch_unwind(|| panic!("a fixed sentence")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "a fixed sentence");
        let nhs = "9990000018";
        let formatted = std::panic::catch_unwind(|| panic!("bad number {nhs}")).unwrap_err();
        assert!(!panic_message(formatted.as_ref()).contains(nhs));
    }

    #[tokio::test]
    async fn a_task_is_restarted_until_it_stays_up_and_stops_with_the_gateway() {
        let s = Supervisor::new(
            BackgroundSettings {
                initial_backoff_ms: 1,
                max_backoff_ms: 2,
                ..settings()
            },
            Arc::new(Metrics::new(None).unwrap()),
        );
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        s.spawn("flaky", move |mut stop| {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match n {
                    0 => panic!("first run fails"),
                    1 => Err(TaskError::new("second run fails")),
                    _ => {
                        let _ = stop.wait_for(|s| *s).await;
                        Ok(())
                    }
                }
            }
        });
        while runs.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = &s.status()[0];
        assert_eq!(
            (status.up, status.restarts, status.recent_failures),
            (true, 2, 2)
        );
        assert!(s.failing().is_empty(), "2 failures of 3 allowed");
        s.shutdown().await;
        assert!(!s.status()[0].up);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
