//! The Lua script against the Rust model: the same random operations on one bucket go
//! through [`Bucket`] (the rules the file store runs) and through `redis.lua` on a live
//! server, on the same clock (the script's explicit `now`), and every answer must agree:
//! admitted or not, the wait, and the usage of every window.
//!
//! `QUOTAGATE_REDIS_MODEL_CASES` cases (128 by default); skipped with a notice without
//! `QUOTAGATE_TEST_REDIS_URL`.

use super::tests::{server_url, unique};
use super::*;
use crate::limiter::store::model::Bucket;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::sync::atomic::{AtomicU64, Ordering};

/// Ids of waiters and holds: few, so that operations meet the same ones.
const IDS: u64 = 4;

#[derive(Debug, Clone)]
enum Action {
    Poll {
        cost: u64,
        place: Place,
        hold: Option<HoldLease>,
    },
    Release {
        id: u64,
        ago_us: u64,
    },
    Leave {
        id: u64,
    },
    Pause {
        us: u64,
    },
    Usage,
}

/// One operation after the clock moved `advance_us` on, or, with `to_lease_end`, to the
/// nearest end of a lease (a waiter's or a hold's) still ahead: the instants where a place
/// is lost or a hold is logged, to the microsecond.
#[derive(Debug, Clone)]
struct Step {
    advance_us: u64,
    to_lease_end: bool,
    action: Action,
}

/// A bucket's rates (1 to 3) and a schedule on it.
#[derive(Debug, Clone)]
struct Case {
    windows: Vec<Window>,
    steps: Vec<Step>,
}

fn windows() -> impl Strategy<Value = Vec<Window>> {
    // Small rates make queues; large ones make the ring of runs grow, wrap and shrink.
    let calls = prop_oneof![3 => 1u64..=8, 1 => 60u64..=300];
    prop::collection::vec((calls, 1u64..=60_000), 1..=3).prop_map(|ws| {
        ws.into_iter()
            .map(|(calls, us)| Window {
                calls,
                window_ns: us * 1000,
            })
            .collect()
    })
}

fn step(max_cost: u64) -> impl Strategy<Value = Step> {
    let cost = 0..=max_cost;
    let id = 1..=IDS;
    let lease = 1u64..=100_000;
    let poll = |place: Place, hold: Option<(u64, u64)>| {
        let hold = hold.map(|(id, lease_us)| HoldLease {
            id,
            duration: us(lease_us),
        });
        move |cost| Action::Poll { cost, place, hold }
    };
    let action = prop_oneof![
        4 => cost.clone().prop_map(poll(Place::Try, None)),
        1 => cost.clone().prop_map(poll(Place::Peek, None)),
        4 => (id.clone(), cost.clone())
            .prop_map(move |(id, cost)| poll(Place::Queue { id }, None)(cost)),
        2 => (id.clone(), cost.clone(), lease.clone())
            .prop_map(move |(id, cost, lease)| poll(Place::Try, Some((id, lease)))(cost)),
        // The queue knows the waiter by its id, the hold by the same id.
        2 => (id.clone(), cost, lease)
            .prop_map(move |(id, cost, lease)| poll(Place::Queue { id }, Some((id, lease)))(cost)),
        2 => (id.clone(), 0u64..=50_000).prop_map(|(id, ago_us)| Action::Release { id, ago_us }),
        1 => id.prop_map(|id| Action::Leave { id }),
        1 => (0u64..=80_000).prop_map(|us| Action::Pause { us }),
        2 => Just(Action::Usage),
    ];
    let advance = prop_oneof![
        3 => Just(0u64),
        6 => 0u64..=20_000,
        2 => 0u64..=200_000,
        // Past a waiter's lease (2 s after its due instant).
        1 => 1_900_000u64..=2_300_000,
    ];
    (advance, prop::bool::weighted(0.1), action).prop_map(|(advance_us, to_lease_end, action)| {
        Step {
            advance_us,
            to_lease_end,
            action,
        }
    })
}

fn case() -> impl Strategy<Value = Case> {
    windows().prop_flat_map(|windows| {
        let max_cost = windows.iter().map(|w| w.calls).min().unwrap_or(1);
        prop::collection::vec(step(max_cost), 1..60).prop_map(move |steps| Case {
            windows: windows.clone(),
            steps,
        })
    })
}

fn us(d: u64) -> Duration {
    Duration::from_micros(d)
}

/// Runs `case` on a new bucket through the model and through the script.
fn run(store: &RedisStore, key: &str, case: &Case) -> Result<(), TestCaseError> {
    let w = &case.windows[..];
    let mut model = Bucket::new();
    // Microseconds since the epoch today, about 2^51: the script's instants are this large.
    let mut now_us: u64 = 1_780_000_000_000_000;
    let lease_us = u64::try_from(LEASE.as_micros()).unwrap();
    let mut lease_ends: Vec<u64> = Vec::new();
    for (i, s) in case.steps.iter().enumerate() {
        match lease_ends.iter().filter(|&&t| t >= now_us).min() {
            Some(&end) if s.to_lease_end => now_us = end,
            _ => now_us += s.advance_us,
        }
        store.now_us.store(now_us, Ordering::Relaxed);
        let now = now_us * 1000;
        let (expected, got): (String, String) = match s.action {
            Action::Poll { cost, place, hold } => {
                let verdict = model.poll(now, w, cost, place, hold);
                match (verdict, place, hold) {
                    (Verdict::Wait(d), Place::Queue { .. }, _) => {
                        lease_ends.push(now_us + d.as_micros() as u64 + lease_us)
                    }
                    (Verdict::Admitted, _, Some(h)) => {
                        lease_ends.push(now_us + h.duration.as_micros() as u64)
                    }
                    _ => {}
                }
                (
                    format!("{verdict:?}"),
                    format!("{:?}", store.poll(key, w, cost, place, hold).unwrap()),
                )
            }
            Action::Release { id, ago_us } => {
                model.release(now, id, us(ago_us));
                store.release(key, w, id, us(ago_us)).unwrap();
                continue;
            }
            Action::Leave { id } => {
                model.leave(now, id);
                store.leave(key, id).unwrap();
                continue;
            }
            Action::Pause { us: p } => {
                model.pause(now, us(p));
                store.pause(key, us(p)).unwrap();
                continue;
            }
            Action::Usage => (
                format!("{:?}", model.usage(now, w)),
                format!("{:?}", store.usage(key, w).unwrap()),
            ),
        };
        prop_assert_eq!(
            &got,
            &expected,
            "step {} ({:?}): the script answered {}, the model {}",
            i,
            s,
            got,
            expected
        );
    }
    Ok(())
}

#[test]
fn the_script_answers_like_the_model() {
    let Some(url) = server_url() else { return };
    let cases = std::env::var("QUOTAGATE_REDIS_MODEL_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(128);
    let prefix = unique("model");
    let store = RedisStore::open(&RedisSettings {
        url,
        cluster_nodes: Vec::new(),
        prefix,
        pool: 1,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let n = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    runner
        .run(&case(), |c| {
            // Each case (and each shrunk variant) on a bucket of its own.
            let key = format!("b{}", n.fetch_add(1, Ordering::Relaxed));
            run(&store, &key, &c)
        })
        .unwrap();
}
