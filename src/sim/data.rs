//! The simulated tenant: machines and alerts generated from their index alone, so that
//! every run (whatever the seed) sees the same ids, names and dates.

use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2025-01-15T12:00:00Z: the "now" of the generated data.
const DATA_EPOCH: i64 = 1_736_942_400;

const OS: [(&str, &str); 6] = [
    ("Windows11", "10.0.22631"),
    ("Windows10", "10.0.19045"),
    ("WindowsServer2022", "10.0.20348"),
    ("WindowsServer2019", "10.0.17763"),
    ("Linux", "5.15"),
    ("macOS", "14.4"),
];
const HEALTH: [&str; 5] = [
    "Active",
    "Active",
    "Active",
    "Inactive",
    "ImpairedCommunication",
];
const RISK: [&str; 5] = ["None", "Low", "Medium", "High", "Informational"];
const EXPOSURE: [&str; 4] = ["None", "Low", "Medium", "High"];
const TAGS: [&str; 5] = ["Finance", "HR", "Engineering", "Servers", "VIP"];
const SEVERITY: [&str; 4] = ["Informational", "Low", "Medium", "High"];
const STATUS: [&str; 3] = ["New", "InProgress", "Resolved"];
const CATEGORY: [&str; 5] = [
    "Malware",
    "SuspiciousActivity",
    "CredentialAccess",
    "LateralMovement",
    "Execution",
];
const SOURCE: [&str; 3] = [
    "WindowsDefenderAtp",
    "WindowsDefenderAv",
    "AutomatedInvestigation",
];

/// SplitMix64: a good, tiny mixer for deterministic data.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One machine, serialized with the API's field names.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Machine {
    pub id: String,
    pub computer_dns_name: String,
    pub first_seen: String,
    pub last_seen: String,
    pub os_platform: &'static str,
    pub version: &'static str,
    pub os_processor: &'static str,
    pub last_ip_address: String,
    pub last_external_ip_address: String,
    pub health_status: &'static str,
    pub onboarding_status: &'static str,
    pub device_value: &'static str,
    pub rbac_group_name: &'static str,
    pub risk_score: &'static str,
    pub exposure_level: &'static str,
    pub is_aad_joined: bool,
    pub aad_device_id: Option<String>,
    pub defender_av_status: &'static str,
    pub machine_tags: Vec<String>,
}

pub(crate) fn machines(n: usize) -> Vec<Machine> {
    (0..n).map(machine).collect()
}

fn machine(i: usize) -> Machine {
    let h = mix(i as u64 ^ 0x6d61_6368_696e_6573);
    let pick = |salt: u64, len: usize| (mix(h ^ salt) % len as u64) as usize;
    let (os, version) = OS[pick(1, OS.len())];
    let tags = match pick(2, 8) {
        0..=2 => vec![],
        k => vec![TAGS[k % TAGS.len()].to_owned()],
    };
    let aad = pick(3, 3) != 0;
    Machine {
        id: hex40(i as u64),
        computer_dns_name: format!("ws-{i:05}.contoso.local"),
        first_seen: iso8601(DATA_EPOCH - 86_400 * 90 - (i as i64 % 1000) * 600, 0),
        last_seen: iso8601(DATA_EPOCH - (mix(h ^ 4) % 86_400) as i64, 0),
        os_platform: os,
        version,
        os_processor: "x64",
        last_ip_address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        last_external_ip_address: format!("203.0.113.{}", i % 254 + 1),
        health_status: HEALTH[pick(5, HEALTH.len())],
        onboarding_status: "Onboarded",
        device_value: "Normal",
        rbac_group_name: "UnassignedGroup",
        risk_score: RISK[pick(6, RISK.len())],
        exposure_level: EXPOSURE[pick(7, EXPOSURE.len())],
        is_aad_joined: aad,
        aad_device_id: aad.then(|| uuid_from(mix(h ^ 8), mix(h ^ 9))),
        defender_av_status: "Updated",
        machine_tags: tags,
    }
}

