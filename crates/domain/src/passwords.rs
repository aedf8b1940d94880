//! Passwords done right: NIST SP 800-63B rules (length, no composition rules, a blocklist),
//! Argon2id with OWASP parameters, and a dummy verification for unknown accounts so that the
//! time an answer takes does not tell whether an account exists.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;

use crate::error::{DomainError, InvalidValue};

/// Single-factor passwords must be at least 15 characters (SP 800-63B-4 §3.1.1.2).
pub const MIN_LENGTH: usize = 15;
/// Long passphrases are welcome; the cap only bounds hashing work.
pub const MAX_LENGTH: usize = 256;

/// A password that met the policy. `Debug` never prints it.
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Common words and patterns behind breached passwords. A candidate is refused when, after
/// removing digits and symbols, it is nothing but repetitions of one of these.
const COMMON_WORDS: &[&str] = &[
    "password",
    "passw0rd",
    "passwort",
    "motdepasse",
    "contrasena",
    "qwerty",
    "qwertz",
    "azerty",
    "asdf",
    "asdfgh",
    "asdfghjkl",
    "zxcvbn",
    "zxcvbnm",
    "qwertyuiop",
    "qazwsx",
    "qazwsxedc",
    "letmein",
    "welcome",
    "admin",
    "administrator",
    "root",
    "login",
    "user",
    "guest",
    "test",
    "changeme",
    "secret",
    "iloveyou",
    "love",
    "monkey",
    "dragon",
    "master",
    "football",
    "baseball",
    "soccer",
    "hockey",
    "basketball",
    "superman",
    "batman",
    "starwars",
    "trustno",
    "sunshine",
    "princess",
    "shadow",
    "michael",
    "jennifer",
    "jordan",
    "hunter",
    "ranger",
    "buster",
    "thomas",
    "charlie",
    "summer",
    "winter",
    "spring",
    "autumn",
    "freedom",
    "whatever",
    "abc",
    "abcd",
    "abcdef",
    "abcdefgh",
    "abcdefghijklmnopqrstuvwxyz",
    "hello",
    "helloworld",
    "computer",
    "internet",
    "samsung",
    "google",
    "microsoft",
    "apple",
    "crm",
    "prospect",
    "prospectcrm",
    "company",
    "default",
    "temp",
    "temporary",
    "access",
    "master",
    "mustang",
    "pokemon",
    "cheese",
    "flower",
    "lovely",
    "killer",
    "pepper",
    "ginger",
    "cookie",
    "chocolate",
    "football",
    "a",
    "aa",
    "x",
    "q",
    "z",
    "p",
    "correcthorsebatterystaple",
];

/// Whole passwords seen again and again in breach corpora that pass the length rule.
const BREACHED: &[&str] = &[
    "123456789012345",
    "1234567890123456",
    "12345678901234567890",
    "1q2w3e4r5t6y7u8i",
    "1qaz2wsx3edc4rfv",
    "zaq12wsxcde34rfv",
    "1q2w3e4r5t6y7u8i9o0p",
    "q1w2e3r4t5y6u7i8",
    "0987654321098765",
    "111111111111111",
    "000000000000000",
    "147258369147258",
    "987654321987654",
];

impl Password {
    /// Applies the policy. `context` holds values the password must not merely repeat, such as
    /// the account's e-mail address and tenant.
    pub fn parse(raw: &str, context: &[&str]) -> Result<Password, InvalidValue> {
        let len = raw.chars().count();
        if len < MIN_LENGTH {
            return Err(InvalidValue::new(
                "password_too_short",
                format!(
                    "must be at least {MIN_LENGTH} characters; a passphrase of several words works well"
                ),
            ));
        }
        if len > MAX_LENGTH {
            return Err(InvalidValue::new(
                "password_too_long",
                format!("must be at most {MAX_LENGTH} characters"),
            ));
        }
        if is_common(raw, context) {
            return Err(InvalidValue::new(
                "password_too_common",
                "is too common or too easy to guess; choose a less predictable passphrase",
            ));
        }
        Ok(Password(raw.to_owned()))
    }

