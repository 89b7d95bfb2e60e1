//! Realistic Directory Insights events for the stand-ins, the demo, the tests and the benchmarks.
//!
//! It owns the shapes of the events of each service, modelled on real ones (see the `raw` fields of
//! `vectors/normalize/*.json`). Invariants it keeps:
//! - every raw text is valid JSON written the way a Go service writes it: `<`, `>`, `&` escaped as
//!   `\u003c`, `\u003e`, `\u0026`, non-ASCII left as UTF-8;
//! - each service keeps its real timestamp precision (radius: seconds; directory, systems: milliseconds;
//!   sso, ldap, mdm: nanoseconds), trailing zeros trimmed; `ApiEvent::timestamp_ns` is the instant the text
//!   says, so `ApiEvent::from_raw(event.raw)` gives back the same timestamp;
//! - ids have each service's real form (ObjectId, upper- or lower-case UUID; LDAP has none) and are unique
//!   per factory; everything is derived from the seed, so a seed always gives the same events.

use std::fmt::Write;

use chrono::{DateTime, Datelike, Timelike};

use super::jumpcloud::ApiEvent;

/// The services `mix` uses.
pub const SERVICES: &[&str] = &["directory", "sso", "radius", "ldap", "systems", "mdm"];

/// Relative weights of `SERVICES` in `mix`: most traffic is admin console and SSO activity.
const WEIGHTS: &[u32] = &[30, 25, 15, 15, 10, 5];

/// Makes events from a seeded random generator.
pub struct EventFactory {
    rng: fastrand::Rng,
    /// The ObjectId "machine and process" part, fixed per factory as in a real process.
    object_id_process: u64,
    /// The ObjectId counter: incremented per id, so two ids never collide within a second.
    object_id_counter: u32,
    organization: String,
}

/// A user as several services see it.
struct User {
    username: &'static str,
    first: &'static str,
    last: &'static str,
}

