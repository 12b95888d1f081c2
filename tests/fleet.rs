//! A service of real `websocket` processes on the stand-in ECS's fleet (`ecs_stand_in::Fleet`),
//! with real WebSocket clients through its front door: what players live through when ECS scales
//! the service in, deploys to it, or stops one of its tasks.
//!
//! ECS's side is the fleet's scheduler: a scale-in stops unprotected tasks first and never a
//! protected one, a deployment starts the new tasks first and then stops the old ones as their
//! protection allows. The product's side is each task's drain watcher (every second here) and
//! its drain (`DRAIN_DEADLINE_SECS=3`). The rule these tests hold the product to: a task drains
//! only when ECS cannot reach its desired count without it, and a scale-in never closes a player.
//!
//! Real time throughout; every wait is on a condition with a time limit. On a failure the fleet's
//! output (every task's log and the service events) is printed.

#![cfg(unix)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecs_stand_in::{EcsOperation, Fleet, FleetConfig, LastStatus, TaskInfo};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// How long a drain lasts at most in these tests (`DRAIN_DEADLINE_SECS`).
const DRAIN_DEADLINE: Duration = Duration::from_secs(3);
/// The longest a condition may take to come true on a loaded machine.
const LIMIT: Duration = Duration::from_secs(30);

/// A fleet of `tasks` websocket servers with short intervals, and its output on failure.
struct Rig {
    fleet: Fleet,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let output = self.fleet.output();
            let skip = output.len().saturating_sub(150);
            eprintln!("--- fleet output (last {} lines) ---", output.len() - skip);
            for line in &output[skip..] {
                eprintln!("{line}");
            }
            eprintln!("--- tasks ---");
            for t in self.fleet.tasks() {
                eprintln!(
                    "{} {} desired {} protected {:?} stopped because {:?}",
                    t.id, t.last_status, t.desired_status, t.protected_until, t.stopped_reason
                );
            }
        }
    }
}

impl Rig {
    /// Starts the fleet and waits until all its tasks run.
    async fn start(tasks: u32) -> Rig {
        let mut config = FleetConfig::new(env!("CARGO_BIN_EXE_websocket"), tasks)
            .env("DRAIN_WATCH_INTERVAL_SECS", "1")
            .env("DRAIN_DEADLINE_SECS", DRAIN_DEADLINE.as_secs().to_string())
            .env("RUST_LOG", "info");
        config.deregistration_delay = Duration::from_secs(1);
        config.stop_timeout = Duration::from_secs(15);
        config.tick = Duration::from_millis(300);
        let rig = Rig {
            fleet: Fleet::start(config).await.expect("the fleet starts"),
        };
        rig.until("every task RUNNING and registered", || {
            rig.running().len() == tasks as usize && rig.fleet.registered().len() == tasks as usize
        })
        .await;
        rig
    }

    /// Every running task's line in the fleet's view (its `/status` read).
    async fn view_of_running(&self) -> Vec<ecs_stand_in::TaskLine> {
        self.fleet
            .view()
            .await
            .tasks
            .into_iter()
            .filter(|t| t.last_status == LastStatus::Running)
            .collect()
    }

    fn front_door(&self) -> SocketAddr {
        self.fleet
            .front_door()
            .expect("a WebSocket fleet has a front door")
    }

    /// The RUNNING tasks' IDs.
    fn running(&self) -> BTreeSet<String> {
        self.fleet
            .tasks_in(LastStatus::Running)
            .into_iter()
            .map(|t| t.id)
            .collect()
    }

    fn task(&self, id: &str) -> TaskInfo {
        self.fleet.ecs().task(id).expect("a task of the fleet")
    }

    fn protected(&self, id: &str) -> bool {
        self.task(id).protected_until.is_some()
    }

    /// Waits until `f` holds, at most [`LIMIT`]; fails naming `what` otherwise.
    async fn until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < LIMIT, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `DescribeServices` calls each task has made so far.
    fn looks(&self) -> BTreeMap<String, usize> {
        let mut looks = BTreeMap::new();
        for call in self.fleet.ecs().calls_of(EcsOperation::DescribeServices) {
            if let (Some(task), 200) = (call.caller_task(), call.status) {
                *looks.entry(task.to_string()).or_default() += 1;
            }
        }
        looks
    }

