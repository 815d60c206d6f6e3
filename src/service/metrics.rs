//! `--metrics ADDR:PORT`: the control socket's statistics in the Prometheus text format, at
//! `/metrics`, for a scraper.
//!
//! Each scrape takes the same [`Stats`] snapshot the control socket's `stats` answers (a
//! [`Collector`] over it), so serving metrics costs the I/O path nothing and the two never
//! disagree. The HTTP side is `tiny_http` on a thread of its own; a slow or hostile scraper
//! holds only that thread. Bind it to loopback unless the network is trusted: the figures say
//! what the guest does.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use strum::IntoEnumIterator;

use super::status::{Figures, Served, Stats};
use crate::queue::Counter;

/// Latency histogram bucket bounds, in seconds (Prometheus's `le`).
const LATENCY_BOUNDS: [f64; 12] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 100e-3, 1.0,
];

#[derive(Debug)]
struct Snapshot(Stats);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let queues = &self.0.queues;
        let label = |q: usize| [("queue", q.to_string())];
        for counter in Counter::iter() {
            if counter == Counter::ThrottledMicroseconds {
                // Prometheus's unit of time is the second.
                let help = "Seconds the queue was held back by the I/O limits";
                per_queue(&mut encoder, "throttled_seconds", help, queues, |f| {
                    f.count(counter) as f64 / 1e6
                })?;
                continue;
            }
            per_queue(&mut encoder, counter.name(), counter.help(), queues, |f| {
                f.count(counter)
            })?;
        }
        let mut family = encoder.encode_descriptor(
            "rejected",
            "Requests refused by the parser, by reason",
            None,
            MetricType::Counter,
        )?;
        for (q, figures) in queues.iter().enumerate() {
            for (&reason, &n) in &figures.rejected {
                let reason: &'static str = reason.into();
                let labels = [("queue", q.to_string()), ("reason", reason.to_owned())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        for name in self.0.total.engine.keys() {
            let help = "The disk's I/O engines' own count";
            per_queue(&mut encoder, name, help, queues, |f| f.engine_count(name))?;
        }
        let paused = encoder.encode_descriptor(
            "paused",
            "1 while the disk is paused after a failed request (vblkd ctl info says why)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.0.paused.is_some())).encode(paused)?;
        let mut family = encoder.encode_descriptor(
            "limit",
            "The I/O limits, by QEMU's name (operations or bytes per second, seconds, bytes)",
            None,
            MetricType::Gauge,
        )?;
        for (key, value) in self.0.limits.settings() {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(family.encode_family(&[("key", key)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "in_flight",
            "Requests between the avail ring and the used ring",
            None,
            MetricType::Gauge,
        )?;
        for (q, figures) in queues.iter().enumerate() {
            let in_flight = i64::try_from(figures.in_flight).unwrap_or(i64::MAX);
            ConstGauge::new(in_flight).encode(family.encode_family(&label(q))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "request_latency_seconds",
            "From the avail ring to the used ring",
            None,
            MetricType::Histogram,
        )?;
        for (q, figures) in queues.iter().enumerate() {
            let h = &figures.histogram;
            // The encoder takes each bucket's own count and adds them up itself.
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
                .iter()
                .map(|&le| (le, h.count_below(ns(le))))
                .chain([(f64::INFINITY, h.count())])
                .map(|(le, cumulative)| {
                    (le, cumulative - std::mem::replace(&mut below, cumulative))
                })
                .collect();
            let sum = h.mean() * h.count() as f64 / 1e9;
            family
                .encode_family(&label(q))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum,
                    h.count(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

/// A counter family with one sample per queue, `value` of its figures.
fn per_queue<N: EncodeCounterValue + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    queues: &[Figures],
    value: impl Fn(&Figures) -> N,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (q, figures) in queues.iter().enumerate() {
        let labels = [("queue", q.to_string())];
        ConstCounter::new(value(figures)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Seconds as whole nanoseconds (the bounds above are exact enough).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the bounds are small positive constants"
)]
fn ns(seconds: f64) -> u64 {
    (seconds * 1e9).round() as u64
}

/// The Prometheus text of what `served` has done.
pub fn render(served: &Served) -> String {
    let mut registry = Registry::with_prefix("vblkd");
    registry.register_collector(Box::new(Snapshot(served.stats())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}; pass --metrics 127.0.0.1:PORT with a free port")]
pub struct MetricsError {
    addr: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Serves `/metrics` on `addr` for the life of the process, each scrape the text `render`
/// makes (the vhost-user daemon's [`render`], the AoE target's own).
pub fn spawn(
    addr: &str,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> Result<(), MetricsError> {
    let server = tiny_http::Server::http(addr).map_err(|source| MetricsError {
        addr: addr.to_owned(),
        source,
    })?;
    std::thread::Builder::new()
        .name("vblkd-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let content_type = tiny_http::Header::from_bytes(
                        "Content-Type",
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .expect("a valid header");
                    tiny_http::Response::from_string(render()).with_header(content_type)
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                // A scraper that went away is not our problem.
                let _ = request.respond(response);
            }
        })
        .map_err(|source| MetricsError {
            addr: addr.to_owned(),
            source: Box::new(source),
        })?;
    Ok(())
}