const USERS: &[User] = &[
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
type Geo = (
    &'static str,
    &'static str,
    f64,
    &'static str,
    &'static str,
    f64,
    &'static str,
);

const GEOS: &[Geo] = &[
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
type Agent = (
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

const AGENTS: &[Agent] = &[
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
const AGENT_HEADERS: &[&str] = &[
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:109.0) Gecko/20100101 Firefox/114.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/115.0.5790.110 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36 Edg/114.0.1823.82",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.5 Mobile/15E148 Safari/604.1",
    "curl/7.68.0 <scripted> & automated",
];

/// (display_label, name): labels with `&` show the Go escapes in the raw text.
const APPLICATIONS: &[(&str, &str)] = &[
    ("Google Workspace", "google"),
    ("Salesforce", "salesforce"),
    ("AT&T Business Portal", "att"),
    ("Slack", "slack"),
    ("R&D <Wiki>", "confluence"),
    ("Zoom", "zoom"),
];

const GROUPS: &[&str] = &[
    "All Users",
    "R&D <Paris>",
    "Sales & Marketing",
    "Équipe Comptabilité",
    "Engineering",
    "Contractors <external>",
];

const HOSTS: &[(&str, &str, &str)] = &[
    ("JDOE-LAPTOP", "Mac OS X", "13.4"),
    ("JDOE-DESKTOP", "Windows", "10.0.19045"),
    ("ZOE-MBP", "Mac OS X", "13.4.1"),
    ("BUILD-SRV-01", "Ubuntu", "22.04"),
    ("JOSÉ-PC", "Windows", "11"),
];

const DIRECTORY_TYPES: &[&str] = &[
    "admin_login_attempt",
    "user_update",
    "association_change",
    "user_create",
    "user_group_update",
    "user_login_attempt",
];

const MDM_COMMANDS: &[&str] = &[
    "DeviceInformation",
    "InstalledApplicationList",
    "ProfileList",
    "InstallProfile",
    "DeviceLock",
];

impl EventFactory {
    pub fn new(seed: u64) -> EventFactory {
        let mut rng = fastrand::Rng::with_seed(seed);
        let object_id_process = rng.u64(..1 << 40);
        let object_id_counter = rng.u32(..1 << 24);
        let organization = hex(&mut rng, 24);
        EventFactory {
            rng,
            object_id_process,
            object_id_counter,
            organization,
        }
    }

    /// One event of `service` at `timestamp_ns`, raw text as JumpCloud writes it. The timestamp is truncated
    /// to the service's precision (radius: seconds, directory and systems: milliseconds), and
    /// `ApiEvent::timestamp_ns` is the truncated value. An unknown service gets a generic event.
    pub fn event(&mut self, service: &str, timestamp_ns: i64) -> ApiEvent {
        let precision = precision_of(service);
        let timestamp_ns = timestamp_ns - timestamp_ns.rem_euclid(precision);
        let raw = match service {
            "directory" => self.directory(timestamp_ns),
            "sso" => self.sso(timestamp_ns),
            "radius" => self.radius(timestamp_ns),
            "ldap" => self.ldap(timestamp_ns),
            "systems" => self.systems(timestamp_ns),
            "mdm" => self.mdm(timestamp_ns),
            other => self.generic(other, timestamp_ns),
        };
        ApiEvent {
            raw,
            timestamp_ns,
            service: service.to_string(),
            visible_at: None,
        }
    }

    /// `count` events of a realistic mix of services spread evenly over [from_ns, to_ns).
    pub fn mix(&mut self, count: usize, from_ns: i64, to_ns: i64) -> Vec<ApiEvent> {
        let total_weight: u32 = WEIGHTS.iter().sum();
        let span = i128::from(to_ns.saturating_sub(from_ns).max(0));
        (0..count)
            .map(|index| {
                // Even slots, and a random place inside each, so that sub-second digits look real while
                // the events stay in order.
                let slot_start = span * index as i128 / count as i128;
                let slot_end = span * (index as i128 + 1) / count as i128;
                let jitter = if slot_end > slot_start {
                    self.rng
                        .i64(0..(slot_end - slot_start).min(i64::MAX as i128) as i64)
                } else {
                    0
                };
                let timestamp_ns = from_ns + slot_start as i64 + jitter;
                let mut pick = self.rng.u32(..total_weight);
                let mut service = SERVICES[0];
                for (name, weight) in SERVICES.iter().zip(WEIGHTS) {
                    if pick < *weight {
                        service = name;
                        break;
                    }
                    pick -= weight;
                }
                // Truncating to a coarse precision could move the event before `from_ns`: such rare events
                // use a nanosecond-precision service instead, so every event stays inside the range.
                if timestamp_ns - timestamp_ns.rem_euclid(precision_of(service)) < from_ns {
                    service = "sso";
                }
                self.event(service, timestamp_ns)
            })
            .collect()
    }

    /// An event whose raw text is about `bytes` long (for oversize tests): an `mdm_command_result` whose
    /// command output fills the space. The text is exactly `bytes` long unless the event without output
    /// is already longer.
    pub fn big_event(&mut self, timestamp_ns: i64, bytes: usize) -> ApiEvent {
        let base = self.mdm_with_output(timestamp_ns, "");
        let fill = bytes.saturating_sub(base.len());
        let mut padding = String::with_capacity(fill);
        const LINE: &str =
            "com.apple.application.bundle.identifier=installed;version=1.2.3;size=123456\\n";
        // `\n` is written as the two characters of its escape, as it appears in the output; cut on a whole
        // character so the escape is never split.
        while padding.len() < fill {
            let left = fill - padding.len();
            if left >= LINE.len() {
                padding.push_str(LINE);
            } else {
                padding.push_str(&"x".repeat(left));
            }
        }
        let raw = self.splice_output(&base, &padding);
        ApiEvent {
            raw,
            timestamp_ns,
            service: "mdm".to_string(),
            visible_at: None,
        }
    }

    fn splice_output(&self, base: &str, padding: &str) -> String {
        // The base has `"output":""`: put the padding between the quotes. The padding is already JSON text
        // (only plain characters and `\n` escapes), so it is inserted as is.
        const MARK: &str = "\"output\":\"\"";
        match base.find(MARK) {
            Some(at) => {
                let split = at + MARK.len() - 1;
                let mut raw = String::with_capacity(base.len() + padding.len());
                raw.push_str(&base[..split]);
                raw.push_str(padding);
                raw.push_str(&base[split..]);
                raw
            }
            None => base.to_string(),
        }
    }

    fn object_id(&mut self, timestamp_ns: i64) -> String {
        self.object_id_counter = (self.object_id_counter + 1) & 0xFF_FFFF;
        let seconds = timestamp_ns.div_euclid(1_000_000_000) as u32;
        format!(
            "{seconds:08x}{:010x}{:06x}",
            self.object_id_process, self.object_id_counter
        )
    }

    fn uuid(&mut self) -> String {
        super::uuid_text(&mut self.rng)
    }

    fn user(&mut self) -> &'static User {
        &USERS[self.rng.usize(..USERS.len())]
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.usize(..items.len())]
    }

    fn client_ip(&mut self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.rng.u8(1..224),
            self.rng.u8(..),
            self.rng.u8(..),
            self.rng.u8(1..255)
        )
    }

    fn geoip(&mut self, o: &mut Obj) {
        let (country, timezone, latitude, continent, region_name, longitude, region_code) =
            self.pick(GEOS);
        o.obj("geoip", |g| {
            g.str("country_code", country)
                .str("timezone", timezone)
                .num("latitude", latitude)
                .str("continent_code", continent)
                .str("region_name", region_name)
                .num("longitude", longitude)
                .str("region_code", region_code);
        });
    }

    fn useragent(&mut self, o: &mut Obj) {
        let (name, version, major, minor, patch, os, os_version, os_major, os_minor, device) =
            self.pick(AGENTS);
        let os_full = if os_version.is_empty() {
            os.to_string()
        } else {
            format!("{os} {os_version}")
        };
        o.obj("useragent", |u| {
            u.str("os", os).str("minor", minor);
            if !os_minor.is_empty() {
                u.str("os_minor", os_minor);
            }
            if !os_version.is_empty() {
                u.str("os_version", os_version).str("os_major", os_major);
            }
            u.str("version", version);
            if !patch.is_empty() {
                u.str("patch", patch);
            }
            u.str("os_full", &os_full)
                .str("major", major)
                .str("name", name)
                .str("os_name", os)
                .str("device", device);
        });
    }

    fn admin(&mut self, o: &mut Obj, timestamp_ns: i64) {
        let admin = self.user();
        let id = self.object_id(timestamp_ns);
        o.obj("initiated_by", |i| {
            i.str("id", &id)
                .str("type", "admin")
                .str("email", &format!("{}@example.com", admin.username));
        });
    }

    fn common_tail(&mut self, o: &mut Obj, service: &str) {
        let organization = self.organization.clone();
        let client_ip = self.client_ip();
        o.str("service", service)
            .str("organization", &organization)
            .str("@version", "1")
            .str("client_ip", &client_ip);
    }

    fn directory(&mut self, timestamp_ns: i64) -> String {
        let event_type = self.pick(DIRECTORY_TYPES);
        let mut out = String::with_capacity(1600);
        let mut o = Obj::open(&mut out);
        self.admin(&mut o, timestamp_ns);
        self.geoip(&mut o);
        self.useragent(&mut o);
        let target = self.user();
        let target_id = self.object_id(timestamp_ns);
        match event_type {
            "user_update" | "user_create" => {
                o.obj("resource", |r| {
                    r.str("id", &target_id)
                        .str("type", "user")
                        .str("username", target.username);
                });
                let old_group = self.pick(GROUPS);
                let new_group = self.pick(GROUPS);
                let from_id = self.object_id(timestamp_ns);
                let to_id = self.object_id(timestamp_ns);
                // About a third of user changes carry addresses, which makes them the 2-3 KB events.
                let with_addresses = self.rng.u8(..3) == 0;
                let address_ids: Vec<String> =
                    (0..4).map(|_| self.object_id(timestamp_ns)).collect();
                o.arr("changes", |changes| {
                    changes.obj(|c| {
                        c.str("field", "displayname")
                            .str("from", "")
                            .str("to", &format!("{} {}", target.first, target.last));
                    });
                    changes.obj(|c| {
                        c.str("field", "attributes");
                        c.arr("from", |a| {
                            a.obj(|x| {
                                x.str("name", "Division")
                                    .str("id", &from_id)
                                    .str("_id", &from_id)
                                    .str("value", old_group);
                            });
                        });
                        c.arr("to", |a| {
                            a.obj(|x| {
                                x.str("name", "Division")
                                    .str("id", &to_id)
                                    .str("_id", &to_id)
                                    .str("value", new_group);
                            });
                        });
                    });
                    if with_addresses {
                        changes.obj(|c| {
                            c.str("field", "addresses");
                            for (side, ids) in
                                [("from", &address_ids[..2]), ("to", &address_ids[2..])]
                            {
                                c.arr(side, |list| {
                                    for (id, kind) in ids.iter().zip(["home", "work"]) {
                                        list.obj(|a| {
                                            a.str("country", "FR")
                                                .str("poBox", "")
                                                .str("streetAddress", "54 rue des Petites Écuries")
                                                .str("postalCode", "75010")
                                                .str("locality", "Paris")
                                                .str("id", id)
                                                .str("_id", id)
                                                .str("region", "Île-de-France")
                                                .str("extendedAddress", "")
                                                .str("type", kind);
                                        });
                                    }
                                });
                            }
                        });
                    }
                    changes.obj(|c| {
                        c.str("field", "description").str("from", "").str(
                            "to",
                            "Moved to <new team> & given access to the shared drive",
                        );
                    });
                });
                o.str("auth_method", "session").raw("correlation", "{}");
            }
            "association_change" => {
                let host = self.pick(HOSTS);
                let system_id = self.object_id(timestamp_ns);
                o.obj("association", |a| {
                    a.str("op", "add").str("action_source", "manual");
                    a.obj("connection", |c| {
                        c.obj("from", |f| {
                            f.str("name", host.0)
                                .str("type", "system")
                                .str("object_id", &system_id);
                        });
                        c.obj("to", |t| {
                            t.str("name", target.username)
                                .str("type", "user")
                                .str("object_id", &target_id);
                        });
                    });
                    a.null("attributes");
                });
                o.str("auth_method", "session");
            }
            "user_group_update" => {
                let group = self.pick(GROUPS);
                o.obj("resource", |r| {
                    r.str("id", &target_id)
                        .str("type", "user_group")
                        .str("name", group);
                });
                o.arr("changes", |changes| {
                    changes.obj(|c| {
                        c.str("field", "description").str("from", "").str(
                            "to",
                            &format!("{group} — managed by {} {}", target.first, target.last),
                        );
                    });
                });
                o.str("auth_method", "session");
            }
            _ => {
                o.bool("mfa", self.rng.bool());
                let header = self.pick(AGENT_HEADERS);
                o.str("user_agent", header);
            }
        }
        let success = self.rng.u8(..10) != 0;
        o.str("event_type", event_type)
            .null("provider")
            .bool("success", success);
        self.common_tail(&mut o, "directory");
        let id = self.object_id(timestamp_ns);
        o.str("id", &id)
            .str("timestamp", &format_timestamp(timestamp_ns));
        o.close();
        out
    }

    fn sso(&mut self, timestamp_ns: i64) -> String {
        let user = self.user();
        let user_id = self.object_id(timestamp_ns);
        let (label, name) = self.pick(APPLICATIONS);
        let application_id = self.object_id(timestamp_ns);
        let host = self.pick(HOSTS);
        let system_id = self.object_id(timestamp_ns);
        let success = self.rng.u8(..5) != 0;
        let relay = self.rng.u32(..);
        let mut out = String::with_capacity(1400);
        let mut o = Obj::open(&mut out);
        o.obj("initiated_by", |i| {
            i.str("id", &user_id)
                .str("type", "user")
                .str("username", user.username);
        });
        o.str(
            "error_message",
            if success {
                ""
            } else {
                "not authorized for <application> & policy"
            },
        );
        self.geoip(&mut o);
        o.bool("sso_token_success", success);
        self.useragent(&mut o);
        o.obj("auth_context", |a| {
            a.obj("system", |s| {
                s.str("hostname", host.0)
                    .str("os", host.1)
                    .str("displayName", host.0)
                    .str("id", &system_id)
                    .str("version", host.2);
            });
            a.raw("auth_methods", "{}");
            a.arr("policies_applied", |p| {
                p.obj(|x| {
                    x.obj("metadata", |m| {
                        m.str("resource_type", "APPLICATION").str("action", "ALLOW");
                    });
                    x.str("name", "Global Policy").str("id", "");
                });
            });
        });
        o.bool("mfa", self.rng.bool()).str("event_type", "sso_auth");
        o.obj("application", |a| {
            a.str("display_label", label)
                .str("sso_type", "saml")
                .str("name", name)
                .str("id", &application_id)
                .str(
                    "sso_url",
                    &format!("https://sso.jumpcloud.com/saml2/{name}?RelayState={relay:08x}&SAMLRequest=fZJdT8Iw"),
                );
        });
        o.str("provider", "");
        self.common_tail(&mut o, "sso");
        let id = self.object_id(timestamp_ns);
        o.str("id", &id)
            .bool("idp_initiated", self.rng.bool())
            .str("timestamp", &format_timestamp(timestamp_ns));
        o.close();
        out
    }

    fn radius(&mut self, timestamp_ns: i64) -> String {
        let user = self.user();
        let success = self.rng.u8(..4) != 0;
        let id = self.uuid().to_uppercase();
        let mut out = String::with_capacity(1200);
        let mut o = Obj::open(&mut out);
        if !success {
            o.str("error_message", "mschap: MS-CHAP2-Response is incorrect");
        }
        o.obj("initiated_by", |i| {
            i.str("type", "user").str("username", user.username);
        });
        o.str("auth_type", "eap").str("nas_mfa_state", "DISABLED");
        self.geoip(&mut o);
        o.str("eap_type", "MSCHAPv2");
        o.obj("outer", |outer| {
            if !success {
                outer.str(
                    "error_message",
                    "eap_peap: The users session was previously rejected: returning reject (again.), eap: Failed continuing EAP PEAP (25) session. EAP sub-module failed: mschap: <reject>",
                );
            }
            outer.str("eap_type", "PEAP").str("username", user.username);
        });
        o.bool("mfa", false);
        o.obj("auth_meta", |m| {
            m.bool("user_password_enabled", true)
                .bool("device_cert_enabled", false)
                .bool("user_cert_enabled", false)
                .str("auth_idp", "JUMPCLOUD")
                .str("userid_type", "USERNAME");
        });
        o.str("event_type", "radius_auth_attempt")
            .bool("success", success);
        self.common_tail(&mut o, "radius");
        o.str("id", &id)
            .str("timestamp", &format_timestamp(timestamp_ns))
            .str("username", user.username);
        o.close();
        out
    }

    fn ldap(&mut self, timestamp_ns: i64) -> String {
        let user = self.user();
        let connection_id = hex(&mut self.rng, 16);
        let operation_number = self.rng.u32(1..40);
        let search = self.rng.bool();
        let organization = self.organization.clone();
        let base = format!("ou=Users,o={organization},dc=jumpcloud,dc=com");
        let dn = format!("uid={},{base}", user.username);
        let mut out = String::with_capacity(1000);
        let mut o = Obj::open(&mut out);
        o.obj("initiated_by", |i| {
            i.str("type", "user").str("username", user.username);
        });
        self.geoip(&mut o);
        o.str("auth_method", "simple")
            .str("base", &base)
            .str("dn", &dn)
            .str("connection_id", &connection_id)
            .num("operation_number", operation_number)
            .num("error_code", 0)
            .bool("start_tls", false)
            .bool("tls_established", true)
            .bool("mfa", false);
        if search {
            o.str(
                "filter",
                &format!(
                    "(&(objectClass=inetOrgPerson)(uid={})(!(memberOf=cn=Contractors <external>)))",
                    user.username
                ),
            )
            .str("scope", "wholeSubtree")
            .num("number_of_results", self.rng.u32(0..3))
            .str("operation_type", "search")
            .str("event_type", "ldap_search")
            .arr("attributes", |a| {
                a.str("uid").str("cn").str("mail").str("memberOf");
            });
        } else {
            o.str("operation_type", "bind")
                .str("event_type", "ldap_bind");
        }
        o.bool("success", true);
        self.common_tail(&mut o, "ldap");
        o.str("timestamp", &format_timestamp(timestamp_ns));
        o.close();
        out
    }

    fn systems(&mut self, timestamp_ns: i64) -> String {
        let user = self.user();
        let host = self.pick(HOSTS);
        let system_id = self.object_id(timestamp_ns);
        let id = self.uuid();
        let success = self.rng.u8(..6) != 0;
        let mut out = String::with_capacity(900);
        let mut o = Obj::open(&mut out);
        o.obj("initiated_by", |i| {
            i.str("type", "user").str("username", user.username);
        });
        o.obj("system", |s| {
            s.str("id", &system_id)
                .str("hostname", host.0)
                .str("displayName", host.0)
                .str("os", host.1)
                .str("version", host.2);
        });
        self.geoip(&mut o);
        o.str("process_name", "loginwindow")
            .str("auth_method", "password")
            .str("display_name", &format!("{} {}", user.first, user.last))
            .str(
                "message",
                if success {
                    "login succeeded"
                } else {
                    "login failed: bad password & account locked <3 attempts>"
                },
            )
            .bool("mfa", false)
            .str("event_type", "login_attempt")
            .bool("success", success);
        self.common_tail(&mut o, "systems");
        o.str("id", &id)
            .str("timestamp", &format_timestamp(timestamp_ns));
        o.close();
        out
    }

    fn mdm(&mut self, timestamp_ns: i64) -> String {
        let command = self.pick(MDM_COMMANDS);
        let output = format!("{command}: Acknowledged <{}>", self.rng.u32(..100000));
        self.mdm_with_output_and_command(timestamp_ns, command, &output)
    }

    fn mdm_with_output(&mut self, timestamp_ns: i64, output: &str) -> String {
        self.mdm_with_output_and_command(timestamp_ns, "InstalledApplicationList", output)
    }

    fn mdm_with_output_and_command(
        &mut self,
        timestamp_ns: i64,
        command: &str,
        output: &str,
    ) -> String {
        let host = self.pick(HOSTS);
        let system_id = self.object_id(timestamp_ns);
        let id = self.uuid();
        let command_uuid = self.uuid();
        let serial = hex(&mut self.rng, 12).to_uppercase();
        let mut out = String::with_capacity(1000 + output.len());
        let mut o = Obj::open(&mut out);
        o.obj("initiated_by", |i| {
            i.str("type", "system").str("id", &system_id);
        });
        o.obj("device", |d| {
            d.str("hostname", host.0)
                .str("os", host.1)
                .str("os_version", host.2)
                .str("serial_number", &serial)
                .str("system_id", &system_id);
        });
        o.str("event_type", "mdm_command_result")
            .str("command", command)
            .str("command_uuid", &command_uuid)
            .str("status", "Acknowledged");
        o.obj("command_result", |r| {
            r.str("output", output).num("exit_code", 0);
        });
        o.bool("success", true);
        self.common_tail(&mut o, "mdm");
        o.str("id", &id)
            .str("timestamp", &format_timestamp(timestamp_ns));
        o.close();
        out
    }

    fn generic(&mut self, service: &str, timestamp_ns: i64) -> String {
        let user = self.user();
        let id = self.uuid();
        let mut out = String::with_capacity(700);
        let mut o = Obj::open(&mut out);
        self.admin(&mut o, timestamp_ns);
        self.geoip(&mut o);
        o.obj("resource", |r| {
            r.str("type", service)
                .str("name", &format!("{} {}", user.first, user.last));
        });
        o.str("event_type", &format!("{service}_update"))
            .bool("success", true);
        self.common_tail(&mut o, service);
        o.str("id", &id)
            .str("timestamp", &format_timestamp(timestamp_ns));
        o.close();
        out
    }
}