    /// Waits until every task in `tasks` has asked ECS about the service `n` more times than in
    /// `since`: each drain watcher has seen the service as it is now, and acted on it.
    async fn watchers_looked(
        &self,
        tasks: &BTreeSet<String>,
        since: &BTreeMap<String, usize>,
        n: usize,
    ) {
        self.until(
            &format!("{n} more looks at the service by every task"),
            || {
                let now = self.looks();
                tasks.iter().all(|t| {
                    now.get(t).copied().unwrap_or(0) >= since.get(t).copied().unwrap_or(0) + n
                })
            },
        )
        .await;
    }

    /// A player through the front door (one attempt).
    async fn join(&self) -> Result<Player, String> {
        Player::join(self).await
    }

    /// A player through the front door, retrying while it is refused (a draining task answers
    /// 503) until one lands on a task that `accept`s.
    async fn join_where(&self, accept: impl Fn(&str) -> bool) -> Player {
        let start = Instant::now();
        loop {
            match self.join().await {
                Ok(p) if accept(&p.task) => return p,
                Ok(p) => p.leave().await,
                Err(_) => {}
            }
            assert!(start.elapsed() < LIMIT, "no task took a new player");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `n` players joined one after another (so the front door's round-robin spreads them).
    async fn players(&self, n: usize) -> Vec<Player> {
        let mut players = Vec::new();
        for _ in 0..n {
            players.push(self.join().await.expect("a player joins"));
        }
        players
    }

    /// Waits until each of `tasks` is protected (its players' protection reached ECS).
    async fn protected_tasks(&self, tasks: &BTreeSet<String>) {
        self.until("the busy tasks protected", || {
            tasks.iter().all(|t| self.protected(t))
        })
        .await;
    }
}

/// A WebSocket client connected through the front door: it records every text it is sent and
/// how its connection ended.
struct Player {
    /// The task the front door sent it to.
    task: String,
    texts: Arc<Mutex<Vec<String>>>,
    ended: Arc<Mutex<Option<String>>>,
    outbox: mpsc::UnboundedSender<Option<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Player {
    async fn join(rig: &Rig) -> Result<Player, String> {
        let url = format!("ws://{}/ws", rig.front_door());
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        .map_err(|_| "no handshake within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
        let local = match ws.get_ref() {
            MaybeTlsStream::Plain(stream) => stream.local_addr().map_err(|e| e.to_string())?,
            _ => return Err("not a plain TCP stream".into()),
        };
        let task = rig
            .fleet
            .routed_to(local)
            .ok_or("the front door does not know the connection")?;
        let texts = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (outbox, mut pending) = mpsc::unbounded_channel::<Option<String>>();
        let reader = tokio::spawn({
            let texts = Arc::clone(&texts);
            let ended = Arc::clone(&ended);
            let mut ws = ws;
            async move {
                let why = loop {
                    tokio::select! {
                        message = ws.next() => match message {
                            Some(Ok(Message::Text(t))) => texts.lock().unwrap().push(t.to_string()),
                            Some(Ok(Message::Close(frame))) => {
                                break format!("closed by the server: {frame:?}")
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break format!("connection error: {e}"),
                            None => break "connection ended".to_string(),
                        },
                        out = pending.recv() => match out {
                            Some(Some(text)) => {
                                if let Err(e) = ws.send(Message::text(text)).await {
                                    break format!("send failed: {e}");
                                }
                            }
                            Some(None) | None => {
                                let _ = ws.close(None).await;
                                // Read until the server's close frame so that the close is clean.
                                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                    while let Some(Ok(_)) = ws.next().await {}
                                })
                                .await;
                                break "left".to_string();
                            }
                        },
                    }
                };
                *ended.lock().unwrap() = Some(why);
            }
        });
        let player = Player {
            task,
            texts,
            ended,
            outbox,
            reader,
        };
        // The welcome comes first.
        within("the welcome", async {
            while !player.heard("Welcome!") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        Ok(player)
    }

    fn heard(&self, prefix: &str) -> bool {
        self.texts
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.starts_with(prefix))
    }

    /// Whether the server told it `server draining: …`.
    fn told_draining(&self) -> bool {
        self.heard("server draining")
    }

    /// How its connection ended, while it has.
    fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap().clone()
    }

    /// Sends `ping` and waits for its `pong`: the connection works both ways.
    async fn ping(&self) -> bool {
        let pongs = |p: &Player| {
            p.texts
                .lock()
                .unwrap()
                .iter()
                .filter(|t| *t == "pong")
                .count()
        };
        let before = pongs(self);
        if self.outbox.send(Some("ping".into())).is_err() {
            return false;
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if pongs(self) > before {
                return true;
            }
            if self.ended().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Closes its connection (the player leaves) and waits until it is closed.
    async fn leave(self) {
        let _ = self.outbox.send(None);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.reader).await;
    }
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// The tasks whose players were told `server draining`.
fn drained(players: &[Player]) -> BTreeSet<String> {
    players
        .iter()
        .filter(|p| p.told_draining())
        .map(|p| p.task.clone())
        .collect()
}

/// Fails unless every player is still connected and answers.
async fn all_connected(players: &[Player]) {
    for p in players {
        assert_eq!(p.ended(), None, "a player on task {} was cut off", p.task);
        assert!(p.ping().await, "a player on task {} gets no pong", p.task);
    }
}

fn tasks_of(players: &[Player]) -> BTreeSet<String> {
    players.iter().map(|p| p.task.clone()).collect()
}

/// Three tasks, two players on each, all protected; the service scaled to 2; returns once one
/// task has told its players it is draining, and enough time has passed for the other tasks'
/// watchers to look twice more: the task the product drains for the scale-in, and everyone.
async fn three_busy_tasks_scaled_to_two(rig: &Rig) -> (String, Vec<Player>) {
    let players = rig.players(6).await;
    let busy = tasks_of(&players);
    assert_eq!(busy, rig.running(), "round-robin put players on every task");
    rig.protected_tasks(&busy).await;

    rig.fleet.scale(2).unwrap();
    rig.until("a task tells its players it is draining", || {
        !drained(&players).is_empty()
    })
    .await;
    let first = drained(&players);
    // Let every watcher look at the service twice more before counting.
    rig.watchers_looked(&busy, &rig.looks(), 2).await;
    let told = drained(&players);
    assert_eq!(
        told.len(),
        1,
        "a scale-in by one task with every task busy must drain exactly one task (the one ECS \
         cannot do without), but the players of {} tasks were told `server draining`: {told:?} \
         (first: {first:?})",
        told.len()
    );
    let chosen = told.into_iter().next().unwrap();
    (chosen, players)
}

/// 1. An unprotected task is enough for a scale-in: it is stopped, and nobody drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extra_unprotected_task_drains_nobody() {
    let rig = Rig::start(3).await;
    // Two players, one after the other: two tasks get one each, the third none.
    let players = rig.players(2).await;
    let busy = tasks_of(&players);
    assert_eq!(busy.len(), 2, "round-robin spreads the two players");
    let idle: String = rig.running().difference(&busy).next().cloned().unwrap();
    rig.protected_tasks(&busy).await;
    assert!(!rig.protected(&idle), "the idle task is not protected");

    // ECS's scheduler takes a moment to act on a new desired count; hold it while every task's
    // watcher looks at the service twice (desired 2, running 3).
    rig.fleet.pause();
    let before = rig.looks();
    rig.fleet.scale(2).unwrap();
    rig.watchers_looked(&rig.running(), &before, 2).await;
    assert_eq!(
        drained(&players),
        BTreeSet::new(),
        "players were told `server draining` although ECS can scale in by stopping the idle, \
         unprotected task {idle}"
    );

    rig.fleet.resume();
    rig.until("the idle task stopped", || {
        rig.task(&idle).last_status == LastStatus::Stopped
    })
    .await;
    assert_eq!(rig.running(), busy, "the busy tasks stay");
    rig.watchers_looked(&busy, &rig.looks(), 2).await;
    assert_eq!(
        drained(&players),
        BTreeSet::new(),
        "nobody drains afterwards"
    );
    all_connected(&players).await;
    for t in &busy {
        assert!(rig.protected(t), "busy task {t} still protected");
    }
}

/// 2. Every task busy: a scale-in by one drains exactly one task, and never closes a player, even
///    past the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_in_with_every_task_busy_drains_exactly_one_and_closes_nobody() {
    let rig = Rig::start(3).await;
    let (chosen, players) = three_busy_tasks_scaled_to_two(&rig).await;

    // Past the drain deadline, with the watchers still looking.
    let since = rig.looks();
    tokio::time::sleep(DRAIN_DEADLINE + Duration::from_secs(1)).await;
    rig.watchers_looked(&rig.running(), &since, 2).await;
    assert_eq!(drained(&players), BTreeSet::from([chosen.clone()]));
    for p in players.iter().filter(|p| p.task == chosen) {
        assert!(
            p.told_draining(),
            "every player of the drained task is told"
        );
    }
    all_connected(&players).await;
    // ECS waits: all three tasks run, protected.
    assert_eq!(rig.running().len(), 3);
    assert!(rig.running().iter().all(|t| rig.protected(t)));
    assert_eq!(
        rig.fleet.waiting(),
        ["scale-in waiting: 1 task to stop, 3 tasks under protection"]
    );
    assert!(
        rig.fleet
            .ecs()
            .events()
            .iter()
            .any(|e| e.contains("was unable to scale in due to (reason 3 tasks under protection)")),
        "{:?}",
        rig.fleet.ecs().events()
    );
    // Three newcomers, one after the other, go to each task in turn: only the drained task
    // refuses.
    let mut joined = Vec::new();
    let mut refused = 0;
    for _ in 0..3 {
        match rig.join().await {
            Ok(p) => joined.push(p),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        refused, 1,
        "the drained task, and only it, refuses new players"
    );
    assert!(joined.iter().all(|p| p.task != chosen));
}

/// 3. The drained task's last player leaves: it releases its protection at once and ECS stops
///    it; the fleet ends with two tasks and every other player where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drained_task_is_released_by_its_last_player_and_stopped() {
    let rig = Rig::start(3).await;
    let (chosen, players) = three_busy_tasks_scaled_to_two(&rig).await;
    let (leaving, staying): (Vec<Player>, Vec<Player>) =
        players.into_iter().partition(|p| p.task == chosen);
    assert_eq!(leaving.len(), 2);
    for p in leaving {
        p.leave().await;
    }
    rig.until("the drained task's protection released", || {
        !rig.protected(&chosen)
    })
    .await;
    let releases: Vec<_> = rig
        .fleet
        .ecs()
        .agent_calls()
        .into_iter()
        .filter(|c| c.task_id == chosen && c.call.enabled == Some(false))
        .collect();
    assert_eq!(
        releases.len(),
        1,
        "one release call, right away: {releases:?}"
    );
    rig.until("the drained task stopped", || {
        rig.task(&chosen).last_status == LastStatus::Stopped
    })
    .await;
    let remaining = tasks_of(&staying);
    rig.until("two tasks running", || rig.running() == remaining)
        .await;
    rig.watchers_looked(&remaining, &rig.looks(), 2).await;
    assert_eq!(drained(&staying), BTreeSet::new(), "the others never drain");
    all_connected(&staying).await;
    assert_eq!(rig.fleet.waiting(), Vec::<String>::new());
    assert_eq!(rig.fleet.ecs().service().running_count, 2);
}

/// 4. A deployment drains every old task; players reconnect through the front door to the new
///    tasks, and the old tasks stop once they are empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_drains_every_old_task_and_players_move_to_new_tasks() {
    let rig = Rig::start(2).await;
    let old = rig.running();
    let mut players = rig.players(4).await;
    assert_eq!(tasks_of(&players), old);
    rig.protected_tasks(&old).await;

    let deployment = rig.fleet.deploy();
    let is_new = |id: &str| rig.task(id).started_by.as_deref() == Some(deployment.as_str());
    // Each player, once told to go (or closed at the drain deadline), reconnects.
    let start = Instant::now();
    let mut moved = Vec::new();
    while !players.is_empty() {
        assert!(start.elapsed() < LIMIT * 2, "players still on old tasks");
        let mut i = 0;
        while i < players.len() {
            if players[i].told_draining() || players[i].ended().is_some() {
                let p = players.swap_remove(i);
                p.leave().await;
                moved.push(rig.join_where(is_new).await);
            } else {
                i += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.until("the old tasks stopped", || {
        old.iter()
            .all(|t| rig.task(t).last_status == LastStatus::Stopped)
    })
    .await;
    rig.until("the deployment completed", || {
        let service = rig.fleet.ecs().service();
        service.deployments.len() == 1 && service.deployments[0].rollout_state == "COMPLETED"
    })
    .await;
    let running = rig.running();
    assert_eq!(running.len(), 2);
    assert!(running.iter().all(|t| is_new(t)), "{running:?}");
    assert_eq!(moved.len(), 4);
    for p in &moved {
        assert!(is_new(&p.task));
        assert!(running.contains(&p.task));
    }
    all_connected(&moved).await;
    let open = rig.fleet.open_connections();
    assert!(
        old.iter().all(|t| open.get(t).copied().unwrap_or(0) == 0),
        "{open:?}"
    );
}

/// 5. Scale to zero with every task busy: every task drains, every player stays connected and
///    every task protected (ECS waits, past the drain deadline); once the players leave, the
///    service empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_drains_every_task_and_keeps_every_player() {
    let rig = Rig::start(2).await;
    let tasks = rig.running();
    let players = rig.players(4).await;
    rig.protected_tasks(&tasks).await;

    rig.fleet.scale(0).unwrap();
    rig.until("every task drains", || drained(&players) == tasks)
        .await;
    let since = rig.looks();
    tokio::time::sleep(DRAIN_DEADLINE + Duration::from_secs(1)).await;
    rig.watchers_looked(&tasks, &since, 2).await;
    all_connected(&players).await;
    assert_eq!(rig.running(), tasks, "ECS waits for the protected tasks");
    assert!(tasks.iter().all(|t| rig.protected(t)));
    assert_eq!(
        rig.fleet.waiting(),
        ["scale-in waiting: 2 tasks to stop, 2 tasks under protection"]
    );
    assert!(
        rig.join().await.is_err(),
        "a draining task takes no new player"
    );
    // The table shows it: two players on each task, draining, protected.
    let lines = rig.view_of_running().await;
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line.load, Some(2), "{line:?}");
        assert!(line.draining.is_some(), "{line:?}");
        assert!(line.protected_until.is_some(), "{line:?}");
    }

    for p in players {
        p.leave().await;
    }
    rig.until("every task stopped", || {
        tasks
            .iter()
            .all(|t| rig.task(t).last_status == LastStatus::Stopped)
    })
    .await;
    assert_eq!(rig.fleet.ecs().service().running_count, 0);
    assert_eq!(rig.fleet.tasks_in(LastStatus::Running).len(), 0);
}

/// `stop TASK` is StopTask: it stops a protected task all the same, and the service replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_task_stops_it_despite_protection_and_the_service_replaces_it() {
    let rig = Rig::start(2).await;
    let players = rig.players(2).await;
    let tasks = tasks_of(&players);
    rig.protected_tasks(&tasks).await;
    let target = players[0].task.clone();

    let info = rig.fleet.stop_task(&target[..8]).unwrap();
    assert_eq!(info.id, target, "a task named by the start of its ID");
    rig.until("the stopped task STOPPED", || {
        rig.task(&target).last_status == LastStatus::Stopped
    })
    .await;
    let ended = within("the player of the stopped task cut off", async {
        loop {
            if let Some(why) = players[0].ended() {
                return why;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ended.contains("1001") || ended.contains("Away"), "{ended}");
    assert_eq!(
        rig.task(&target).stopped_reason.as_deref(),
        Some("Task stopped by user")
    );
    rig.until("a replacement running", || {
        rig.running().len() == 2 && !rig.running().contains(&target)
    })
    .await;
    assert!(
        players[1].ping().await,
        "the other task's player is untouched"
    );
}

/// A task whose process ends by itself is STOPPED and replaced (the service keeps its count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_process_dies_is_stopped_and_replaced() {
    let rig = Rig::start(2).await;
    let victim = rig.running().into_iter().next().unwrap();
    let pid = rig.fleet.task_pid(&victim).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    rig.until("the dead task STOPPED", || {
        rig.task(&victim).last_status == LastStatus::Stopped
    })
    .await;
    let reason = rig.task(&victim).stopped_reason.unwrap_or_default();
    assert!(
        reason.starts_with("Essential container in task exited"),
        "{reason}"
    );
    rig.until("a replacement running", || {
        rig.running().len() == 2 && !rig.running().contains(&victim)
    })
    .await;
    assert!(!rig.fleet.registered().contains(&victim));
}

/// Shutting the fleet down stops every task with SIGTERM: each server shuts down in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_task_with_sigterm() {
    let rig = Rig::start(2).await;
    let tasks = rig.running();
    let player = rig.join().await.unwrap();
    rig.fleet.shutdown().await;
    for t in &tasks {
        let info = rig.task(t);
        assert_eq!(info.last_status, LastStatus::Stopped);
        assert_eq!(info.stopped_reason.as_deref(), Some("Fleet shutting down"));
    }
    let output = rig.fleet.output();
    for t in &tasks {
        let prefix = format!("[{}]", &t[..8]);
        assert!(
            output
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains("Shutdown complete")),
            "task {t} did not shut down in order"
        );
    }
    let ended = player.ended().unwrap_or_default();
    assert!(
        ended.contains("Away"),
        "the player was closed with 1001: {ended}"
    );
}
