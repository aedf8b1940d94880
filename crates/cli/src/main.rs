//! `crm`: the service binary. Parses arguments and calls the library; nothing else.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use crm_api::config::Settings;
use crm_api::startup::{Application, open_database, random_password};
use crm_domain::clock::{Clock, SystemClock};
use crm_domain::passwords::Password;
use crm_domain::values::EmailAddress;

const USAGE: &str = "\
usage: crm <command>

commands:
  serve                         run the API (default); migrations are applied at start
  migrate                       apply pending database migrations, seal personal data
                                written in the clear by older versions, and exit
  openapi [--out FILE]          print the OpenAPI document (or write it to FILE)
  openapi --check FILE          fail when FILE differs from the document the code generates
  bootstrap --email EMAIL [--password-stdin]
                                create the first platform admin; prints a generated
                                password once unless one is read from standard input
  audit verify                  recompute every tenant's audit hash chain; fails on a break
  gdpr export-ledger            print the erasure ledger as JSON lines (keep it with backups)
  gdpr replay-erasures [--from FILE]
                                after restoring a backup: add the ledger entries from FILE
                                that the restored database lacks, then re-apply every erasure
  retention run                 apply every tenant's retention policies once
  worker                        deliver queued webhooks until stopped (beside or instead of
                                the server's own worker; set CRM_WORKER_INTERVAL_MS=0 on the
                                servers to leave delivery to dedicated workers)
  users reset-mfa --tenant SLUG --email EMAIL
                                remove a user's WebAuthn credentials and end their sessions
                                (recovery when the only admin lost their authenticator)
  keys list                     list signing keys (the last one signs)
  keys rotate                   add a new signing key; restart the service to use it
  keys remove KID               remove a key; its tokens fail after the next restart
  keys rotate-data-key          add a key-encryption key; restart every node to use it
  keys retire-data-key N        wrap every contact's data key (and every value sealed under a
                                key-encryption key) with the newest key, check nothing is left
                                under key N, then delete data-N.kek: erased people's leftovers
                                under it are gone
  help                          this text

configuration comes from CRM_* environment variables (see README.md)";

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("CRM_LOG", "info"))
        .format_timestamp_millis()
        .init();
}

/// mimalloc returns freed memory to the system (Argon2id's 12 MiB per sign-in would otherwise
/// stay resident per glibc arena) and allocates faster on the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Transparent huge pages make the allocator's sparse arenas resident 2 MiB at a time
    // (measured with `make bench`: 51 MB idle with them, 32 MB without; sign-in bursts 107 →
    // 89 MB). Off for this process; where the kernel refuses, nothing else changes.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let command = args.first().map(String::as_str).unwrap_or("serve");
    let rest = &args[args.len().min(1)..];
    match command {
        "serve" => serve(),
        "migrate" => migrate(),
        "openapi" => openapi(rest),
        "bootstrap" => bootstrap(rest),
        "audit" if rest.first().map(String::as_str) == Some("verify") => audit_verify(),
        "gdpr" if rest.first().map(String::as_str) == Some("replay-erasures") => {
            replay_erasures(&rest[1..])
        }
        "gdpr" if rest.first().map(String::as_str) == Some("export-ledger") => export_ledger(),
        "retention" if rest.first().map(String::as_str) == Some("run") => retention_run(),
        "keys" => keys(rest),
        "worker" => worker(),
        "users" if rest.first().map(String::as_str) == Some("reset-mfa") => reset_mfa(&rest[1..]),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

use actix_web::rt as actix_rt;

fn serve() -> anyhow::Result<()> {
    init_logging();
    let settings = Settings::from_env()?;
    let addr = settings.listen_addr.clone();
    actix_rt::System::new().block_on(async move {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mut app = Application::build(settings, clock).await?;
        if let Some(creds) = app.take_first_run_credentials() {
            // Printed once to the terminal, never logged or stored.
            println!();
            println!("  First start. These passwords are shown only now.");
            println!();
            println!(
                "  Platform admin (signs in with WebAuthn as well, enrolled at first sign-in):"
            );
            println!("    tenant:   platform");
            println!("    email:    {}", creds.email);
            println!("    password: {}", creds.password);
            println!();
            println!("  Demo tenant admin (password alone; for the README quick start):");
            println!("    tenant:   {}", creds.demo_tenant);
            println!("    email:    {}", creds.demo_email);
            println!("    password: {}", creds.demo_password);
            println!();
        }
        log::info!(
            "listening on http://{} (docs at /docs, spec at /openapi.json)",
            display_addr(&addr, app.port())
        );
        app.run_until_stopped().await.context("server")
    })
}

fn display_addr(configured: &str, port: u16) -> String {
    match configured.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{port}"),
        None => configured.to_owned(),
    }
}