/// The timestamp precision of a service, in nanoseconds.
fn precision_of(service: &str) -> i64 {
    match service {
        "radius" => 1_000_000_000,
        "directory" | "systems" => 1_000_000,
        "sso" | "ldap" | "mdm" => 1,
        _ => 1_000_000,
    }
}

/// RFC 3339 in UTC with the fraction's trailing zeros trimmed, as Go's `time.RFC3339Nano` writes it.
pub fn format_timestamp(timestamp_ns: i64) -> String {
    let seconds = timestamp_ns.div_euclid(1_000_000_000);
    let nanos = timestamp_ns.rem_euclid(1_000_000_000) as u32;
    let Some(time) = DateTime::from_timestamp(seconds, nanos) else {
        return "1970-01-01T00:00:00Z".to_string();
    };
    // Written by hand rather than with `format("%Y-%m-%dT%H:%M:%S")`: it is several times faster, and the
    // benchmarks generate a million events.
    let mut text = String::with_capacity(30);
    let _ = write!(
        text,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    if nanos > 0 {
        let mut digits = 9;
        let mut fraction = nanos;
        while fraction % 10 == 0 {
            fraction /= 10;
            digits -= 1;
        }
        let _ = write!(text, ".{fraction:0digits$}");
    }
    text.push('Z');
    text
}

fn hex(rng: &mut fastrand::Rng, digits: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdef";
    (0..digits)
        .map(|_| char::from(DIGITS[rng.usize(..16)]))
        .collect()
}

/// Appends `text` as a JSON string the way Go's encoding/json does: HTML-sensitive characters escaped as
/// `\u003c`, `\u003e`, `\u0026`, other non-ASCII kept as UTF-8.
fn push_go_string(out: &mut String, text: &str) {
    out.push('"');
    // Scan bytes and copy runs that need no escape in one go: this is the generator's hot loop. Every
    // character to escape is ASCII except U+2028 and U+2029 (E2 80 A8 / E2 80 A9 in UTF-8), so a run always
    // starts and ends on a character boundary.
    let bytes = text.as_bytes();
    let mut run_start = 0;
    let mut at = 0;
    while at < bytes.len() {
        let escape = match bytes[at] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b'<' => "\\u003c",
            b'>' => "\\u003e",
            b'&' => "\\u0026",
            0xE2 if bytes.get(at + 1) == Some(&0x80) && bytes.get(at + 2) == Some(&0xA8) => {
                "\\u2028"
            }
            0xE2 if bytes.get(at + 1) == Some(&0x80) && bytes.get(at + 2) == Some(&0xA9) => {
                "\\u2029"
            }
            byte if byte < 0x20 => "",
            _ => {
                at += 1;
                continue;
            }
        };
        out.push_str(&text[run_start..at]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", bytes[at]);
            at += 1;
        } else {
            out.push_str(escape);
            at += if bytes[at] == 0xE2 { 3 } else { 1 };
        }
        run_start = at;
    }
    out.push_str(&text[run_start..]);
    out.push('"');
}

