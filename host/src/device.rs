//! Constraints and the device state they are checked against (SPEC section
//! 4): what work requires ([`Constraints`]), what the machine offers
//! ([`DeviceState`]), read from Linux where it exposes it
//! ([`DeviceState::read_linux`]) and overridable by the embedding program or
//! the manifest ([`DeviceOverrides`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The network a task needs (WorkManager's `NetworkType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkType {
    /// No network needed (default).
    #[default]
    NotRequired,
    /// Any working network.
    Connected,
    /// A network that is not metered.
    Unmetered,
    /// A network that is not roaming.
    NotRoaming,
    /// A metered network.
    Metered,
    /// An unmetered network, or a metered one that is temporarily unmetered.
    TemporarilyUnmetered,
}

// `ALL` is in code order: the store keeps a type as its index there.
crate::names::named_enum!(NetworkType {
    NotRequired => "not-required",
    Connected => "connected",
    Unmetered => "unmetered",
    NotRoaming => "not-roaming",
    Metered => "metered",
    TemporarilyUnmetered => "temporarily-unmetered",
});

impl NetworkType {
    /// The store's integer code.
    pub fn code(self) -> i64 {
        Self::ALL.iter().position(|t| *t == self).unwrap_or(0) as i64
    }

    /// From the store's integer code.
    pub fn from_code(code: i64) -> NetworkType {
        usize::try_from(code)
            .ok()
            .and_then(|c| Self::ALL.get(c))
            .copied()
            .unwrap_or_default()
    }

    /// Whether `network` satisfies this requirement.
    pub fn holds(self, n: &NetworkState) -> bool {
        match self {
            NetworkType::NotRequired => true,
            NetworkType::Connected => n.connected,
            NetworkType::Unmetered => n.connected && !n.metered,
            NetworkType::NotRoaming => n.connected && !n.roaming,
            NetworkType::Metered => n.connected && n.metered,
            NetworkType::TemporarilyUnmetered => n.connected && (!n.metered || n.temporarily_unmetered),
        }
    }
}

/// What a task requires before it may run (and keeps requiring while it
/// runs: a run whose constraint stops holding is stopped with
/// `constraint-lost` and retried).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraints {
    /// The network it needs.
    pub network: NetworkType,
    /// Only while charging (on mains power).
    pub charging: bool,
    /// Only while the battery is not low.
    pub battery_not_low: bool,
    /// Only while the device is idle.
    pub device_idle: bool,
    /// Only while storage is not low.
    pub storage_not_low: bool,
}

impl Constraints {
    /// The constraints that do not hold in `state`, by name.
    pub fn unmet(&self, state: &DeviceState) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.network.holds(&state.network) {
            out.push(match self.network {
                NetworkType::Unmetered => "network (unmetered)",
                NetworkType::NotRoaming => "network (not roaming)",
                NetworkType::Metered => "network (metered)",
                NetworkType::TemporarilyUnmetered => "network (temporarily unmetered)",
                _ => "network",
            });
        }
        if self.charging && !state.charging {
            out.push("charging");
        }
        if self.battery_not_low && state.battery_low {
            out.push("battery not low");
        }
        if self.device_idle && !state.idle {
            out.push("device idle");
        }
        if self.storage_not_low && state.storage_low {
            out.push("storage not low");
        }
        out
    }

    /// Whether every constraint holds in `state`.
    pub fn hold(&self, state: &DeviceState) -> bool {
        self.unmet(state).is_empty()
    }

    /// Whether there is any constraint at all.
    pub fn is_empty(&self) -> bool {
        *self == Constraints::default()
    }
}

/// The network as the host sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    /// An interface is up with a default route.
    pub connected: bool,
    /// The network is metered (from configuration; Linux does not say).
    pub metered: bool,
    /// The network is roaming (from configuration).
    pub roaming: bool,
    /// A metered network is temporarily unmetered (from configuration).
    pub temporarily_unmetered: bool,
}

/// The state constraints are checked against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// On mains power (or charging).
    pub charging: bool,
    /// The battery is below the low threshold.
    pub battery_low: bool,
    /// The network.
    pub network: NetworkState,
    /// Free space of the data directory is below the low threshold.
    pub storage_low: bool,
    /// The machine is idle (load below the threshold).
    pub idle: bool,
    /// What the readings were, for `workhost status`.
    pub readings: Readings,
}

/// Raw readings behind a [`DeviceState`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Readings {
    /// Battery level in percent, if there is a battery.
    pub battery_percent: Option<u8>,
    /// Mains power online, if the machine reports a mains supply.
    pub mains_online: Option<bool>,
    /// Interfaces with a default route.
    pub default_route_interfaces: Vec<String>,
    /// Free bytes of the data directory's file system.
    pub storage_free_bytes: Option<u64>,
    /// Total bytes of that file system.
    pub storage_total_bytes: Option<u64>,
    /// The 1-minute load average per CPU.
    pub load_per_cpu: Option<f64>,
}

