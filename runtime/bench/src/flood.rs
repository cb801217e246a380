//! The connect-flood generator of `ck bench --callout` (`ck bench-flood`, hidden, its own
//! process so its CPU and scheduler are not the callout's): bogus CONNECTs at a fixed rate, each
//! naming a registered kernel's SPIFFE ID with a junk password — what an attacker who knows a
//! kernel's name can send without any secret. Spoken in the raw NATS protocol (INFO, CONNECT,
//! PING, then the server's verdict), one TCP connection per attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What to send.
#[derive(Debug, Clone)]
pub struct FloodSpec {
    /// `host:port` of the server.
    pub addr: String,
    /// The user every CONNECT claims.
    pub user: String,
    /// Attempts started per second.
    pub rate: u32,
    /// Seconds to run.
    pub seconds: f64,
}

/// What the flood did.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct FloodResult {
    /// Attempts started.
    pub attempted: u64,
    /// Refused by the server (`-ERR 'Authorization Violation'`).
    pub refused: u64,
    /// Admitted (must stay 0).
    pub admitted: u64,
    /// Failed otherwise (socket errors, timeouts, more than 1,024 attempts in flight).
    pub errors: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
}

async fn attempt(addr: &str, connect: &str) -> Result<bool> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), read.read_line(&mut line)).await??;
    write.write_all(connect.as_bytes()).await?;
    line.clear();
    tokio::time::timeout(Duration::from_secs(5), read.read_line(&mut line)).await??;
    Ok(line.starts_with("PONG"))
}

/// Runs the flood and prints its [`FloodResult`] as one JSON line.
pub fn run(spec: &FloodSpec) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(flood(spec));
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn flood(spec: &FloodSpec) -> FloodResult {
    let connect = format!(
        "CONNECT {}\r\nPING\r\n",
        serde_json::json!({"verbose": false, "pedantic": false, "user": spec.user, "pass": "junk-not-a-jwt", "protocol": 1, "name": "flood"})
    );
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let in_flight = Arc::new(tokio::sync::Semaphore::new(1024));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(spec.seconds);
    // Ticks of 10 ms, each starting the attempts that keep the total at `rate`/s.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut tasks = tokio::task::JoinSet::new();
    let mut attempted = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * f64::from(spec.rate)) as u64;
        while attempted < due {
            attempted += 1;
            let Ok(slot) = in_flight.clone().try_acquire_owned() else {
                counts[3].fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (addr, connect, counts) = (spec.addr.clone(), connect.clone(), counts.clone());
            tasks.spawn(async move {
                let _slot = slot;
                let which = match attempt(&addr, &connect).await {
                    Ok(true) => 2,
                    Ok(false) => 1,
                    Err(_) => 3,
                };
                counts[which].fetch_add(1, Ordering::Relaxed);
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    FloodResult {
        attempted,
        refused: counts[1].load(Ordering::Relaxed),
        admitted: counts[2].load(Ordering::Relaxed),
        errors: counts[3].load(Ordering::Relaxed),
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}
