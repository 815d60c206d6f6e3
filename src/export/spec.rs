//! What `aoe-export` is told to export: `e<shelf>.<slot>=DISK`, named as Linux's `aoe` driver
//! names the device it makes (`/dev/etherd/e1.2`).

use crate::disk::DiskSpec;

/// One disk and the address it is exported at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSpec {
    pub shelf: u16,
    pub slot: u8,
    pub disk: DiskSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("'{0}' is not an export; write e<shelf>.<slot>=DISK, e.g. e1.1=/var/lib/disk.img (shelf 0-65534, slot 0-254)")]
    Syntax(String),
    #[error("e{shelf}.{slot}: {source}")]
    Disk {
        shelf: u16,
        slot: u8,
        source: crate::disk::SpecError,
    },
}

impl std::str::FromStr for ExportSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::Syntax(s.to_owned());
        let (address, disk) = s.split_once('=').ok_or_else(bad)?;
        let (shelf, slot) = aoe::parse_target_name(address).ok_or_else(bad)?;
        if disk.is_empty() {
            return Err(bad());
        }
        let disk = disk.parse().map_err(|source| SpecError::Disk {
            shelf,
            slot,
            source,
        })?;
        Ok(ExportSpec { shelf, slot, disk })
    }
}

impl std::fmt::Display for ExportSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "e{}.{}={}", self.shelf, self.slot, self.disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_written_as_the_linux_driver_names_them() {
        let spec: ExportSpec = "e1.2=/tmp/a.img".parse().unwrap();
        assert_eq!(
            spec,
            ExportSpec {
                shelf: 1,
                slot: 2,
                disk: DiskSpec::File("/tmp/a.img".into())
            }
        );
        assert_eq!(spec.to_string(), "e1.2=/tmp/a.img");
        assert_eq!(
            "e65534.254=null:1G".parse::<ExportSpec>().unwrap().disk,
            DiskSpec::Null { size: 1 << 30 }
        );
        for bad in [
            "1.2=/x",
            "e1.2",
            "e1=/x",
            "e1.2=",
            "e65535.1=/x",
            "e1.255=/x",
            "e1.x=/x",
        ] {
            assert!(bad.parse::<ExportSpec>().is_err(), "{bad}");
        }
        assert!(matches!(
            "e1.2=null:".parse::<ExportSpec>(),
            Err(SpecError::Disk { .. })
        ));
    }
}
