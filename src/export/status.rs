//! What `aoe-export` tells its control socket: the exports (`info`), what each has done
//! (`stats`), and `resize`, whose new size initiators read at their next IDENTIFY.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ExportDisk;
use crate::disk::Resized;
use crate::service::status::{to_value, Command, Controlled, Failure, FailureClass};

/// An interface served on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub mac: String,
    pub sectors_per_frame: u8,
}

/// What a running target serves.
pub struct Exporting {
    pub exports: Vec<ExportDisk>,
    pub interfaces: Vec<InterfaceInfo>,
    pub buffer_count: u16,
}

/// What `info` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportInfo {
    pub version: String,
    pub interfaces: Vec<InterfaceInfo>,
    pub buffer_count: u16,
    pub exports: Vec<ExportEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEntry {
    /// `e<shelf>.<slot>`.
    pub name: String,
    pub disk: String,
    pub capacity: u64,
    pub read_only: bool,
    pub image_lock: Option<String>,
}

/// What `stats` answers: each export's counters, by `e<shelf>.<slot>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStats {
    pub exports: BTreeMap<String, BTreeMap<String, u64>>,
}

/// What `resize` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportResized {
    pub export: String,
    #[serde(flatten)]
    pub resized: Resized,
}

impl Exporting {
    pub fn info(&self) -> ExportInfo {
        ExportInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            interfaces: self.interfaces.clone(),
            buffer_count: self.buffer_count,
            exports: self
                .exports
                .iter()
                .map(|e| ExportEntry {
                    name: e.name(),
                    disk: e.disk_name.clone(),
                    capacity: e.disk.info().capacity.bytes(),
                    read_only: e.disk.info().read_only,
                    image_lock: e.disk.image_lock().map(str::to_owned),
                })
                .collect(),
        }
    }

    pub fn stats(&self) -> ExportStats {
        ExportStats {
            exports: self
                .exports
                .iter()
                .map(|e| {
                    let mut counters: BTreeMap<String, u64> = e
                        .counters
                        .values()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect();
                    // What the disk's engine on each interface did (io_uring: registering
                    // the receive ring).
                    for interface in 0..self.interfaces.len() {
                        let interface = u16::try_from(interface).unwrap_or(u16::MAX);
                        for (k, v) in e.disk.engine_counters(interface) {
                            *counters.entry(k.to_owned()).or_default() += v;
                        }
                    }
                    (e.name(), counters)
                })
                .collect(),
        }
    }

    /// Grows the one export (the protocol's resize names no disk): initiators see the new
    /// size at their next IDENTIFY (Linux's aoe driver: `aoe-revalidate`, or a new discovery).
    pub fn resize(&self, size: Option<u64>) -> Result<ExportResized, String> {
        let [export] = &self.exports[..] else {
            return Err(format!(
                "resize grows the one disk of a target that exports one; this one exports {}",
                self.exports.len()
            ));
        };
        let resized = crate::disk::resize(&*export.disk, size).map_err(|e| e.to_string())?;
        log::info!(
            "{} resized from {} to {} bytes",
            export.name(),
            resized.previous,
            resized.capacity
        );
        Ok(ExportResized {
            export: export.name(),
            resized,
        })
    }
}

impl Exporting {
    /// The Prometheus text of what the exports have done: `vblkd_aoe_export_<counter>`, one
    /// sample per export (label `export="e1.1"`).
    pub fn metrics(&self) -> String {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::MetricType;

        #[derive(Debug)]
        struct Snapshot(ExportStats);
        impl prometheus_client::collector::Collector for Snapshot {
            fn encode(
                &self,
                mut encoder: prometheus_client::encoding::DescriptorEncoder,
            ) -> Result<(), std::fmt::Error> {
                let Some(first) = self.0.exports.values().next() else {
                    return Ok(());
                };
                for name in first.keys() {
                    let help = format!("What each export has done: {}", name.replace('_', " "));
                    let mut family =
                        encoder.encode_descriptor(name, &help, None, MetricType::Counter)?;
                    for (export, counters) in &self.0.exports {
                        let labels = [("export", export.clone())];
                        ConstCounter::new(counters.get(name).copied().unwrap_or(0))
                            .encode(family.encode_family(&labels)?)?;
                    }
                }
                Ok(())
            }
        }
        let mut registry = prometheus_client::registry::Registry::with_prefix("vblkd_aoe_export");
        registry.register_collector(Box::new(Snapshot(self.stats())));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Controlled for Exporting {
    fn execute(&self, command: &Command) -> Result<serde_json::Value, Failure> {
        match command {
            Command::Info => Ok(to_value(self.info())),
            Command::Stats => Ok(to_value(self.stats())),
            Command::Resize { size } => self
                .resize(*size)
                .map(to_value)
                .map_err(|desc| Failure::new(FailureClass::ResizeFailed, desc)),
            Command::SetLimits(_) | Command::Resume => Err(Failure::new(
                FailureClass::Unsupported,
                "an AoE target has no I/O limits or error policy; initiators pace themselves",
            )),
        }
    }
}
