//! Configuration values and secrets: read through the `config` import, as
//! environment variables only where granted, and never left behind in a
//! log, an error, output, progress or `inspect`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use workhost::{ConfigValue, Data, Grants, REDACTED, RunOutcome, RunRequest, Value};
use workhost_tests::{Daemon, executor, guests, workhost, write_manifest};

const SECRET: &str = "s3cr3t-t0ken-value";

fn config() -> BTreeMap<String, ConfigValue> {
    BTreeMap::from([
        ("url".to_string(), ConfigValue::plain("https://example.com/feed")),
        ("token".to_string(), ConfigValue::secret(SECRET)),
    ])
}

async fn run(config: BTreeMap<String, ConfigValue>, config_env: bool, input: Data) -> (RunOutcome, Vec<Data>) {
    let handler = executor().load_file(guests::CONFIG_ECHO.as_ref()).unwrap();
    let mut r = RunRequest::new("config-echo");
    r.input = input;
    r.grants = Arc::new(Grants {
        config,
        config_env,
        ..Grants::default()
    });
    let progress = Arc::new(Mutex::new(Vec::new()));
    let sink = progress.clone();
    r.progress = Some(Arc::new(move |d: &Data| sink.lock().unwrap().push(d.clone())));
    let outcome = handler.run(r).await;
    let progress = progress.lock().unwrap().clone();
    (outcome, progress)
}

fn string(data: &Data, key: &str) -> String {
    match data.get(key) {
        Some(Value::String(s)) => s.clone(),
        other => panic!("{key}: {other:?} in {data}"),
    }
}

#[tokio::test]
async fn a_handler_reads_its_configuration_through_the_import_and_not_the_environment() {
    let (outcome, _) = run(config(), false, Data::new()).await;
    let out = outcome.output().cloned().expect("config-echo succeeds");
    assert_eq!(string(&out, "keys"), "token,url");
    assert_eq!(string(&out, "value_url"), "https://example.com/feed");
    assert_eq!(out.get("missing"), Some(&Value::Bool(true)));
    assert_eq!(string(&out, "env"), "", "no environment without the grant");

    let (outcome, _) = run(BTreeMap::new(), false, Data::new()).await;
    let out = outcome.output().cloned().unwrap();
    assert_eq!(string(&out, "keys"), "", "nothing granted, nothing seen");
}

#[tokio::test]
async fn config_env_makes_the_configuration_the_environment() {
    let (outcome, _) = run(config(), true, Data::new()).await;
    let out = outcome.output().cloned().unwrap();
    let env = string(&out, "env");
    assert!(env.contains("url=https://example.com/feed"), "{env}");
    // The guest saw the secret as `token=<value>`; its output is redacted.
    assert!(env.contains(&format!("token={REDACTED}")), "{env}");
    assert!(!env.contains(SECRET));
}

#[tokio::test]
async fn a_secret_reaches_the_guest_but_never_its_log_output_progress_or_error() {
    let (outcome, progress) = run(config(), false, Data::new().with("progress", true)).await;
    let out = outcome.output().cloned().unwrap();
    // The guest read the secret (it wrote it everywhere); what it left has
    // the marker in its place.
    assert_eq!(string(&out, "value_token"), REDACTED);
    let log: Vec<&str> = outcome.log.iter().map(|l| l.message.as_str()).collect();
    for prefix in ["config token=", "stdout token=", "stderr token="] {
        let line = format!("{prefix}{REDACTED}");
        assert!(log.contains(&line.as_str()), "{line} not in {log:?}");
    }
    assert!(
        log.iter().any(|l| l.contains("url=https://example.com/feed")),
        "plain values are not redacted"
    );
    assert_eq!(progress.len(), 1);
    assert_eq!(
        string(&progress[0], "values"),
        format!("{REDACTED},https://example.com/feed")
    );

    let (failed, _) = run(config(), false, Data::new().with("fail", true)).await;
    let error = failed.error().expect("config-echo fails when asked");
    assert!(error.contains(REDACTED) && !error.contains(SECRET), "{error}");

    for outcome in [&outcome, &failed] {
        assert!(!outcome.to_json().to_string().contains(SECRET), "{}", outcome.to_json());
    }
    assert!(!format!("{:?}", config()).contains(SECRET), "Debug shows a secret");
}

fn manifest_with(dir: &Path, handler: &str) -> std::path::PathBuf {
    let m = write_manifest(dir);
    let mut text = std::fs::read_to_string(&m).unwrap();
    text.push_str(handler);
    std::fs::write(&m, text).unwrap();
    m
}

