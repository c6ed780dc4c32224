//! Command-line parsing and config resolution, shared by both shells (pure: no file reading).
//!
//! A shell parses `std::env::args().skip(1)` with [`parse`], reads the file named by
//! [`Args::config`] itself, and hands its text to [`resolve`], which applies the flag overrides:
//!
//! ```
//! use switchboard_shell::cli::{self, Command};
//!
//! let args = cli::parse(["--listen", "127.0.0.1:0", "--workers", "2"].map(String::from))?;
//! assert_eq!(args.command, Command::Serve);
//! let config = cli::resolve(&args, None)?;
//! assert_eq!((config.server.listen.as_str(), config.server.workers), ("127.0.0.1:0", 2));
//! # Ok::<(), String>(())
//! ```

use switchboard_core::Config;

/// What the process was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Command {
    /// Run the server.
    #[default]
    Serve,
    /// Validate the configuration and exit (0 when valid, 1 otherwise).
    CheckConfig,
    /// Print the effective configuration as TOML and exit.
    PrintConfig,
    /// Print the version and exit.
    Version,
    /// Print [`help`] and exit.
    Help,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Args {
    /// What to do.
    pub command: Command,
    /// `--config PATH`: the TOML file the shell must read; none means the built-in defaults.
    pub config: Option<String>,
    /// `--listen ADDR`: overrides `server.listen`.
    pub listen: Option<String>,
    /// `--workers N`: overrides `server.workers`.
    pub workers: Option<usize>,
}

/// The usage text for `--help`; `program` is the binary's name.
pub fn help(program: &str) -> String {
    format!(
        "\
Usage: {program} [OPTIONS]

A WebSocket hub. Without --config it serves the built-in defaults.

Options:
  --config PATH     read the configuration from PATH (TOML)
  --listen ADDR     listen on ADDR (e.g. 127.0.0.1:8080), overriding server.listen
  --workers N       run N worker threads (0 = one per core), overriding server.workers
  --check-config    validate the configuration, print any error with its line:column, exit 0/1
  --print-config    print the effective configuration as TOML and exit
  --version         print the version and exit
  --help            print this help and exit
"
    )
}

/// Parses the arguments after the program name. Both `--flag VALUE` and `--flag=VALUE` work.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args, String> {
    let mut parsed = Args::default();
    let mut commands: Vec<&'static str> = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.to_owned())),
            _ => (arg.clone(), None),
        };
        let command = match flag.as_str() {
            "--config" | "--listen" | "--workers" => {
                let Some(value) = inline.or_else(|| args.next()) else {
                    return Err(format!("{flag}: missing value (see --help)"));
                };
                set_value(&mut parsed, &flag, value)?;
                continue;
            }
            "--check-config" => Command::CheckConfig,
            "--print-config" => Command::PrintConfig,
            "--version" | "-V" => Command::Version,
            "--help" | "-h" => Command::Help,
            _ => return Err(format!("unknown argument {arg:?} (see --help)")),
        };
        if inline.is_some() {
            return Err(format!("{flag}: takes no value"));
        }
        let name = command_flag(command);
        if !commands.contains(&name) {
            commands.push(name);
        }
        parsed.command = command;
    }
    // Help and version answer anything; two real actions at once is a mistake worth naming.
    if commands.contains(&"--help") {
        parsed.command = Command::Help;
    } else if commands.contains(&"--version") {
        parsed.command = Command::Version;
    } else if let [first, second, ..] = commands.as_slice() {
        return Err(format!("{second}: cannot be combined with {first}"));
    }
    Ok(parsed)
}

/// The effective configuration: the file's text (or the defaults), then the flag overrides.
///
/// Errors in the file carry its path (from `args.config`) and the line and column; errors in
/// an override name the flag.
pub fn resolve(args: &Args, file_contents: Option<&str>) -> Result<Config, String> {
    let mut config = match file_contents {
        Some(text) => Config::from_toml(text).map_err(|e| match &args.config {
            Some(path) => format!("{path}: {e}"),
            None => e.to_string(),
        })?,
        None => Config::default(),
    };
    if args.listen.is_none() && args.workers.is_none() {
        return Ok(config);
    }
    if let Some(listen) = &args.listen {
        config.server.listen.clone_from(listen);
    }
    if let Some(workers) = args.workers {
        config.server.workers = workers;
    }
    // The config module owns the rules for every key; a round trip applies them to the
    // overridden values too, so the flags can never accept what the file would reject.
    Config::from_toml(&config.to_toml()).map_err(|e| {
        let flag = match e.key.as_str() {
            "server.listen" => "--listen",
            "server.workers" => "--workers",
            _ => return e.to_string(),
        };
        format!("{flag}: {}", e.message)
    })
}