impl Default for DeviceState {
    /// Everything available: charging, battery fine, connected and
    /// unmetered, storage fine, idle. What a host assumes when it cannot
    /// read the machine.
    fn default() -> Self {
        DeviceState {
            charging: true,
            battery_low: false,
            network: NetworkState {
                connected: true,
                ..NetworkState::default()
            },
            storage_low: false,
            idle: true,
            readings: Readings::default(),
        }
    }
}

/// When readings count as low or busy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Battery percent at or below which it is low (default 15, Android's).
    pub battery_low_percent: u8,
    /// Free bytes below which storage is low (default 512 MiB)...
    pub storage_low_bytes: u64,
    /// ...or free fraction below which it is low (default 0.05).
    pub storage_low_fraction: f64,
    /// 1-minute load per CPU below which the machine is idle (default 0.3).
    pub idle_load_per_cpu: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            battery_low_percent: 15,
            storage_low_bytes: 512 << 20,
            storage_low_fraction: 0.05,
            idle_load_per_cpu: 0.3,
        }
    }
}

/// Fields that replace what the machine reports; `None` keeps the reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceOverrides {
    /// Charging.
    pub charging: Option<bool>,
    /// Battery low.
    pub battery_low: Option<bool>,
    /// Network connected.
    pub connected: Option<bool>,
    /// Network metered (Linux cannot tell; default false).
    pub metered: Option<bool>,
    /// Network roaming (default false).
    pub roaming: Option<bool>,
    /// Metered network temporarily unmetered (default false).
    pub temporarily_unmetered: Option<bool>,
    /// Storage low.
    pub storage_low: Option<bool>,
    /// Device idle.
    pub idle: Option<bool>,
}

impl DeviceOverrides {
    /// Applies the overrides to `state`.
    pub fn apply(&self, mut state: DeviceState) -> DeviceState {
        let set = |field: &mut bool, value: Option<bool>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        set(&mut state.charging, self.charging);
        set(&mut state.battery_low, self.battery_low);
        set(&mut state.network.connected, self.connected);
        set(&mut state.network.metered, self.metered);
        set(&mut state.network.roaming, self.roaming);
        set(&mut state.network.temporarily_unmetered, self.temporarily_unmetered);
        set(&mut state.storage_low, self.storage_low);
        set(&mut state.idle, self.idle);
        state
    }
}

/// Where Linux exposes the machine's state; tests point these at fixtures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxPaths {
    /// `/sys/class/power_supply`.
    pub power_supply: PathBuf,
    /// `/proc/net/route`.
    pub net_route: PathBuf,
    /// `/sys/class/net`.
    pub net_class: PathBuf,
    /// `/proc/loadavg`.
    pub loadavg: PathBuf,
}

impl Default for LinuxPaths {
    fn default() -> Self {
        LinuxPaths {
            power_supply: "/sys/class/power_supply".into(),
            net_route: "/proc/net/route".into(),
            net_class: "/sys/class/net".into(),
            loadavg: "/proc/loadavg".into(),
        }
    }
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

impl DeviceState {
    /// Reads the machine: power supplies (a machine without any reports
    /// mains power, as servers and VMs do), interfaces that are up with a
    /// default route, free space of `data_dir`, and the load average.
    /// Metered, roaming and temporarily-unmetered come from overrides only.
    pub fn read_linux(paths: &LinuxPaths, data_dir: &Path, t: &Thresholds) -> DeviceState {
        let mut r = Readings::default();
        let (mut mains, mut battery_charging) = (None, false);
        if let Ok(entries) = std::fs::read_dir(&paths.power_supply) {
            for e in entries.flatten() {
                let dir = e.path();
                match read_trim(&dir.join("type")).as_deref() {
                    Some("Mains") | Some("USB") => {
                        let online = read_trim(&dir.join("online")).as_deref() == Some("1");
                        mains = Some(mains.unwrap_or(false) || online);
                    }
                    Some("Battery") => {
                        if let Some(p) = read_trim(&dir.join("capacity")).and_then(|c| c.parse::<u8>().ok()) {
                            r.battery_percent = Some(r.battery_percent.map_or(p, |q: u8| q.min(p)));
                        }
                        battery_charging |= matches!(
                            read_trim(&dir.join("status")).as_deref(),
                            Some("Charging") | Some("Full")
                        );
                    }
                    _ => {}
                }
            }
        }
        r.mains_online = mains;
        let charging = mains.unwrap_or(r.battery_percent.is_none()) || battery_charging;
        let battery_low = r.battery_percent.is_some_and(|p| p <= t.battery_low_percent) && !charging;

        if let Some(routes) = read_trim(&paths.net_route) {
            for line in routes.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let (Some(iface), Some(dest), Some(flags)) = (cols.first(), cols.get(1), cols.get(3)) else {
                    continue;
                };
                let up_flag = u32::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1);
                let oper = read_trim(&paths.net_class.join(iface).join("operstate"));
                let iface_up = matches!(oper.as_deref(), Some("up") | Some("unknown") | None);
                if *dest == "00000000"
                    && up_flag
                    && iface_up
                    && !r.default_route_interfaces.contains(&iface.to_string())
                {
                    r.default_route_interfaces.push(iface.to_string());
                }
            }
        }