#[test]
fn the_manifest_grants_config_and_secrets_and_refuses_bad_ones_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |body: &str| {
        let text = format!("[handlers.c]\ncomponent = {:?}\n{body}", guests::CONFIG_ECHO);
        workhost::parse_manifest(&text, &dir.path().join("workhost.toml"), None)
    };
    let config = parse(
        "config_env = true\n[handlers.c.config]\nurl = \"u\"\n[handlers.c.secrets]\nliteral = \"x1\"\nfrom_env = { env = \"PATH\" }\n",
    )
    .unwrap();
    let grants = &config.handlers[0].grants;
    assert!(grants.config_env);
    assert_eq!(grants.config["url"], ConfigValue::plain("u"));
    assert_eq!(grants.config["literal"], ConfigValue::secret("x1"));
    assert_eq!(
        grants.config["from_env"],
        ConfigValue::secret(std::env::var("PATH").unwrap())
    );

    for (body, names) in [
        (
            "[handlers.c.secrets]\nt = { env = \"WORKHOST_TEST_NEVER_SET\" }\n",
            &["handlers.c.secrets.t", "WORKHOST_TEST_NEVER_SET"][..],
        ),
        (
            "[handlers.c.config]\n\"bad-key\" = \"v\"\n",
            &["handlers.c.config.bad-key", "not a name"][..],
        ),
        (
            "[handlers.c.config]\nk = \"v\"\n[handlers.c.secrets]\nk = \"w\"\n",
            &["handlers.c.secrets.k", "one or the other"][..],
        ),
        (
            "[handlers.c.secrets]\nt = \"\"\n",
            &["handlers.c.secrets.t", "empty"][..],
        ),
        ("[handlers.c.config]\nn = 3\n", &["line 4", "n = 3"][..]),
        (
            "[handlers.c.secrets]\nt = { file = \"x\" }\n",
            &["line 4", "a secret: a string, or { env = \"VARIABLE\" }"][..],
        ),
    ] {
        let message = parse(body).unwrap_err().to_string();
        for name in names {
            assert!(message.contains(name), "{body}: {message}");
        }
    }
}

#[test]
fn serve_keeps_secrets_out_of_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest_with(
        dir.path(),
        &format!(
            "\n[handlers.cfg]\ncomponent = {:?}\n[handlers.cfg.config]\nurl = \"plain\"\n[handlers.cfg.secrets]\ntoken = {SECRET:?}\n",
            guests::CONFIG_ECHO
        ),
    );
    let _daemon = Daemon::start(&m);
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", m.to_str().unwrap()]);
        workhost(&all, dir.path())
    };
    let id = cli(&["enqueue", "cfg", "--task", "t", "--input", "fail=true"])
        .stdout
        .trim()
        .to_string();
    let start = std::time::Instant::now();
    let record = loop {
        let run = cli(&["inspect", &id, "--json"]);
        if run.json()["state"] == "failed" {
            break run.stdout;
        }
        assert!(start.elapsed().as_secs() < 30, "{run:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(record.contains(REDACTED), "{record}");
    assert!(record.contains("url=plain"), "{record}");
    assert!(!record.contains(SECRET), "{record}");
    let text = cli(&["inspect", &id]).stdout;
    assert!(!text.contains(SECRET) && text.contains(REDACTED), "{text}");
}

#[test]
fn exec_takes_config_values_and_secrets_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(workhost_tests::workhost_bin())
        .args([
            "exec",
            guests::CONFIG_ECHO,
            "--config-value",
            "url=https://x",
            "--secret",
            "token=WH_TEST_TOKEN",
            "--config-env",
            "--json",
        ])
        .env("WH_TEST_TOKEN", SECRET)
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("\"value_url\":\"https://x\""), "{stdout}");
    assert!(stdout.contains(&format!("\"value_token\":\"{REDACTED}\"")), "{stdout}");
    assert!(!stdout.contains(SECRET), "{stdout}");

    for (args, named) in [
        (&["--config-value", "novalue"][..], "KEY=VALUE"),
        (&["--config-value", "1x=v"][..], "not a name"),
        (&["--secret", "t=WH_TEST_NEVER_SET"][..], "WH_TEST_NEVER_SET"),
        (&["--secret", "t"][..], "KEY=ENV_VAR"),
    ] {
        let mut all = vec!["exec", guests::CONFIG_ECHO];
        all.extend(args);
        let run = workhost(&all, dir.path());
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(named), "{args:?}: {}", run.stderr);
    }
}