fn migrate() -> anyhow::Result<()> {
    init_logging();
    let settings = Settings::from_env()?;
    let vault = crm_api::keys::load_vault(&settings.key_dir, settings.may_generate_keys())?;
    runtime()?.block_on(async move {
        let db = open_database(&settings).await?;
        log::info!("migrations applied");
        let sealed = crm_domain::sealing::seal_older_rows(&db, &vault)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        log::info!("sealed personal data written in the clear: {sealed:?}");
        Ok(())
    })
}

fn openapi(args: &[String]) -> anyhow::Result<()> {
    let spec = serde_json::to_string_pretty(&crm_api::openapi_spec())? + "\n";
    match args {
        [] => {
            print!("{spec}");
            Ok(())
        }
        [flag, file] if flag == "--out" => {
            std::fs::write(file, spec).with_context(|| format!("writing {file}"))?;
            Ok(())
        }
        [flag, file] if flag == "--check" => {
            let committed = std::fs::read_to_string(PathBuf::from(file))
                .with_context(|| format!("reading {file}"))?;
            if committed == spec {
                println!("{file} matches the code");
                Ok(())
            } else {
                bail!(
                    "{file} differs from the spec the code generates; run `make openapi` and commit it"
                )
            }
        }
        _ => bail!("usage: crm openapi [--out FILE | --check FILE]"),
    }
}

fn bootstrap(args: &[String]) -> anyhow::Result<()> {
    init_logging();
    let (email, from_stdin) = match args {
        [flag, email] if flag == "--email" => (email.clone(), false),
        [flag, email, stdin] if flag == "--email" && stdin == "--password-stdin" => {
            (email.clone(), true)
        }
        _ => bail!("usage: crm bootstrap --email EMAIL [--password-stdin]"),
    };
    let email = EmailAddress::parse(&email).map_err(|e| anyhow::anyhow!("--email {}", e.detail))?;
    let (password, generated) = if from_stdin {
        let mut raw = String::new();
        std::io::stdin().read_to_string(&mut raw)?;
        (raw.trim_end_matches(['\n', '\r']).to_owned(), false)
    } else {
        (random_password(), true)
    };
    let password = Password::parse(&password, &[email.as_str()])
        .map_err(|e| anyhow::anyhow!("password {}", e.detail))?;
    let settings = Settings::from_env()?;
    runtime()?.block_on(async move {
        let db = open_database(&settings).await?;
        crm_domain::tenants::bootstrap_platform(&db, &email, &password, SystemClock.now())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("platform admin {email} created in tenant `platform`");
        if generated {
            println!("password (shown once): {}", password.expose());
        }
        Ok(())
    })
}

fn audit_verify() -> anyhow::Result<()> {
    init_logging();
    let settings = Settings::from_env()?;
    runtime()?.block_on(async move {
        let db = open_database(&settings).await?;
        let (checked, breaks) = crm_domain::audit::verify_chain(&db)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for b in &breaks {
            println!("tenant {} entry {}: {}", b.tenant_id, b.seq, b.reason);
        }
        if breaks.is_empty() {
            println!("audit trail intact: {checked} entries verified");
            Ok(())
        } else {
            bail!("audit trail broken in {} place(s)", breaks.len())
        }
    })
}

fn export_ledger() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    runtime()?.block_on(async move {
        let db = open_database(&settings).await?;
        for entry in crm_domain::gdpr::export_ledger(&db)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            println!("{}", serde_json::to_string(&entry)?);
        }
        Ok(())
    })
}

fn replay_erasures(args: &[String]) -> anyhow::Result<()> {
    init_logging();
    let entries: Vec<crm_domain::gdpr::LedgerEntry> = match args {
        [] => Vec::new(),
        [flag, file] if flag == "--from" => std::fs::read_to_string(file)
            .with_context(|| format!("reading {file}"))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {file}"))?,
        _ => bail!("usage: crm gdpr replay-erasures [--from FILE]"),
    };
    let settings = Settings::from_env()?;
    runtime()?.block_on(async move {
        let db = open_database(&settings).await?;
        let added = crm_domain::gdpr::import_ledger(&db, &entries)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if added > 0 {
            println!("added {added} ledger entr(ies) the restored database lacked");
        }
        let n = crm_domain::gdpr::replay_erasures(&db)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("re-applied {n} erasure(s)");
        Ok(())
    })
}

fn worker() -> anyhow::Result<()> {
    init_logging();
    let mut settings = Settings::from_env()?;
    if settings.worker_interval_ms == 0 {
        settings.worker_interval_ms = 1000;
    }
    let secret_box = std::sync::Arc::new(crm_api::keys::SecretBox::load(
        &settings.key_dir,
        settings.may_generate_keys(),
    )?);
    let vault = Arc::new(crm_api::keys::load_vault(
        &settings.key_dir,
        settings.may_generate_keys(),
    )?);
    runtime()?.block_on(async move {
        let db = open_database(&settings).await?;
        log::info!("delivery worker started");
        let worker = crm_api::worker::Worker {
            db,
            secret_box,
            vault,
            settings,
            clock: Arc::new(SystemClock),
        };
        tokio::select! {
            () = worker.run_forever() => {}
            _ = tokio::signal::ctrl_c() => log::info!("delivery worker stopped"),
        }
        Ok(())
    })
}

