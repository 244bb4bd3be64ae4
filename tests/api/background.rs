//! Background tasks run supervised: one that panics or fails is restarted, and one
//! that cannot stay up makes `/health/live` answer 503 naming it, while `/metrics`
//! shows each task up or down and how often it was restarted.

use crate::helpers::*;
use crate::metrics::scrape;
use crate::on_both_databases;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use thrive_gateway::supervisor::TaskError;

/// Restarts after 200 ms, then 400 ms, ... up to 5 s; three failures within a
/// minute and a task cannot stay up.
const SUPERVISION: &str = "[background]\nmax_restarts = 3\nrestart_window_seconds = 60\ninitial_backoff_ms = 200\nmax_backoff_ms = 5000\n";

async fn live(app: &TestApp) -> Reply {
    Reply::from(
        app.client
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn a_failing_task_is_restarted_and_one_that_cannot_stay_up_fails_liveness(db: Db) {
    let app = TestApp::spawn_with(db, SUPERVISION).await;
    let up = |task: &str| [("task", task.to_owned())];
    let gauge = |s: &crate::metrics::Scrape, name: &str, task: &str| {
        let labels = up(task);
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.value(name, &labels)
    };
    // The gateway's own tasks run supervised.
    let first = scrape(&app).await;
    for task in ["audit-sealer", "audit-checkpoints"] {
        assert_eq!(
            gauge(&first, "thrive_background_task_up", task),
            Some(1.0),
            "{task}"
        );
        assert_eq!(
            gauge(&first, "thrive_background_task_restarts_total", task),
            Some(0.0),
            "{task}"
        );
    }
    let body = live(&app).await;
    assert_eq!(body.status, 200, "{}", body.text);

    // A task that panics, then fails, then stays up: restarted twice, still live.
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    app.supervisor.spawn("flaky", move |mut stop| {
        let run = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            match run {
                0 => panic!("the flaky task panics"),
                1 => Err(TaskError::new("the flaky task fails")),
                _ => {
                    let _ = stop.wait_for(|s| *s).await;
                    Ok(())
                }
            }
        }
    });
    eventually("the flaky task is up again", async || {
        runs.load(Ordering::SeqCst) >= 3
    })
    .await;
    let s = scrape(&app).await;
    assert_eq!(
        gauge(&s, "thrive_background_task_up", "flaky"),
        Some(1.0),
        "{}",
        s.text
    );
    assert_eq!(
        gauge(&s, "thrive_background_task_restarts_total", "flaky"),
        Some(2.0)
    );
    let body = live(&app).await;
    assert_eq!(
        body.status, 200,
        "two failures of three allowed: {}",
        body.text
    );

    // A task that panics every time cannot stay up: liveness fails naming it.
    app.supervisor
        .spawn("doomed", |_stop| async { panic!("the doomed task panics") });
    eventually("liveness fails", async || live(&app).await.status == 503).await;
    let body = live(&app).await;
    let issues: Vec<String> = body.json()["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["diagnostics"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        issues,
        ["not live: background task `doomed` cannot stay up"],
        "{}",
        body.text
    );
    body.assert_issue(503, "REC_SERVICE_UNAVAILABLE", "");
    let s = scrape(&app).await;
    assert_eq!(
        gauge(&s, "thrive_background_task_up", "doomed"),
        Some(0.0),
        "down while it waits to be restarted: {}",
        s.text
    );
    assert!(gauge(&s, "thrive_background_task_restarts_total", "doomed").unwrap() >= 2.0);
    assert_eq!(gauge(&s, "thrive_background_task_up", "flaky"), Some(1.0));
    // Readiness is about the database, which still answers.
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

on_both_databases!(a_failing_task_is_restarted_and_one_that_cannot_stay_up_fails_liveness);