/// Writes one JSON object into a string, member by member, without building a tree first.
struct Obj<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut String) -> Obj<'a> {
        out.push('{');
        Obj { out, empty: true }
    }

    fn close(self) {
        self.out.push('}');
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        // Keys are this module's own plain ASCII literals: no escaping needed (checked in debug builds).
        debug_assert!(key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'@'));
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        push_go_string(self.out, value);
        self
    }

    fn num(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.raw(key, if value { "true" } else { "false" })
    }

    fn null(&mut self, key: &str) -> &mut Self {
        self.raw(key, "null")
    }

    /// A member whose value is already JSON text.
    fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key);
        self.out.push_str(json);
        self
    }

    fn obj(&mut self, key: &str, fill: impl FnOnce(&mut Obj)) -> &mut Self {
        self.key(key);
        let mut inner = Obj::open(self.out);
        fill(&mut inner);
        inner.close();
        self
    }

    fn arr(&mut self, key: &str, fill: impl FnOnce(&mut Arr)) -> &mut Self {
        self.key(key);
        self.out.push('[');
        let mut inner = Arr {
            out: self.out,
            empty: true,
        };
        fill(&mut inner);
        self.out.push(']');
        self
    }
}

/// Writes one JSON array's elements.
struct Arr<'a> {
    out: &'a mut String,
    empty: bool,
}