fn reset_mfa(args: &[String]) -> anyhow::Result<()> {
    let usage = "usage: crm users reset-mfa --tenant SLUG --email EMAIL";
    let (tenant, email) = match args {
        [a, t, b, e] if a == "--tenant" && b == "--email" => (t.clone(), e.clone()),
        _ => bail!(usage),
    };
    init_logging();
    let settings = Settings::from_env()?;
    runtime()?.block_on(async move {
        let db = open_database(&settings).await?;
        let removed = crm_domain::mfa::reset_mfa_by_email(&db, &tenant, &email, SystemClock.now())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("removed {removed} credential(s); the user enrols again at the next sign-in");
        Ok(())
    })
}

fn retention_run() -> anyhow::Result<()> {
    init_logging();
    let settings = Settings::from_env()?;
    let vault = crm_api::keys::load_vault(&settings.key_dir, settings.may_generate_keys())?;
    runtime()?.block_on(async move {
        let db = open_database(&settings).await?;
        let reports = crm_domain::retention::run_all(&db, &vault, SystemClock.now())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for r in &reports {
            println!(
                "tenant {}: erased {}, redacted {}, held {}",
                r.tenant_id,
                r.erased.len(),
                r.redacted.len(),
                r.held.len()
            );
        }
        println!(
            "retention applied to {} tenant(s) with due records",
            reports.len()
        );
        Ok(())
    })
}

/// Wraps every data key, and seals every KEK-sealed value, with the newest KEK (passes until
/// one changes nothing), then counts what is still under key `id`.
fn retire(settings: &Settings, id: u16) -> anyhow::Result<(crm_domain::sealing::Rewrapped, u64)> {
    let vault = crm_api::keys::load_vault(&settings.key_dir, false)?;
    runtime()?.block_on(async move {
        let db = open_database(settings).await?;
        let mut done = crm_domain::sealing::Rewrapped::default();
        for _ in 0..5 {
            let pass = crm_domain::sealing::rewrap_all(&db, &vault)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            done.data_keys += pass.data_keys;
            done.values += pass.values;
            if pass == crm_domain::sealing::Rewrapped::default() {
                break;
            }
        }
        let left = crm_domain::sealing::count_under(&db, id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((done, left))
    })
}

fn keys(args: &[String]) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let dir = &settings.key_dir;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["list"] => {
            for kid in crm_api::keys::list_kids(dir)? {
                println!("{kid}");
            }
            Ok(())
        }
        ["rotate"] => {
            let kid = crm_api::keys::generate_key(dir)?;
            println!(
                "added signing key {kid}; restart the service to sign with it (older keys keep verifying)"
            );
            Ok(())
        }
        ["remove", kid] => {
            crm_api::keys::remove_key(dir, kid)?;
            println!("removed {kid}; tokens it signed are refused after the next restart");
            Ok(())
        }
        ["rotate-data-key"] => {
            // Only the file: nodes read keys at start, and a key wrapped with one a node has not
            // loaded would not open there. The re-wrap comes with `retire-data-key`.
            let id = crm_api::keys::generate_kek(dir)?;
            println!(
                "added key-encryption key {id}; restart every node (they wrap new data keys with it \
                 from then on), then run `crm keys retire-data-key N` for each older key once no \
                 backup that needs it is kept"
            );
            Ok(())
        }
        ["retire-data-key", id] => {
            let id: u16 = id.parse().context("a key-encryption key id is a number")?;
            if crm_api::keys::list_keks(dir)?.last() == Some(&id) {
                bail!("data-{id}.kek is the newest key-encryption key; rotate first");
            }
            let (done, left) = retire(&settings, id)?;
            if left > 0 {
                bail!(
                    "{left} keys or values are still under key {id} (written meanwhile, e.g. by a node \
                     that has not restarted since the rotation): restart every node and run this again"
                );
            }
            crm_api::keys::remove_kek(dir, id)?;
            println!(
                "wrapped {} data keys and {} values with the newest key; nothing is left under key {id}; \
                 deleted data-{id}.kek: what it wrapped in old row versions, WAL and backups (erased \
                 people's data among it) cannot be opened any more",
                done.data_keys, done.values
            );
            Ok(())
        }
        _ => bail!(
            "usage: crm keys list | rotate | remove KID | rotate-data-key | retire-data-key N"
        ),
    }
}