fn set_value(parsed: &mut Args, flag: &str, value: String) -> Result<(), String> {
    let already = match flag {
        "--config" => parsed.config.replace(value).is_some(),
        "--listen" => parsed.listen.replace(value).is_some(),
        _ => {
            let workers =
                value.parse::<usize>().map_err(|_| format!("{flag}: expected a whole number, got {value:?}"))?;
            parsed.workers.replace(workers).is_some()
        }
    };
    if already {
        return Err(format!("{flag}: given more than once"));
    }
    Ok(())
}

fn command_flag(command: Command) -> &'static str {
    match command {
        Command::Serve => "",
        Command::CheckConfig => "--check-config",
        Command::PrintConfig => "--print-config",
        Command::Version => "--version",
        Command::Help => "--help",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn no_arguments_serve_the_defaults() {
        let parsed = args(&[]);
        assert_eq!(parsed, Ok(Args::default()));
        assert_eq!(parsed.and_then(|a| resolve(&a, None)), Ok(Config::default()));
    }

    #[test]
    fn values_in_both_spellings() {
        let parsed = args(&["--config", "a.toml", "--listen=127.0.0.1:0", "--workers=3", "--check-config"]);
        let expected = Args {
            command: Command::CheckConfig,
            config: Some("a.toml".to_owned()),
            listen: Some("127.0.0.1:0".to_owned()),
            workers: Some(3),
        };
        assert_eq!(parsed, Ok(expected));
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(args(&["--workers"]), Err("--workers: missing value (see --help)".to_owned()));
        assert_eq!(args(&["--workers", "many"]), Err("--workers: expected a whole number, got \"many\"".to_owned()));
        assert_eq!(args(&["--workers", "-1"]), Err("--workers: expected a whole number, got \"-1\"".to_owned()));
        assert_eq!(args(&["--listen", "a", "--listen", "b"]), Err("--listen: given more than once".to_owned()));
        assert_eq!(args(&["--version=yes"]), Err("--version: takes no value".to_owned()));
        assert_eq!(args(&["--bogus"]), Err("unknown argument \"--bogus\" (see --help)".to_owned()));
        assert_eq!(args(&["serve"]), Err("unknown argument \"serve\" (see --help)".to_owned()));
        assert_eq!(
            args(&["--check-config", "--print-config"]),
            Err("--print-config: cannot be combined with --check-config".to_owned())
        );
    }

    #[test]
    fn help_and_version_win_over_other_actions() {
        assert_eq!(args(&["--print-config", "--help"]).map(|a| a.command), Ok(Command::Help));
        assert_eq!(args(&["--version", "--check-config"]).map(|a| a.command), Ok(Command::Version));
        assert_eq!(args(&["--check-config", "--check-config"]).map(|a| a.command), Ok(Command::CheckConfig));
        assert!(help("switchboard-mio").starts_with("Usage: switchboard-mio [OPTIONS]"));
    }

    #[test]
    fn flags_override_the_file() {
        let file = "[server]\nlisten = \"127.0.0.1:9000\"\nworkers = 2\n[drain]\ntimeout = \"1s\"\n";
        let parsed = args(&["--listen", "[::1]:0"]);
        let config = parsed.and_then(|a| resolve(&a, Some(file)));
        let Ok(config) = config else { panic!("{config:?}") };
        assert_eq!(config.server.listen, "[::1]:0");
        assert_eq!(config.server.workers, 2);
        assert_eq!(config.drain.timeout, std::time::Duration::from_secs(1));
    }

    #[test]
    fn file_errors_carry_path_and_position() {
        let parsed = args(&["--config", "s.toml"]);
        let result = parsed.and_then(|a| resolve(&a, Some("[server]\nworkers = \"x\"\n")));
        let Err(message) = result else { panic!("{result:?}") };
        assert!(message.starts_with("s.toml: config error at line 2, column 11: server.workers: "), "{message}");
    }

    #[test]
    fn bad_overrides_name_the_flag() {
        let listen = args(&["--listen", "localhost"]).and_then(|a| resolve(&a, None));
        let Err(message) = listen else { panic!("{listen:?}") };
        assert!(message.starts_with("--listen: \"localhost\" is not a socket address"), "{message}");
        let workers = args(&["--workers", "5000"]).and_then(|a| resolve(&a, None));
        let Err(message) = workers else { panic!("{workers:?}") };
        assert!(message.starts_with("--workers: "), "{message}");
    }
}