    /// A password given at login is checked as it is: the policy applies when one is set.
    pub fn unchecked(raw: &str) -> Password {
        Password(raw.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn is_common(raw: &str, context: &[&str]) -> bool {
    let lower = raw.to_lowercase();
    if BREACHED.contains(&lower.as_str()) {
        return true;
    }
    let letters: String = lower.chars().filter(|c| c.is_alphabetic()).collect();
    let alnum: String = lower.chars().filter(|c| c.is_alphanumeric()).collect();
    if letters.is_empty() {
        // Digits and symbols only: refuse repetitions and runs such as 1111…, 1234….
        return is_repetition(&alnum, 4) || is_run(&alnum) || alnum.len() < 4;
    }
    if is_repetition(&letters, 6) || is_run(&letters) {
        return true;
    }
    let words: Vec<String> = COMMON_WORDS
        .iter()
        .map(|w| (*w).to_owned())
        .chain(context.iter().flat_map(|c| {
            c.to_lowercase()
                .split(|ch: char| !ch.is_alphanumeric())
                .filter(|part| part.len() >= 3)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        }))
        .collect();
    words.iter().any(|w| {
        let w: String = w.chars().filter(|c| c.is_alphabetic()).collect();
        !w.is_empty()
            && letters.len().is_multiple_of(w.len())
            && letters == w.repeat(letters.len() / w.len())
    })
}

/// Whether `s` is one block of at most `max_block` characters repeated.
fn is_repetition(s: &str, max_block: usize) -> bool {
    let chars: Vec<char> = s.chars().collect();
    (1..=max_block.min(chars.len() / 2)).any(|block| {
        chars.len().is_multiple_of(block) && chars.chunks(block).all(|c| c == &chars[..block])
    })
}

/// Whether `s` is an ascending or descending run such as `abcdef` or `98765`.
fn is_run(s: &str) -> bool {
    let chars: Vec<u32> = s.chars().map(u32::from).collect();
    chars.len() > 2
        && (chars.windows(2).all(|w| w[1] == w[0] + 1)
            || chars.windows(2).all(|w| w[0] == w[1] + 1))
}

fn hasher() -> Result<Argon2<'static>, DomainError> {
    // OWASP Password Storage Cheat Sheet: Argon2id, m = 12 MiB, t = 3, p = 1 — one of its
    // equivalent configurations (19 MiB/t=2 is another); the smaller memory keeps sign-in
    // bursts within the memory budget at the same cost in time. Hashes made with other
    // parameters verify with their own (the PHC string carries them).
    let params = Params::new(12_288, 3, 1, None)
        .map_err(|e| DomainError::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Argon2 runs off the async workers on its own threads, one per core: a burst of sign-ins
/// neither stalls the other requests of a worker nor holds more than one 12 MiB block per
/// core. The threads are long-lived, so each reuses its block's memory from one hash to the
/// next (on tokio's blocking pool every new thread kept its own copy, and a burst's peak
/// memory depended on how many threads the pool happened to start).
async fn off_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DomainError> {
    type Job = Box<dyn FnOnce() + Send>;
    static POOL: OnceLock<std::sync::mpsc::Sender<Job>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for n in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                log::error!("could not start a password hashing thread: {e}");
            }
        }
        tx
    });
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // A request that went away while its job waited costs nothing more.
        if !reply.is_closed() {
            let _ = reply.send(work());
        }
    });
    pool.send(job)
        .map_err(|_| DomainError::Internal("password hashing is shut down".into()))?;
    answer
        .await
        .map_err(|_| DomainError::Internal("password hashing stopped".into()))
}