/// One alert, serialized with the API's field names.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Alert {
    pub id: String,
    pub incident_id: u64,
    pub investigation_id: Option<u64>,
    pub assigned_to: Option<String>,
    pub severity: &'static str,
    pub status: &'static str,
    pub classification: Option<String>,
    pub determination: Option<String>,
    pub detection_source: &'static str,
    pub category: &'static str,
    pub title: String,
    pub description: String,
    pub alert_creation_time: String,
    pub first_event_time: String,
    pub last_event_time: String,
    pub last_update_time: String,
    pub resolved_time: Option<String>,
    pub machine_id: Option<String>,
    pub computer_dns_name: Option<String>,
    pub comments: Vec<serde_json::Value>,
}

pub(crate) fn alerts(n: usize, machines: &[Machine]) -> Vec<Alert> {
    (0..n)
        .map(|i| {
            let h = mix(i as u64 ^ 0x616c_6572_7473);
            let machine =
                (!machines.is_empty()).then(|| &machines[(h % machines.len() as u64) as usize]);
            let created = DATA_EPOCH - (i as i64) * 1_800 - (h % 1_800) as i64;
            let status = STATUS[(mix(h ^ 1) % 3) as usize];
            let category = CATEGORY[(mix(h ^ 2) % CATEGORY.len() as u64) as usize];
            Alert {
                id: format!(
                    "da{:018}_{}",
                    638_000_000_000_000_000 + i as u64,
                    h as u32 as i32
                ),
                incident_id: 1000 + i as u64 / 3,
                investigation_id: (h % 2 == 0).then_some(5000 + i as u64),
                assigned_to: None,
                severity: SEVERITY[(mix(h ^ 3) % 4) as usize],
                status,
                classification: None,
                determination: None,
                detection_source: SOURCE[(mix(h ^ 4) % 3) as usize],
                category,
                title: format!("Simulated {category} alert {i}"),
                description: "Generated by the quotagate simulator.".to_owned(),
                alert_creation_time: iso8601(created, 0),
                first_event_time: iso8601(created - 120, 0),
                last_event_time: iso8601(created - 60, 0),
                last_update_time: iso8601(created + 300, 0),
                resolved_time: (status == "Resolved").then(|| iso8601(created + 3_600, 0)),
                machine_id: machine.map(|m| m.id.clone()),
                computer_dns_name: machine.map(|m| m.computer_dns_name.clone()),
                comments: Vec::new(),
            }
        })
        .collect()
}

/// The 40 hex digits of machine `i`.
pub(crate) fn hex40(i: u64) -> String {
    let a = mix(i ^ 0x1d);
    let b = mix(i ^ 0x2e);
    let c = mix(i ^ 0x3f) >> 32;
    format!("{a:016x}{b:016x}{c:08x}")
}

/// A UUID-shaped (version 4) string from 128 bits.
pub(crate) fn uuid_from(a: u64, b: u64) -> String {
    let a = (a & !0xF000) | 0x4000;
    let b = (b & !(0xC000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

/// `2025-01-15T12:00:00Z`, with a 7-digit fraction when `nanos` is not zero.
pub(crate) fn iso8601(unix_secs: i64, nanos: u32) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if nanos != 0 {
        out.push_str(&format!(".{:07}", nanos / 100));
    }
    out.push('Z');
    out
}

/// The wall clock as ISO 8601.
pub(crate) fn iso_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    iso8601(d.as_secs() as i64, d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(DATA_EPOCH, 0), "2025-01-15T12:00:00Z");
        assert_eq!(
            iso8601(951_782_400, 500_000_000),
            "2000-02-29T00:00:00.5000000Z"
        );
        assert_eq!(iso8601(-1, 0), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn machines_are_deterministic_and_unique() {
        let a = machines(500);
        let b = machines(500);
        let ids: HashSet<_> = a.iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids.len(), 500);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.id, y.id);
            assert_eq!(x.id.len(), 40);
            assert!(x.id.bytes().all(|c| c.is_ascii_hexdigit()));
        }
        let alerts = alerts(10, &a);
        assert!(alerts.iter().all(|x| x.machine_id.is_some()));
    }

    #[test]
    fn uuids_look_like_uuids() {
        let u = uuid_from(mix(1), mix(2));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }
}
