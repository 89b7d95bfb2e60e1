//! Realistic Directory Insights events for the stand-ins, the demo, the tests and the benchmarks.
//!
//! It owns the shapes of the events of each service, modelled on real ones (see the `raw` fields of
//! `vectors/normalize/*.json`). Invariants it keeps:
//! - every raw text is valid JSON written the way a Go service writes it (through `gojson`): `<`, `>`, `&`
//!   escaped as `\u003c`, `\u003e`, `\u0026`, non-ASCII left as UTF-8;
//! - each service keeps its real timestamp precision (radius: seconds; directory, systems: milliseconds;
//!   sso, ldap, mdm: nanoseconds), trailing zeros trimmed; `ApiEvent::timestamp_ns` is the instant the text
//!   says, so `ApiEvent::from_raw(event.raw)` gives back the same timestamp;
//! - ids have each service's real form (ObjectId, upper- or lower-case UUID; LDAP has none) and are unique
//!   per factory; everything is derived from the seed, so a seed always gives the same events.

use super::event::ApiEvent;
use super::fixtures::{
    User, AGENTS, AGENT_HEADERS, APPLICATIONS, DIRECTORY_TYPES, GEOS, GROUPS, HOSTS, MDM_COMMANDS,
    USERS,
};
use super::gojson::{format_timestamp, Obj};

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
        crate::standin::uuid_text(&mut self.rng)
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

fn hex(rng: &mut fastrand::Rng, digits: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdef";
    (0..digits)
        .map(|_| char::from(DIGITS[rng.usize(..16)]))
        .collect()
}