impl Arr<'_> {
    fn comma(&mut self) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
    }

    fn str(&mut self, value: &str) -> &mut Self {
        self.comma();
        push_go_string(self.out, value);
        self
    }

    fn obj(&mut self, fill: impl FnOnce(&mut Obj)) -> &mut Self {
        self.comma();
        let mut inner = Obj::open(self.out);
        fill(&mut inner);
        inner.close();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::HashSet;

    const START: i64 = 1_686_838_870_343_344_450; // 2023-06-15T14:21:10.34334445Z

    fn parse(raw: &str) -> serde_json::Map<String, Value> {
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(object)) => object,
            other => panic!("not a JSON object ({other:?}): {raw}"),
        }
    }

    #[test]
    fn every_event_is_valid_json_with_its_timestamp_and_service() {
        let mut factory = EventFactory::new(42);
        for service in SERVICES.iter().copied().chain(["password_manager"]) {
            for i in 0..100 {
                let event = factory.event(service, START + i * 7_654_321);
                let object = parse(&event.raw);
                assert_eq!(object["service"], service);
                assert!(object["event_type"].is_string());
                assert!(object["organization"].is_string());
                assert!(object["initiated_by"].is_object());
                assert!(object["client_ip"].is_string());
                let again = ApiEvent::from_raw(event.raw.clone()).unwrap();
                assert_eq!(again.timestamp_ns, event.timestamp_ns, "{}", event.raw);
                assert_eq!(again.service, service);
                // Go writes these three escaped: they never appear bare.
                assert!(!event.raw.contains(['<', '>', '&']), "{}", event.raw);
            }
        }
    }

    #[test]
    fn ids_have_each_services_form_and_are_unique() {
        let mut factory = EventFactory::new(1);
        let mut seen = HashSet::new();
        let is_hex = |text: &str| text.chars().all(|c| c.is_ascii_hexdigit());
        for event in factory.mix(2000, START, START + 60_000_000_000) {
            let object = parse(&event.raw);
            match event.service.as_str() {
                "ldap" => {
                    assert!(!object.contains_key("id"));
                    assert!(object["connection_id"].is_string());
                    assert!(object["operation_number"].is_u64());
                    continue;
                }
                "directory" | "sso" => {
                    let id = object["id"].as_str().unwrap();
                    assert!(
                        id.len() == 24 && is_hex(id) && id == id.to_lowercase(),
                        "{id}"
                    );
                }
                "radius" => {
                    let id = object["id"].as_str().unwrap();
                    assert!(id.len() == 36 && id == id.to_uppercase(), "{id}");
                }
                "systems" | "mdm" => {
                    let id = object["id"].as_str().unwrap();
                    assert!(id.len() == 36 && id == id.to_lowercase(), "{id}");
                }
                other => panic!("unexpected service {other}"),
            }
            assert!(
                seen.insert(object["id"].as_str().unwrap().to_string()),
                "duplicate id"
            );
        }
    }

    #[test]
    fn timestamps_keep_each_services_precision() {
        let mut factory = EventFactory::new(3);
        let text = |raw: &str| parse(raw)["timestamp"].as_str().unwrap().to_string();
        assert_eq!(
            text(&factory.event("radius", START).raw),
            "2023-06-15T14:21:10Z"
        );
        assert_eq!(
            text(&factory.event("directory", START).raw),
            "2023-06-15T14:21:10.343Z"
        );
        assert_eq!(
            text(&factory.event("systems", START).raw),
            "2023-06-15T14:21:10.343Z"
        );
        assert_eq!(
            text(&factory.event("sso", START).raw),
            "2023-06-15T14:21:10.34334445Z"
        );
        assert_eq!(
            text(&factory.event("mdm", START + 50).raw),
            "2023-06-15T14:21:10.3433445Z"
        );
        assert_eq!(
            format_timestamp(1_686_838_870_000_000_000),
            "2023-06-15T14:21:10Z"
        );
        assert_eq!(
            format_timestamp(1_686_838_870_300_000_000),
            "2023-06-15T14:21:10.3Z"
        );
        assert_eq!(
            factory.event("radius", START).timestamp_ns,
            1_686_838_870_000_000_000
        );
    }

    #[test]
    fn go_escapes_and_utf8_survive_literally() {
        let mut factory = EventFactory::new(8);
        let raws: Vec<String> = factory
            .mix(2000, START, START + 3_600_000_000_000)
            .into_iter()
            .map(|event| event.raw)
            .collect();
        for escape in ["\\u003c", "\\u003e", "\\u0026"] {
            let with = raws.iter().filter(|raw| raw.contains(escape)).count();
            assert!(with > 200, "{escape} in only {with} events");
        }
        assert!(raws
            .iter()
            .any(|raw| raw.contains("José") || raw.contains("Müller")));
        assert!(raws.iter().any(|raw| raw.contains("Zoë")));
        // Parsing decodes the escapes: the raw text holds them literally, the value the characters.
        let sample = raws.iter().find(|raw| raw.contains("\\u0026")).unwrap();
        let decoded = serde_json::to_string(&parse(sample)).unwrap();
        assert!(decoded.contains('&') && !decoded.contains("\\u0026"));
    }

    #[test]
    fn sizes_look_real() {
        let mut factory = EventFactory::new(5);
        let events = factory.mix(2000, START, START + 3_600_000_000_000);
        let sizes: Vec<usize> = events.iter().map(|event| event.raw.len()).collect();
        let average = sizes.iter().sum::<usize>() / sizes.len();
        let smallest = sizes.iter().min().copied().unwrap_or_default();
        let largest = sizes.iter().max().copied().unwrap_or_default();
        assert!((700..=1500).contains(&average), "average {average}");
        assert!(smallest >= 400 && largest <= 3000, "{smallest}..{largest}");
    }

    #[test]
    fn mix_spreads_over_the_range_in_order_with_every_service() {
        let mut factory = EventFactory::new(9);
        let from = START + 123;
        let to = from + 10_000_000_000;
        let events = factory.mix(1000, from, to);
        assert_eq!(events.len(), 1000);
        assert!(events
            .iter()
            .all(|event| (from..to).contains(&event.timestamp_ns)));
        let services: HashSet<&str> = events.iter().map(|event| event.service.as_str()).collect();
        assert_eq!(services.len(), SERVICES.len());
        assert!(factory.mix(0, from, to).is_empty());
    }

    #[test]
    fn same_seed_same_events() {
        let a = EventFactory::new(77).mix(50, START, START + 1_000_000_000);
        let b = EventFactory::new(77).mix(50, START, START + 1_000_000_000);
        let c = EventFactory::new(78).mix(50, START, START + 1_000_000_000);
        let raws = |events: &[ApiEvent]| {
            events
                .iter()
                .map(|event| event.raw.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(raws(&a), raws(&b));
        assert_ne!(raws(&a), raws(&c));
    }

    #[test]
    fn strings_are_escaped_as_go_does() {
        let mut out = String::new();
        push_go_string(&mut out, "a\"b\\c\nd\u{1}e<f>g&hé\u{2028}");
        assert_eq!(out, r#""a\"b\\c\nd\u0001e\u003cf\u003eg\u0026hé\u2028""#);
        let decoded: String = serde_json::from_str(&out).unwrap();
        assert_eq!(decoded, "a\"b\\c\nd\u{1}e<f>g&hé\u{2028}");
    }

    #[test]
    fn uuids_have_the_version_4_layout() {
        let mut rng = fastrand::Rng::with_seed(1);
        let id = crate::standin::uuid_text(&mut rng);
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|part| part.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn big_event_has_the_asked_size_and_stays_valid() {
        let mut factory = EventFactory::new(4);
        for bytes in [100, 5_000, 250 * 1024, 250 * 1024 + 1, 300_000] {
            let event = factory.big_event(START, bytes);
            let object = parse(&event.raw);
            assert_eq!(object["service"], "mdm");
            assert_eq!(object["event_type"], "mdm_command_result");
            if bytes >= 1000 {
                assert_eq!(event.raw.len(), bytes);
            }
            assert_eq!(ApiEvent::from_raw(event.raw).unwrap().timestamp_ns, START);
        }
    }
}
