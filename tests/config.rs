//! Configuration layering as the contract says: defaults, THRIVE_ENV file, --config
//! files in order, THRIVE__ environment; unknown keys named; secrets redacted.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use figment::Jail;
use std::path::PathBuf;
use thrive_gateway::config::{ConfigError, Settings, Sources};

const DEFAULT: &str = include_str!("../config/default.toml");

fn sources(env: Option<&str>, files: &[&str]) -> Sources {
    Sources {
        config_dir: PathBuf::from("config"),
        environment: env.map(str::to_owned),
        files: files.iter().map(PathBuf::from).collect(),
        use_environment: true,
    }
}

#[test]
fn later_layers_win_in_the_documented_order() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file("config/default.toml", DEFAULT)?;
        jail.create_file(
            "config/staging.toml",
            "[server]\nbind = \"0.0.0.0:1\"\nmax_body_bytes = 10\n",
        )?;
        jail.create_file("one.toml", "[server]\nbind = \"0.0.0.0:2\"\n")?;
        jail.create_file(
            "two.toml",
            "[server]\nbind = \"0.0.0.0:3\"\n[referral]\nminimum_age_years = 16\n",
        )?;

        let s = Settings::load(&sources(None, &[])).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.server.max_body_bytes, 1_048_576);

        let s = Settings::load(&sources(Some("staging"), &[])).unwrap();
        assert_eq!(s.server.bind, "0.0.0.0:1");
        assert_eq!(s.server.max_body_bytes, 10);

        let s = Settings::load(&sources(Some("staging"), &["one.toml", "two.toml"])).unwrap();
        assert_eq!(s.server.bind, "0.0.0.0:3", "the last --config file wins");
        assert_eq!(
            s.server.max_body_bytes, 10,
            "untouched keys keep earlier values"
        );
        assert_eq!(s.referral.minimum_age_years, 16);

        jail.set_env("THRIVE__SERVER__BIND", "0.0.0.0:4");
        jail.set_env("THRIVE__REFERRAL__MINIMUM_AGE_YEARS", "21");
        let s = Settings::load(&sources(Some("staging"), &["one.toml", "two.toml"])).unwrap();
        assert_eq!(s.server.bind, "0.0.0.0:4", "environment wins over files");
        assert_eq!(s.referral.minimum_age_years, 21);
        Ok(())
    });
}

#[test]
fn tables_keyed_by_id_can_be_set_from_the_environment() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file("config/default.toml", DEFAULT)?;
        jail.set_env("THRIVE__AUTH__CLIENTS__NEWGP__ROLE", "gp-system");
        jail.set_env("THRIVE__AUTH__CLIENTS__NEWGP__PRACTICES", "[\"Y90001\"]");
        let s = Settings::load(&sources(None, &[])).unwrap();
        assert!(s.auth.clients.contains_key("newgp"), "{:?}", s.auth.clients);
        Ok(())
    });
}

#[test]
fn unknown_keys_are_refused_by_name() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file("config/default.toml", DEFAULT)?;
        jail.create_file("typo.toml", "[server]\nbnd = \"0.0.0.0:2\"\n")?;
        let err = Settings::load(&sources(None, &["typo.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bnd"), "{err}");

        jail.set_env("THRIVE__DATABASE__URLL", "sqlite://x.db");
        let err = Settings::load(&sources(None, &[])).unwrap_err().to_string();
        assert!(err.contains("urll"), "{err}");
        Ok(())
    });
}

