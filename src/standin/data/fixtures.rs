//! The fixed material the event factory draws from: users, places, browsers, applications, groups, hosts,
//! event types and MDM commands, modelled on real Directory Insights events.
//!
//! It owns only constant tables. Invariants it keeps: every table is non-empty (the factory picks from them
//! with `rng.usize(..len)`), and the strings deliberately include `<`, `>`, `&` and non-ASCII letters so that
//! the Go-style escaping and UTF-8 handling are exercised by every realistic mix.

/// A user as several services see it.
pub(super) struct User {
    pub(super) username: &'static str,
    pub(super) first: &'static str,
    pub(super) last: &'static str,
}

pub(super) const USERS: &[User] = &[
    User {
        username: "john.doe",
        first: "John",
        last: "Doe",
    },
    User {
        username: "jane.doe",
        first: "Jane",
        last: "Doe",
    },
    User {
        username: "jose.muller",
        first: "José",
        last: "Müller",
    },
    User {
        username: "zoe.lefevre",
        first: "Zoë",
        last: "Lefèvre",
    },
    User {
        username: "bjorn.angstrom",
        first: "Björn",
        last: "Ångström",
    },
    User {
        username: "maurice.moss",
        first: "Maurice",
        last: "Moss",
    },
    User {
        username: "roy.trenneman",
        first: "Roy",
        last: "Trenneman",
    },
    User {
        username: "jen.barber",
        first: "Jen",
        last: "Barber",
    },
    User {
        username: "francois.dupre",
        first: "François",
        last: "Dupré",
    },
    User {
        username: "hiroshi.tanaka",
        first: "宏",
        last: "田中",
    },
    User {
        username: "agnieszka.wojcik",
        first: "Agnieszka",
        last: "Wójcik",
    },
    User {
        username: "john.wick",
        first: "John",
        last: "Wick",
    },
];

/// (country_code, timezone, latitude, continent_code, region_name, longitude, region_code)
pub(super) type Geo = (
    &'static str,
    &'static str,
    f64,
    &'static str,
    &'static str,
    f64,
    &'static str,
);

pub(super) const GEOS: &[Geo] = &[
    ("FR", "Europe/Paris", 48.8323, "EU", "Paris", 2.4075, "75"),
    (
        "FR",
        "Europe/Paris",
        48.8138,
        "EU",
        "Val-de-Marne",
        2.3873,
        "94",
    ),
    (
        "US",
        "America/New_York",
        42.3797,
        "NA",
        "Massachusetts",
        -71.1034,
        "MA",
    ),
    (
        "IE",
        "Europe/Dublin",
        53.3379,
        "EU",
        "Leinster",
        -6.2591,
        "L",
    ),
    (
        "DE",
        "Europe/Berlin",
        52.5196,
        "EU",
        "Land Berlin",
        13.4069,
        "BE",
    ),
    (
        "BR",
        "America/Sao_Paulo",
        -23.5475,
        "SA",
        "São Paulo",
        -46.6361,
        "SP",
    ),
    ("JP", "Asia/Tokyo", 35.6893, "AS", "Tōkyō", 139.6899, "13"),
];

/// (name, version, major, minor, patch, os, os_version, os_major, os_minor, device)
pub(super) type Agent = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

pub(super) const AGENTS: &[Agent] = &[
    (
        "Chrome",
        "114.0.0.0",
        "114",
        "0",
        "0",
        "Mac OS X",
        "10.15.7",
        "10",
        "15",
        "Mac",
    ),
    (
        "Firefox", "114.0", "114", "0", "", "Mac OS X", "10.15", "10", "15", "Mac",
    ),
    (
        "Chrome",
        "115.0.5790.110",
        "115",
        "0",
        "5790",
        "Windows",
        "10",
        "10",
        "",
        "Other",
    ),
    (
        "Edge",
        "114.0.1823.82",
        "114",
        "0",
        "1823",
        "Windows",
        "10",
        "10",
        "",
        "Other",
    ),
    (
        "Mobile Safari",
        "16.5",
        "16",
        "5",
        "",
        "iOS",
        "16.5.1",
        "16",
        "5",
        "iPhone",
    ),
    (
        "curl", "7.68.0", "7", "68", "0", "Other", "", "", "", "Other",
    ),
];

/// The raw `User-Agent` header some events keep next to the parsed one.
pub(super) const AGENT_HEADERS: &[&str] = &[
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:109.0) Gecko/20100101 Firefox/114.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/115.0.5790.110 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36 Edg/114.0.1823.82",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.5 Mobile/15E148 Safari/604.1",
    "curl/7.68.0 <scripted> & automated",
];

/// (display_label, name): labels with `&` show the Go escapes in the raw text.
pub(super) const APPLICATIONS: &[(&str, &str)] = &[
    ("Google Workspace", "google"),
    ("Salesforce", "salesforce"),
    ("AT&T Business Portal", "att"),
    ("Slack", "slack"),
    ("R&D <Wiki>", "confluence"),
    ("Zoom", "zoom"),
];

pub(super) const GROUPS: &[&str] = &[
    "All Users",
    "R&D <Paris>",
    "Sales & Marketing",
    "Équipe Comptabilité",
    "Engineering",
    "Contractors <external>",
];

pub(super) const HOSTS: &[(&str, &str, &str)] = &[
    ("JDOE-LAPTOP", "Mac OS X", "13.4"),
    ("JDOE-DESKTOP", "Windows", "10.0.19045"),
    ("ZOE-MBP", "Mac OS X", "13.4.1"),
    ("BUILD-SRV-01", "Ubuntu", "22.04"),
    ("JOSÉ-PC", "Windows", "11"),
];

pub(super) const DIRECTORY_TYPES: &[&str] = &[
    "admin_login_attempt",
    "user_update",
    "association_change",
    "user_create",
    "user_group_update",
    "user_login_attempt",
];

pub(super) const MDM_COMMANDS: &[&str] = &[
    "DeviceInformation",
    "InstalledApplicationList",
    "ProfileList",
    "InstallProfile",
    "DeviceLock",
];
