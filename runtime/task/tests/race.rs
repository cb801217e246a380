//! Two hosts racing over the same tasks on a real nats-server with JetStream: every task is
//! completed exactly once.

use ck_loops::data::Actor;
use ck_task::{StoreError, TaskAction, TaskMessage, TaskState, TaskStore};

fn msg(task_id: &str, action: TaskAction) -> TaskMessage {
    TaskMessage {
        action,
        task_id: task_id.to_owned(),
        delta: None,
        output: (action == TaskAction::Complete).then(|| serde_json::json!({"done": task_id})),
        error: None,
    }
}

const GUID: &str = "5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e10";

async fn host(url: &str) -> TaskStore {
    let client = async_nats::connect(url).await.unwrap();
    TaskStore::open(&async_nats::jetstream::new(client), GUID)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_racing_complete_each_task_exactly_once() {
    let store_dir = tempfile::tempdir().unwrap();
    let server = ck_natsd::NatsServer::start(&format!(
        "jetstream {{ store_dir: \"{}\" }}",
        store_dir.path().display()
    ))
    .unwrap();
    let (a, b) = (host(&server.url()).await, host(&server.url()).await);
    let tasks: Vec<String> = (0..200).map(|i| format!("t-{i}")).collect();
    for t in &tasks {
        a.apply(
            &msg(t, TaskAction::Start),
            &Actor::unproven("caller"),
            "host-a",
        )
        .await
        .unwrap();
    }
    let races = tasks.iter().map(|t| {
        let (a, b, t) = (a.clone(), b.clone(), t.clone());
        async move {
            let complete = msg(&t, TaskAction::Complete);
            let caller = Actor::unproven("caller");
            let (ra, rb) = tokio::join!(
                a.apply(&complete, &caller, "host-a"),
                b.apply(&complete, &caller, "host-b")
            );
            (t, ra, rb)
        }
    });
    let mut wins = (0, 0);
    for (t, ra, rb) in futures::future::join_all(races).await {
        let (winner, loser) = match (&ra, &rb) {
            (Ok(w), Err(l)) => {
                wins.0 += 1;
                (w, l)
            }
            (Err(l), Ok(w)) => {
                wins.1 += 1;
                (w, l)
            }
            other => panic!("{t}: exactly one completion expected, got {other:?}"),
        };
        assert_eq!(winner.record.state, TaskState::Completed);
        assert_eq!(winner.before, Some(TaskState::InProgress));
        // The acknowledged record carries what the winner must seal, and who must.
        assert_eq!(winner.record.output, Some(serde_json::json!({"done": t})));
        assert!(matches!(
            winner.record.sealer.as_deref(),
            Some("host-a" | "host-b")
        ));
        assert_eq!(winner.record.transitions.len(), 2);
        match loser {
            StoreError::Illegal(e) => {
                assert_eq!(e.state.0, Some(TaskState::Completed), "{e}");
                assert!(
                    e.to_string().contains(&format!("task {t} is completed")),
                    "{e}"
                );
            }
            other => panic!("{t}: the loser must get a 409, got {other}"),
        }
        let (record, _) = a.get(&t).await.unwrap().unwrap();
        assert_eq!(record.state, TaskState::Completed);
    }
    eprintln!("wins: host-a {}, host-b {}", wins.0, wins.1);

    // Nothing leaves completed; a second start is refused; nothing changed.
    let (before, revision) = a.get("t-0").await.unwrap().unwrap();
    for action in [
        TaskAction::Update,
        TaskAction::Start,
        TaskAction::Fail,
        TaskAction::Retry,
    ] {
        assert!(matches!(
            b.apply(&msg("t-0", action), &Actor::unproven("caller"), "host-b")
                .await,
            Err(StoreError::Illegal(_))
        ));
    }
    assert_eq!(a.get("t-0").await.unwrap().unwrap(), (before, revision));
    // Update or complete before start: refused.
    assert!(matches!(
        a.apply(
            &msg("never-started", TaskAction::Complete),
            &Actor::unproven("caller"),
            "host-a"
        )
        .await,
        Err(StoreError::Illegal(_))
    ));
    assert!(a.get("never-started").await.unwrap().is_none());
}