#[test]
fn bad_values_are_refused_with_their_place() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file("config/default.toml", DEFAULT)?;
        jail.create_file("role.toml", "[auth.clients.x]\nrole = \"superuser\"\n")?;
        let err = Settings::load(&sources(None, &["role.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("superuser") && err.contains("role"), "{err}");

        jail.create_file("db.toml", "[database]\nurl = \"mysql://x\"\n")?;
        let err = Settings::load(&sources(None, &["db.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.url"), "{err}");

        jail.create_file(
            "ods.toml",
            "[auth.clients.x]\nrole = \"gp-system\"\npractices = [\"Y9-1\"]\n",
        )?;
        assert!(Settings::load(&sources(None, &["ods.toml"])).is_err());

        for token in ["", "two words"] {
            jail.create_file(
                "metrics.toml",
                &format!("[telemetry]\nmetrics_token = \"{token}\"\n"),
            )?;
            let err = Settings::load(&sources(None, &["metrics.toml"]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("telemetry.metrics_token"), "{err}");
        }

        jail.create_file(
            "backoff.toml",
            "[delivery]\ninitial_backoff_ms = 5000\nmax_backoff_ms = 1000\n",
        )?;
        let err = Settings::load(&sources(None, &["backoff.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery.max_backoff_ms"), "{err}");

        for (file, body) in [
            ("restarts.toml", "[background]\nmax_restarts = 0\n"),
            (
                "restart-backoff.toml",
                "[background]\ninitial_backoff_ms = 5000\nmax_backoff_ms = 10\n",
            ),
        ] {
            jail.create_file(file, body)?;
            let err = Settings::load(&sources(None, &[file]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("background."), "{err}");
        }

        let err = Settings::load(&sources(None, &["missing.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
        Ok(())
    });
}

#[test]
fn every_wait_has_a_bound_by_default_and_none_can_be_switched_off() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file("config/default.toml", DEFAULT)?;
        let s = Settings::load(&sources(None, &[])).unwrap();
        assert_eq!(s.database.acquire_timeout_ms, 1_000);
        assert_eq!(s.server.ready_timeout_ms, 1_000);
        assert_eq!(s.server.client_request_timeout_ms, 5_000);
        assert_eq!(s.server.body_timeout_ms, 10_000);
        assert_eq!(s.server.body_min_bytes_per_second, 1_024);
        assert_eq!(s.server.max_header_bytes, 32_768);

        for (table, key) in [
            ("database", "acquire_timeout_ms"),
            ("server", "ready_timeout_ms"),
            ("server", "client_request_timeout_ms"),
            ("server", "body_timeout_ms"),
            ("server", "max_connections"),
            ("server", "max_header_bytes"),
        ] {
            jail.create_file("zero.toml", &format!("[{table}]\n{key} = 0\n"))?;
            let err = Settings::load(&sources(None, &["zero.toml"]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{table}.{key}")), "{err}");
        }
        Ok(())
    });
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file("config/default.toml", DEFAULT)?;
        jail.set_env(
            "THRIVE__DATABASE__URL",
            "postgres://gw:s3cr3t-pw@db.example/gw",
        );
        jail.set_env("THRIVE__TELEMETRY__METRICS_TOKEN", "m3tr1cs-t0ken");
        let s = Settings::load(&sources(None, &[])).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(!shown.contains("m3tr1cs-t0ken"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
        Ok(())
    });
}

#[test]
fn gp_callbacks_need_their_own_source_endpoint_and_id() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file("config/default.toml", DEFAULT)?;
        let callback = |id: &str, source: &str| {
            format!(
                "[gp_callbacks.{id}]\nsource_endpoint = \"{source}\"\nendpoint = \"https://gp.example/{id}\"\n"
            )
        };
        jail.create_file(
            "good.toml",
            &[
                callback("emis-dudley", "https://emis.example/fhir"),
                callback("tpp-walsall", "https://tpp.example/fhir"),
            ]
            .concat(),
        )?;
        let s = Settings::load(&sources(None, &["good.toml"])).unwrap();
        assert_eq!(s.gp_callbacks.len(), 2);

        // The same endpoint, once with a trailing slash.
        jail.create_file(
            "twice.toml",
            &[
                callback("emis-dudley", "https://emis.example/fhir"),
                callback("emis-walsall", "https://emis.example/fhir/"),
            ]
            .concat(),
        )?;
        let err = Settings::load(&sources(None, &["twice.toml"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gp_callbacks.emis-dudley")
                && err.contains("gp_callbacks.emis-walsall")
                && err.contains("source_endpoint"),
            "{err}"
        );

        jail.create_file(
            "clash.toml",
            &format!(
                "[providers.bchft]\nendpoint = \"https://bchft.example/referrals\"\n{}",
                callback("bchft", "https://emis.example/fhir")
            ),
        )?;
        let err = Settings::load(&sources(None, &["clash.toml"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gp_callbacks.bchft") && err.contains("provider id"),
            "{err}"
        );

        jail.create_file(
            "typo.toml",
            &format!(
                "{}format = \"json\"\n",
                callback("emis-dudley", "https://emis.example/fhir")
            ),
        )?;
        let err = Settings::load(&sources(None, &["typo.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("format"), "unknown keys are refused: {err}");
        Ok(())
    });
}

/// The shipped default and production layers, in the jail's `config/`.
fn production_layers(jail: &mut Jail) -> figment::error::Result<()> {
    jail.create_dir("config")?;
    jail.create_file("config/default.toml", DEFAULT)?;
    jail.create_file(
        "config/production.toml",
        include_str!("../config/production.toml"),
    )?;
    Ok(())
}

/// With `THRIVE_ENV=production`, key material this repository publishes is refused
/// wherever the settings name it, by content: under its own path, copied under
/// another name, re-cased, or in an environment variable. The error names the setting
/// and the published file, never the key. Outside production the same keys load.
#[test]
fn production_refuses_published_keys_wherever_they_are_named() {
    const ROOT: &str = env!("CARGO_MANIFEST_DIR");
    let published = |file: &str| std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
    Jail::expect_with(|jail| {
        production_layers(jail)?;
        // A deployment's own keys.
        jail.create_file("storage.key", &"5e".repeat(32))?;
        jail.create_file("audit.key", &"a7".repeat(32))?;
        jail.create_file(
            "own.toml",
            "[keys.storage]\nactive = \"v1\"\n[keys.storage.versions.v1]\nfile = \"storage.key\"\n\
             [keys.pseudonym.audit]\nactive = \"v1\"\n[keys.pseudonym.audit.versions.v1]\nfile = \"audit.key\"\n",
        )?;
        let production = |extra: &[&str]| {
            let files: Vec<&str> = ["own.toml"].iter().chain(extra).copied().collect();
            Settings::load(&sources(Some("production"), &files))
        };
        production(&[]).expect("a deployment's own keys are accepted");

        let refused = |extra: &[&str], setting: &str, file: &str| {
            let err = production(extra).expect_err("a published key is refused");
            let message = err.to_string();
            match err {
                ConfigError::PublishedKey(p) => {
                    assert_eq!((p.setting.as_str(), p.published), (setting, file))
                }
                other => panic!("{other}"),
            }
            assert!(
                message.contains(setting) && message.contains(file),
                "{message}"
            );
            let key = published(file);
            let key_line = key.lines().find(|l| l.len() > 20).unwrap_or(&key);
            assert!(
                !message.contains(key_line.trim()),
                "the key stays out of the message"
            );
        };

        // The development storage key, by its own path.
        jail.create_file(
            "dev-storage.toml",
            &format!("[keys.storage.versions.v1]\nfile = \"{ROOT}/config/dev/storage-v1.key\"\n"),
        )?;
        refused(
            &["dev-storage.toml"],
            "keys.storage.versions.v1",
            "config/dev/storage-v1.key",
        );

        // A test key copied under another name, upper-cased and padded, kept as an
        // older version.
        let test_key = published("tests/fixtures/keys/storage-v2.key");
        jail.create_file(
            "old.key",
            &format!("  {}\n", test_key.trim().to_uppercase()),
        )?;
        jail.create_file(
            "old-version.toml",
            "[keys.storage.versions.v0]\nfile = \"old.key\"\n",
        )?;
        refused(
            &["old-version.toml"],
            "keys.storage.versions.v0",
            "tests/fixtures/keys/storage-v2.key",
        );

        // A pseudonym key in an environment variable.
        jail.set_env(
            "BCHFT_PSEUDONYM_KEY",
            published("config/dev/pseudonym-bchft-v1.key").trim(),
        );
        jail.create_file(
            "env-pseudonym.toml",
            "[keys.pseudonym.bchft]\nactive = \"v1\"\n[keys.pseudonym.bchft.versions.v1]\nenv = \"BCHFT_PSEUDONYM_KEY\"\n",
        )?;
        refused(
            &["env-pseudonym.toml"],
            "keys.pseudonym.bchft.versions.v1",
            "config/dev/pseudonym-bchft-v1.key",
        );

        // The checkpoint signing key, and a public key whose private half is published.
        jail.create_file(
            "checkpoint.toml",
            &format!(
                "[audit.checkpoint]\nkey_id = \"k1\"\nprivate_key_file = \"{ROOT}/config/dev/audit-checkpoint.pem\"\npublic_key_file = \"{ROOT}/config/dev/audit-checkpoint.pub.pem\"\n"
            ),
        )?;
        refused(
            &["checkpoint.toml"],
            "audit.checkpoint.private_key_file",
            "config/dev/audit-checkpoint.pem",
        );
        jail.create_file(
            "verify-only.toml",
            &format!(
                "[audit.checkpoint]\nkey_id = \"k1\"\npublic_key_file = \"{ROOT}/tests/fixtures/keys/audit-checkpoint.pub.pem\"\n"
            ),
        )?;
        refused(
            &["verify-only.toml"],
            "audit.checkpoint.public_key_file",
            "tests/fixtures/keys/audit-checkpoint.pub.pem",
        );

        // The tests' TLS server key, copied; and the tests' CA trusted for a provider.
        jail.create_file("server.key", &published("tests/fixtures/tls/server.key"))?;
        jail.create_file(
            "tls.toml",
            "[server.tls]\ncert_file = \"missing-cert.pem\"\nkey_file = \"server.key\"\n",
        )?;
        refused(
            &["tls.toml"],
            "server.tls.key_file",
            "tests/fixtures/tls/server.key",
        );
        jail.create_file(
            "provider-ca.toml",
            &format!(
                "[providers.bchft]\nendpoint = \"https://bchft.example/referrals\"\n[providers.bchft.tls]\nca_file = \"{ROOT}/tests/fixtures/tls/ca.pem\"\n"
            ),
        )?;
        refused(
            &["provider-ca.toml"],
            "providers.bchft.tls.ca_file",
            "tests/fixtures/tls/ca.pem",
        );

        // The MESH sandbox's shared key, in an environment variable.
        jail.create_file("mesh-password", "a-deployment-s-own-password")?;
        jail.set_env(
            "MESH_SHARED_KEY",
            published("config/dev/mesh-sandbox-shared-key").trim(),
        );
        jail.create_file(
            "mesh.toml",
            "[mesh]\nurl = \"https://mesh.example\"\nmailbox = \"X26ABC1\"\n\
             password = { file = \"mesh-password\" }\nshared_key = { env = \"MESH_SHARED_KEY\" }\n",
        )?;
        refused(
            &["mesh.toml"],
            "mesh.shared_key",
            "config/dev/mesh-sandbox-shared-key",
        );

        // Outside production the published keys are what development runs on.
        let s = Settings::load(&sources(None, &["own.toml", "dev-storage.toml"]))
            .expect("development keys load outside production");
        assert!(s.keys.storage.is_some());
        Ok(())
    });
}

/// The console in production signs staff in through the identity provider only, and
/// seals sessions with a key every replica shares; an enabled console needs some way
/// to sign in anywhere.
#[test]
fn the_console_refuses_development_sign_in_in_production_and_needs_a_way_in() {
    Jail::expect_with(|jail| {
        production_layers(jail)?;
        let oidc = "[console.oidc]\nissuer = \"https://am.nhsidentity.spineservices.nhs.uk\"\nclient_id = \"thrive\"\n[console.oidc.roles]\nR8008 = \"operator\"\n";
        jail.create_file(
            "dev.toml",
            "[console]\nenabled = true\ndev_sign_in = true\n",
        )?;
        jail.create_file(
            "keyless.toml",
            &format!("[console]\nenabled = true\n{oidc}"),
        )?;
        jail.create_file(
            "whole.toml",
            &format!("[console]\nenabled = true\nsession_key_file = \"console.key\"\n{oidc}"),
        )?;
        jail.create_file("no-way-in.toml", "[console]\nenabled = true\n")?;
        jail.create_file("plain.toml", "[console]\nplain_http_localhost = true\n")?;
        for (file, setting) in [
            ("dev.toml", "console.dev_sign_in"),
            ("keyless.toml", "console.session_key_file"),
            ("plain.toml", "console.plain_http_localhost"),
        ] {
            let err = Settings::load(&sources(Some("production"), &[file]))
                .expect_err("refused in production");
            assert!(matches!(err, ConfigError::Production(_)), "{err}");
            assert!(err.to_string().contains(setting), "{err}");
            Settings::load(&sources(None, &[file])).expect("loads outside production");
        }
        Settings::load(&sources(Some("production"), &["whole.toml"]))
            .expect("a whole console configuration loads in production");
        let err = Settings::load(&sources(None, &["no-way-in.toml"])).expect_err("no way in");
        assert!(err.to_string().contains("console.oidc"), "{err}");
        Ok(())
    });
}

/// The development conveniences are refused with the published keys, at load, by
/// every command: the signing key `dev-token` uses and the sandbox receivers. Outside
/// production the same settings load.
#[test]
fn production_refuses_the_dev_signing_key_and_the_sandbox() {
    Jail::expect_with(|jail| {
        production_layers(jail)?;
        jail.create_file("signing.toml", "[dev]\nsigning_key_file = \"mine.pem\"\n")?;
        jail.create_file("sandbox.toml", "[sandbox]\nenabled = true\n")?;
        for (file, setting) in [
            ("signing.toml", "dev.signing_key_file"),
            ("sandbox.toml", "sandbox.enabled"),
        ] {
            let err = Settings::load(&sources(Some("production"), &[file]))
                .expect_err("refused in production");
            assert!(matches!(err, ConfigError::Production(_)), "{err}");
            let message = err.to_string();
            assert!(
                message.contains("THRIVE_ENV=production") && message.contains(setting),
                "{message}"
            );
            Settings::load(&sources(None, &[file])).expect("loads outside production");
        }
        Ok(())
    });
}

#[test]
fn recipient_limits_and_quiet_hours_are_checked_at_start_naming_the_key() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file("config/default.toml", DEFAULT)?;
        let provider = |extra: &str| {
            format!("[providers.bchft]\nendpoint = \"https://bchft.example/referrals\"\n{extra}\n")
        };
        jail.create_file(
            "good.toml",
            &provider("max_per_second = 2.5\nmax_in_flight = 4\nquiet_hours = [\"22:00-06:00\", \"12:00-12:30\"]"),
        )?;
        let s = Settings::load(&sources(None, &["good.toml"])).unwrap();
        let pace = s.providers["bchft"].pace();
        assert_eq!(
            (
                pace.max_per_second,
                pace.max_in_flight,
                pace.quiet_hours.len()
            ),
            (Some(2.5), Some(4), 2)
        );
        for (extra, key, why) in [
            ("quiet_hours = [\"22:00-6\"]", "quiet_hours", "22:00-6"),
            (
                "quiet_hours = [\"25:00-06:00\"]",
                "quiet_hours",
                "25:00-06:00",
            ),
            (
                "max_per_second = -1",
                "providers.bchft.max_per_second",
                "above 0",
            ),
            (
                "max_per_second = 0",
                "providers.bchft.max_per_second",
                "above 0",
            ),
            ("max_in_flight = -2", "max_in_flight", "-2"),
            (
                "max_in_flight = 0",
                "providers.bchft.max_in_flight",
                "at least 1",
            ),
        ] {
            jail.create_file("bad.toml", &provider(extra))?;
            let err = Settings::load(&sources(None, &["bad.toml"]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(why), "{extra}: {err}");
        }
        Ok(())
    });
}