        let mut storage_low = false;
        if let Ok(s) = rustix::fs::statvfs(data_dir) {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let total = s.f_blocks.saturating_mul(s.f_frsize);
            r.storage_free_bytes = Some(free);
            r.storage_total_bytes = Some(total);
            storage_low =
                free < t.storage_low_bytes || (total > 0 && (free as f64) < t.storage_low_fraction * total as f64);
        }

        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        r.load_per_cpu = read_trim(&paths.loadavg)
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
            .map(|l| l / cpus);
        let idle = r.load_per_cpu.is_none_or(|l| l < t.idle_load_per_cpu);

        DeviceState {
            charging,
            battery_low,
            network: NetworkState {
                connected: !r.default_route_interfaces.is_empty(),
                ..NetworkState::default()
            },
            storage_low,
            idle,
            readings: r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_types_follow_workmanager() {
        let n = |connected, metered, temp| NetworkState {
            connected,
            metered,
            roaming: false,
            temporarily_unmetered: temp,
        };
        let cases = [
            (NetworkType::NotRequired, n(false, false, false), true),
            (NetworkType::Connected, n(false, false, false), false),
            (NetworkType::Connected, n(true, true, false), true),
            (NetworkType::Unmetered, n(true, true, false), false),
            (NetworkType::Unmetered, n(true, false, false), true),
            (NetworkType::Metered, n(true, false, false), false),
            (NetworkType::Metered, n(true, true, false), true),
            (NetworkType::TemporarilyUnmetered, n(true, true, false), false),
            (NetworkType::TemporarilyUnmetered, n(true, true, true), true),
            (
                NetworkType::NotRoaming,
                NetworkState {
                    connected: true,
                    roaming: true,
                    ..n(true, false, false)
                },
                false,
            ),
        ];
        for (t, state, holds) in cases {
            assert_eq!(t.holds(&state), holds, "{t:?} on {state:?}");
            assert_eq!(NetworkType::from_code(t.code()), t);
            assert_eq!(NetworkType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn unmet_constraints_are_named() {
        let c = Constraints {
            network: NetworkType::Unmetered,
            charging: true,
            battery_not_low: true,
            device_idle: true,
            storage_not_low: true,
        };
        let none = DeviceState {
            charging: false,
            battery_low: true,
            network: NetworkState {
                connected: true,
                metered: true,
                ..NetworkState::default()
            },
            storage_low: true,
            idle: false,
            readings: Readings::default(),
        };
        assert_eq!(
            c.unmet(&none),
            [
                "network (unmetered)",
                "charging",
                "battery not low",
                "device idle",
                "storage not low"
            ]
        );
        assert!(c.hold(&DeviceState::default()));
    }

    #[test]
    fn linux_readings_from_fixture_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let ps = dir.join("power_supply");
        for (name, kind, extra) in [
            ("AC", "Mains", ("online", "0")),
            ("BAT0", "Battery", ("capacity", "12")),
        ] {
            std::fs::create_dir_all(ps.join(name)).unwrap();
            std::fs::write(ps.join(name).join("type"), kind).unwrap();
            std::fs::write(ps.join(name).join(extra.0), extra.1).unwrap();
        }
        std::fs::write(ps.join("BAT0/status"), "Discharging").unwrap();
        std::fs::write(
            dir.join("route"),
            "Iface\tDestination\tGateway\tFlags\nwlan0\t00000000\t0102A8C0\t0003\neth9\t0000A8C0\t00000000\t0001\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("net/wlan0")).unwrap();
        std::fs::write(dir.join("net/wlan0/operstate"), "up").unwrap();
        std::fs::write(dir.join("loadavg"), "1.80 1.0 1.0 1/100 42").unwrap();
        let paths = LinuxPaths {
            power_supply: ps,
            net_route: dir.join("route"),
            net_class: dir.join("net"),
            loadavg: dir.join("loadavg"),
        };
        let s = DeviceState::read_linux(&paths, &dir, &Thresholds::default());
        assert!(!s.charging && s.battery_low, "{s:?}");
        assert_eq!(s.readings.battery_percent, Some(12));
        assert!(s.network.connected);
        assert_eq!(s.readings.default_route_interfaces, ["wlan0"]);
        let cpus = std::thread::available_parallelism().unwrap().get() as f64;
        assert_eq!(s.idle, 1.80 / cpus < 0.3);
        assert!(s.readings.storage_free_bytes.is_some());

        std::fs::write(dir.join("net/wlan0/operstate"), "down").unwrap();
        std::fs::write(paths.power_supply.join("AC/online"), "1").unwrap();
        let s = DeviceState::read_linux(&paths, &dir, &Thresholds::default());
        assert!(!s.network.connected, "a route on a down interface is no connection");
        assert!(s.charging && !s.battery_low);
    }
}
