//! Replays the README's quick start verbatim against a fresh server, so the README cannot rot.

use crm_e2e::both;
use serde_json::Value;

fn quickstart_script() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("<!-- quickstart -->")
        .expect("README has a quick start");
    let end = readme
        .find("<!-- /quickstart -->")
        .expect("quick start ends");
    let section = &readme[start..end];
    let code_start = section.find("```sh\n").expect("sh block") + "```sh\n".len();
    let code_end = section[code_start..].find("```").unwrap() + code_start;
    section[code_start..code_end].to_owned()
}

both!(readme_quickstart_works_verbatim, |app| {
    let script = quickstart_script();
    assert!(script.contains("curl"), "the quick start uses curl");
    let output = tokio::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .env("CRM", &app.base)
        .env("DEMO_PASSWORD", &app.demo_password)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "quick start failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The last thing the quick start prints is the contact list with the created contact.
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    let list: Value = serde_json::from_str(last).unwrap();
    assert_eq!(list["data"][0]["email"], "grace@example.com", "{stdout}");
});