/// Whether a stored hash was made with other parameters than today's (it is replaced at the
/// next successful sign-in, so every account costs the same time to check as the dummy).
pub fn outdated(phc: &str) -> bool {
    let Ok(current) = hasher() else { return false };
    PasswordHash::new(phc).is_ok_and(|parsed| {
        let now = current.params();
        Params::try_from(&parsed).map_or(true, |p| {
            (p.m_cost(), p.t_cost(), p.p_cost()) != (now.m_cost(), now.t_cost(), now.p_cost())
        }) || parsed.algorithm.as_str() != "argon2id"
    })
}

/// Hashes a password into a PHC string (algorithm, parameters and salt included).
pub async fn hash_password(password: &Password) -> Result<String, DomainError> {
    let password = Password(password.0.clone());
    off_workers(move || hash_now(&password)).await?
}

/// Verifies a password against a stored PHC string; the comparison is constant-time.
pub async fn verify_password(password: &Password, phc: &str) -> bool {
    let (password, phc) = (Password(password.0.clone()), phc.to_owned());
    off_workers(move || verify_now(&password, &phc))
        .await
        .unwrap_or(false)
}

/// Spends the same work as a real verification, for accounts that do not exist.
pub async fn dummy_verify(password: &Password) {
    let password = Password(password.0.clone());
    let _ = off_workers(move || {
        static DUMMY: OnceLock<Option<String>> = OnceLock::new();
        let dummy =
            DUMMY.get_or_init(|| hash_now(&Password::unchecked("dummy-password-for-timing")).ok());
        if let Some(phc) = dummy {
            let _ = verify_now(&password, phc);
        }
    })
    .await;
}

fn hash_now(password: &Password) -> Result<String, DomainError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()?
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DomainError::Internal(format!("argon2 hash: {e}")))
}

fn verify_now(password: &Password, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(argon) = hasher() else {
        return false;
    };
    argon
        .verify_password(password.expose().as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_follows_nist() {
        assert_eq!(
            Password::parse("short", &[])
                .map(|_| ())
                .map_err(|e| e.code),
            Err("password_too_short")
        );
        for common in [
            "passwordpassword",
            "Password123456789!",
            "123456789012345",
            "aaaaaaaaaaaaaaaa",
            "abcdefghijklmnop",
            "qwertyqwertyqwerty",
            "1qaz2wsx3edc4rfv",
            "correct horse battery staple",
        ] {
            assert_eq!(
                Password::parse(common, &[]).map(|_| ()).map_err(|e| e.code),
                Err("password_too_common"),
                "{common}"
            );
        }
        assert!(Password::parse("acmeacmeacme2026!!", &["acme"]).is_err());
        // No composition rules: a long lower-case passphrase is fine.
        assert!(Password::parse("tangerine bicycle under the moon", &[]).is_ok());
    }

    #[tokio::test]
    async fn hashes_verify_and_differ() -> Result<(), DomainError> {
        let pw = Password::parse("tangerine bicycle under the moon", &[])
            .map_err(|e| DomainError::Internal(e.detail))?;
        let a = hash_password(&pw).await?;
        let b = hash_password(&pw).await?;
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$v=19$m=12288,t=3,p=1$"));
        assert!(verify_password(&pw, &a).await);
        assert!(
            !verify_password(&Password::unchecked("tangerine bicycle under the sun"), &a).await
        );
        Ok(())
    }

    #[test]
    fn hashes_with_other_parameters_are_outdated() -> Result<(), DomainError> {
        let old_params =
            Params::new(19_456, 2, 1, None).map_err(|e| DomainError::Internal(e.to_string()))?;
        let old = Argon2::new(Algorithm::Argon2id, Version::V0x13, old_params)
            .hash_password(b"tangerine bicycle", &SaltString::generate(&mut OsRng))
            .map_err(|e| DomainError::Internal(e.to_string()))?
            .to_string();
        assert!(outdated(&old));
        assert!(!outdated(&hash_now(&Password::unchecked(
            "tangerine bicycle"
        ))?));
        Ok(())
    }
}
