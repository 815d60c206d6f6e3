//! What dirty-page logging costs the daemon: its CPU time per request with logging off and on,
//! for 4 KiB random reads (which write guest memory, so every one marks pages) at queue depth
//! 32, from the suite's hand-made frontend — no client in the bench tool can switch logging on.
//! The rounds alternate off and on over one connection, so drift on a noisy machine touches
//! both alike; the figure is the daemon's user + system time (all threads) over the requests
//! it completed.
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p vblkd-test-support --example dirty-log-cost
//! DISK=/var/tmp/bench.img ARGS="--aio native" ROUNDS=8 SECONDS=3 cargo run --release ...
//! ```
//!
//! `LOGGING=off` or `on` instead runs one mode throughout (`off` does not even negotiate
//! logging, so it runs against any vhost-user-blk daemon), and `WRAPPER` runs the daemon
//! through a program that execs it in its own process: `WRAPPER="valgrind --tool=callgrind"`
//! counts the daemon's instructions for one mode, to divide by all the requests printed.

use std::time::{Duration, Instant};

use vblkd_test_support::frontend::{Guest, Setup};
use vblkd_test_support::Daemon;

const DEPTH: u16 = 32;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number(name: &str, default: u64) -> u64 {
    env_or(name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a number"))
}

/// The daemon's user + system CPU time so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon runs");
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("clock ticks");
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Keeps `DEPTH` random 4 KiB reads in flight in batches for `length`; returns how many
/// completed.
fn reads(guest: &mut Guest, blocks: u64, length: Duration, seed: &mut u64) -> u64 {
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < length {
        let heads: Vec<u16> = (0..DEPTH)
            .map(|slot| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                guest.place_request(slot, (*seed >> 33) % blocks * 8, None)
            })
            .collect();
        guest.make_available(&heads);
        guest.kick.write(1).unwrap();
        done += guest.wait_used(usize::from(DEPTH)).len() as u64;
    }
    done
}

fn main() {
    let disk = env_or("DISK", "null:1G");
    let extra = env_or("ARGS", "");
    let wrapper = env_or("WRAPPER", "");
    let logging = env_or("LOGGING", "alternate");
    let rounds = number("ROUNDS", 6);
    let length = Duration::from_secs(number("SECONDS", 3));
    let modes: &[bool] = match logging.as_str() {
        "alternate" => &[false, true],
        "off" => &[false],
        "on" => &[true],
        _ => panic!("LOGGING must be alternate, off or on"),
    };

    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--disk", disk.as_str()];
    args.extend(extra.split_whitespace());
    let daemon = Daemon::start_with(
        &wrapper.split_whitespace().collect::<Vec<_>>(),
        dir.path(),
        &args,
    );
    let size = daemon.info().capacity;
    let mut guest = Guest::attach_with(
        &daemon.socket,
        Setup {
            dirty_log: modes.contains(&true),
            queue_size: 128, // three descriptors per request
            ..Setup::default()
        },
    );
    let mut seed = 0x5eed;
    let warm_up = reads(
        &mut guest,
        size / 4096,
        Duration::from_millis(500),
        &mut seed,
    );
    println!("warm-up: {warm_up} requests");

    println!("round logging requests cpu_us_per_request");
    let mut totals = [(Duration::ZERO, 0u64); 2];
    for round in 1..=rounds {
        for &on in modes {
            // A fresh log each time, as each migration brings its own.
            let _log = on.then(|| guest.start_dirty_log());
            let before = cpu_time(daemon.pid());
            let done = reads(&mut guest, size / 4096, length, &mut seed);
            let cpu = cpu_time(daemon.pid()) - before;
            if on {
                guest.stop_dirty_log();
            }
            let total = &mut totals[usize::from(on)];
            total.0 += cpu;
            total.1 += done;
            println!(
                "{round} {} {done} {:.2}",
                if on { "on" } else { "off" },
                cpu.as_secs_f64() * 1e6 / done as f64
            );
        }
    }
    for &on in modes {
        let (cpu, done) = totals[usize::from(on)];
        println!(
            "all {} {done} {:.2}",
            if on { "on" } else { "off" },
            cpu.as_secs_f64() * 1e6 / done as f64
        );
    }
    drop(guest);
    assert!(daemon.stop().success(), "the daemon exits cleanly");
}
